"""One MLflow run per job: start it, log config and artifacts, and always end it."""

from __future__ import annotations

import json
import logging
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from xray_ablate.tracking import schema
from xray_ablate.tracking.keys import config_key, factor_levels, run_name
from xray_ablate.tracking.names import MAX_TAG_VALUE, safe_params, safe_tags, safe_value
from xray_ablate.tracking.store import code_version, connect

log = logging.getLogger(__name__)
ERROR_TAG = "xray.error"


def run_tags(cfg: DictConfig, device_type: str) -> dict[str, str]:
    """The tags of a training run: what it is, which configuration and seed, which factors."""
    tags = {schema.KIND: "train", schema.SEED: str(cfg.seed), schema.CONFIG_KEY: config_key(cfg, device_type),
            schema.DEVICE: device_type,
            schema.CODE_VERSION: code_version(),
            schema.SPLIT_MODE: "per_seed" if cfg.split.vary_with_seed else "fixed",
            schema.EXPERIMENT: str(cfg.experiment_name)}
    tags.update({schema.FACTOR_TAG.format(k): v for k, v in factor_levels(cfg).items()})
    return tags


@contextmanager
def mlflow_run(cfg: DictConfig, tags: dict[str, str], parent_run_id: str | None = None,
               name: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, or FAILED with the traceback saved as an artifact."""
    experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=name or cfg.tracking.run_name or run_name(cfg),
        tags=safe_tags(tags), parent_run_id=parent_run_id,
        log_system_metrics=bool(cfg.tracking.system_metrics),
    )
    try:
        yield run
    except BaseException as err:
        mlflow.set_tag(ERROR_TAG, safe_value(f"{type(err).__name__}: {err}", MAX_TAG_VALUE))
        mlflow.log_text(traceback.format_exc(), "error/traceback.txt")
        mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_config(cfg: DictConfig) -> None:
    """The resolved config: flat params (dotted keys) and the YAML as an artifact."""
    container = OmegaConf.to_container(cfg, resolve=True)
    mlflow.log_params(safe_params(_flatten(container)))
    mlflow.log_text(OmegaConf.to_yaml(container), "config.yaml")


def log_json(obj, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=2, default=str), artifact_file)


def log_figure(fig, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xray-ablate-") as tmp:
        yield Path(tmp)


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): "{}"}
    return {prefix.rstrip("."): obj}

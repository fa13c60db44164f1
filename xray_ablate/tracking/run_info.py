"""What identifies a training run in MLflow: its tags and its logged config."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from xray_ablate.config.factors import factor_levels
from xray_ablate.config.schema import Config
from xray_ablate.data.prepare import PreparedData
from xray_ablate.tracking import schema
from xray_ablate.tracking.keys import config_key
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.tracking.store import code_version


def run_tags(config: Config, device_type: str) -> dict[str, str]:
    """The tags of a training run: what it is, which configuration and seed, which factors."""
    kind = schema.CANARY if config.dataset.canary else "train"
    tags = {schema.KIND: kind, schema.SEED: str(config.seed), schema.CONFIG_KEY: config_key(config, device_type),
            schema.DEVICE: device_type, schema.CODE_VERSION: code_version(),
            schema.SPLIT_MODE: "per_seed" if config.split.vary_with_seed else "fixed",
            schema.EXPERIMENT: str(config.experiment_name)}
    tags.update({schema.FACTOR_TAG.format(k): v for k, v in factor_levels(config).items()})
    return tags


def record_config(recorder: Recorder, config: Config) -> None:
    """The config: flat params (dotted keys) and the YAML as an artifact."""
    container = asdict(config)
    recorder.params(_flatten(container))
    recorder.text(OmegaConf.to_yaml(container), "config.yaml")


def dataset_name(root: Path, fingerprint: str) -> str:
    """The run's dataset as MLflow names it: its folder and content fingerprint, e.g. cxr@3f9a2c1b7e4d5a60."""
    return f"{Path(root).resolve().name}@{fingerprint}"


def record_dataset(recorder: Recorder, data: PreparedData, root: Path) -> None:
    """What data the run saw: the tags the report and resume compare, and the split manifest as its
    MLflow dataset (named by the dataset, its digest the manifest's hash), so the runs page's
    Dataset column tells runs on other data or another split apart."""
    recorder.tags({schema.FINGERPRINT: data.fingerprint, schema.SPLIT_HASH: data.manifest_hash})
    recorder.dataset(data.manifest, dataset_name(root, data.fingerprint), data.manifest_hash, Path(root).resolve(),
                     context="train/val/test")


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): "{}"}
    return {prefix.rstrip("."): obj}

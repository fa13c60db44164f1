"""One job of a run or sweep: threads, resume, one MLflow run, one outcome file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from xray_ablate.errors import UserError
from xray_ablate.sweep.outcomes import FAILED, FINISHED, SKIPPED, Outcome
from xray_ablate.sweep.resume import finished_run, process_tags
from xray_ablate.sweep.state import SweepInfo
from xray_ablate.tracking import schema
from xray_ablate.tracking.run import mlflow_run, run_tags
from xray_ablate.tracking.store import connect
from xray_ablate.train.device import select_device
from xray_ablate.train.optim import check_names
from xray_ablate.train.run import load_data, train_run

log = logging.getLogger("xray_ablate")


def run_job(cfg: DictConfig) -> float | None:
    """Train one configuration. In a sweep, failures are recorded and the sweep goes on."""
    hydra_cfg = HydraConfig.get()
    sweep = SweepInfo.current() if hydra_cfg.mode == RunMode.MULTIRUN else None
    _set_threads(cfg, hydra_cfg)
    # hydra.job.num exists in sweeps only.
    outcome = Outcome(job=int(hydra_cfg.job.num) if sweep else 0,
                      overrides=list(hydra_cfg.overrides.task), status=FAILED)
    try:
        check_names(cfg.trainer)  # before any data work or MLflow run
        data = load_data(cfg)
        device_type = select_device(cfg.device).type
        tags = {**run_tags(cfg, device_type), **process_tags()}
        if sweep is not None:
            tags.update({schema.SWEEP_ID: sweep.sweep_id, schema.SWEEP_MEMBER.format(sweep.sweep_id): "1"})
            if cfg.resume and (existing := _finished(cfg, data, tags[schema.CONFIG_KEY])):
                MlflowClient().set_tag(existing, schema.SWEEP_MEMBER.format(sweep.sweep_id), "1")
                log.info("skipped: already finished as run %s", existing)
                outcome.status, outcome.run_id = SKIPPED, existing
                return None
        with mlflow_run(cfg, tags, parent_run_id=sweep.parent_run_id if sweep else None) as run:
            outcome.run_id = run.info.run_id
            results = train_run(cfg, data)
        outcome.status, outcome.train_seconds = FINISHED, results["train_seconds"]
        log.info("test accuracy %.4f, macro F1 %.4f", results["test_accuracy"], results["test_macro_f1"])
        return results["test_accuracy"]
    except Exception as err:
        if sweep is None:
            if isinstance(err, UserError):
                log.error("%s", err)
                sys.exit(2)
            raise
        outcome.error = f"{type(err).__name__}: {err}".splitlines()[0]
        log.error("job failed: %s", outcome.error, exc_info=not isinstance(err, UserError))
        return None
    finally:
        if sweep is not None:
            outcome.write(Path(sweep.outcome_dir))


def _finished(cfg: DictConfig, data, key: str) -> str | None:
    experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    return finished_run(MlflowClient(), experiment_id, key, int(cfg.seed), data.fingerprint,
                        data.manifest_hash)


def _set_threads(cfg: DictConfig, hydra_cfg) -> None:
    """cfg.threads, else split the cores between a parallel launcher's jobs."""
    threads = cfg.threads
    if threads is None:
        n_jobs = hydra_cfg.launcher.get("n_jobs") if hydra_cfg.mode == RunMode.MULTIRUN else None
        if n_jobs:
            cores = os.cpu_count() or 1
            threads = max(1, cores // (cores if n_jobs < 0 else min(n_jobs, cores)))
    if threads:
        torch.set_num_threads(int(threads))

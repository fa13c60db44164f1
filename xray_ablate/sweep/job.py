"""One job of a run or sweep: threads, resume, one tracked MLflow run, one outcome file."""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import nullcontext
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from xray_ablate.audit import audit_split
from xray_ablate.config.factors import run_name
from xray_ablate.config.load import to_config
from xray_ablate.config.schema import AUDIT_SETTINGS, Config
from xray_ablate.data import canary
from xray_ablate.data.metadata import require_attributes
from xray_ablate.data.prepare import PreparedData, prepare
from xray_ablate.data.settings import data_config, ensure_synthetic
from xray_ablate.evaluation import PROB_COLUMNS
from xray_ablate.references.compute import pixel_probe
from xray_ablate.references.subgroups import accuracy_gap, subgroup_scores
from xray_ablate.sweep.outcomes import SKIPPED
from xray_ablate.sweep.policy import JobOutcome, job_outcome
from xray_ablate.sweep.signals import raise_pending, stop_on_signals
from xray_ablate.sweep.state import SweepInfo
from xray_ablate.tracking import schema
from xray_ablate.tracking.claims import job_lock
from xray_ablate.tracking.lifecycle import tracked_run
from xray_ablate.tracking.names import safe_level
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.tracking.results import record_result
from xray_ablate.tracking.resume import (
    finished_run,
    logged_steps,
    mark_member,
    process_tags,
    resumable_run,
    unevaluated,
)
from xray_ablate.tracking.run_info import record_config, record_dataset, run_tags
from xray_ablate.train.checkpoint import Checkpointer
from xray_ablate.train.device import select_device
from xray_ablate.train.external import ExternalSet, external_metrics, prepare_external
from xray_ablate.train.fit import RunResult, fit
from xray_ablate.train.inputs import FitInputs, prepare_inputs
from xray_ablate.train.probe import feature_probes, probe_metrics

log = logging.getLogger("xray_ablate")


def run_job(cfg: DictConfig) -> float | None:
    """Train one configuration: config, data, the resume decision, then train and record.
    job_outcome decides what a failure does (in a sweep: recorded, and the sweep goes on)."""
    with job_outcome(HydraConfig.get()) as job:
        config = to_config(cfg)
        _set_threads(config, HydraConfig.get())
        data = load_data(config)
        device = select_device(config.device)
        tags = job_tags(config, device, job.sweep)
        # Under the job's lock, so two sweeps started together train it once: the second waits,
        # then finds the first one's finished run and skips.
        locked = job.sweep is not None and config.resume
        with job_lock(config.tracking, tags[schema.CONFIG_KEY], config.seed) if locked else nullcontext():
            if skip_finished(config, data, tags, job):
                return None
            result = train_in_run(config, data, device, tags, job)
        job.finish(result.metrics)
        return result.metrics["test_accuracy"]
    return None  # a sweep job that failed: job_outcome recorded why


def train_in_run(config: Config, data: PreparedData, device: torch.device, tags: dict[str, str],
                 job: JobOutcome) -> RunResult:
    """Train and record in one MLflow run: the run an earlier attempt's checkpoint names, reopened,
    or a new one. A signal saves the checkpoint and ends the run KILLED."""
    checkpoint = job_checkpoint(config, data, tags)
    reopen = checkpoint.resume and resumable_run(config.tracking, checkpoint.resume.meta["run_id"])
    if not reopen:
        checkpoint.resume = None  # none, or its run is gone (deleted): train from the start
    sweep = job.sweep
    with stop_on_signals(checkpoint.save), tracked_run(
            config.tracking, config.tracking.run_name or run_name(config), tags,
            parent_run_id=sweep.parent_run_id if sweep else None,
            system_metrics=config.tracking.system_metrics, reopen=reopen or None) as recorder:
        job.outcome.run_id = checkpoint.meta["run_id"] = recorder.run_id
        result = train_and_record(config, data, device, recorder, checkpoint)
    checkpoint.remove()
    return result


def job_tags(config: Config, device: torch.device, sweep: SweepInfo | None) -> dict[str, str]:
    tags = {**run_tags(config, device.type), **process_tags()}
    if sweep is not None:
        tags.update({schema.SWEEP_ID: sweep.sweep_id, schema.SWEEP_MEMBER.format(sweep.sweep_id): "1"})
    return tags


def job_checkpoint(config: Config, data: PreparedData, tags: dict[str, str]) -> Checkpointer:
    """The job's checkpoint file, named like its resume key; its state if an earlier attempt of
    this (config, seed, dataset, split) left one."""
    key = {"config_key": tags[schema.CONFIG_KEY], "seed": config.seed, "fingerprint": data.fingerprint,
           "split_hash": data.manifest_hash}
    name = re.sub(r"[^\w.-]", "_", f"{config.tracking.experiment}-{key['config_key']}-{config.seed}.pt")
    return Checkpointer(Path(config.paths.checkpoint_dir) / name, config.trainer.checkpoint_every, key)


def skip_finished(config: Config, data: PreparedData, tags: dict[str, str], job: JobOutcome) -> bool:
    """In a resumed sweep: True (and the outcome SKIPPED) when this job already has a finished run."""
    sweep = job.sweep
    if sweep is None or not config.resume:
        return False
    existing = finished_run(config.tracking, tags[schema.CONFIG_KEY], config.seed, data.fingerprint,
                            data.manifest_hash)
    if not existing:
        return False
    missing = unevaluated(config.tracking, existing, evaluation_asked(config))
    if missing:
        log.warning("run %s finished without %s (asked for since): this job trains again to evaluate it",
                    existing, ", ".join(missing))
        return False
    mark_member(config.tracking, existing, sweep.sweep_id)
    log.info("skipped: already finished as run %s", existing)
    job.outcome.status, job.outcome.run_id = SKIPPED, existing
    return True


def load_data(config: Config) -> PreparedData:
    data_cfg = data_config(config)  # first: a missing dataset.root is a clear error
    ensure_synthetic(config)
    return prepare(data_cfg)


def train_and_record(config: Config, data: PreparedData, device: torch.device, recorder: Recorder,
                     checkpoint: Checkpointer | None = None) -> RunResult:
    """The run: its data and inputs, fit() (from ``checkpoint``'s state if it has one), the
    evaluations on the best state (test subgroups, external sets), all recorded."""
    require_attributes(evaluated_attributes(config), data.metadata)  # before minutes of training
    inputs = prepare_inputs(config, data)
    external = record_inputs(config, data, inputs, recorder)
    if checkpoint is not None and checkpoint.resume is not None:
        record_missing_epochs(config, recorder, checkpoint.resume.progress["history"])
    result = fit(config, data, inputs, device, on_epoch=lambda row: record_epoch(recorder, row), checkpoint=checkpoint)
    record_trained(config, data, inputs, result, recorder, external)
    return result


def record_inputs(config: Config, data: PreparedData, inputs: FitInputs, recorder: Recorder) -> list[ExternalSet]:
    """What a run records before it trains (its config, data and inputs); the external test sets
    it will be evaluated on, checked against its training images."""
    record_config(recorder, config)
    # Images without a patient id count as their own patient: a leakage risk worth seeing.
    recorder.metrics({"data_patient_fallbacks": data.patient_fallbacks, "data_excluded": len(data.excluded)})
    record_dataset(recorder, data, Path(config.dataset.root))
    recorder.file(data.manifest_path, "split")
    recorder.table(data.excluded, "data/excluded.csv")
    recorder.params(inputs.params)
    recorder.metrics(inputs.metrics)
    return prepare_external(config, data, inputs.train)  # a duplicated image is refused here


def record_epoch(recorder: Recorder, row: dict) -> None:
    recorder.metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    raise_pending()


def record_missing_epochs(config: Config, recorder: Recorder, history: list[dict]) -> None:
    """Log the checkpoint's epochs that the reopened run lacks: a signal can land after an epoch's
    state was kept but before its metrics reached MLflow."""
    logged = logged_steps(config.tracking, recorder.run_id, "train_loss")
    for row in history:
        if row["epoch"] not in logged:
            record_epoch(recorder, row)


def record_trained(config: Config, data: PreparedData, inputs: FitInputs, result: RunResult,
                   recorder: Recorder, external: list[ExternalSet]) -> None:
    """What a run records after it trains: subgroups and the source probe on its features, external
    sets, the result, the audit."""
    device = next(result.model.parameters()).device
    attributes = evaluated_attributes(config)
    evaluate_subgroups(attributes, data, inputs.test, result)
    metrics, probe_hits = feature_probes(result.model, data, inputs, attributes, config.trainer.batch_size, device)
    result.metrics.update(metrics)
    if config.dataset.canary:  # can the pixels themselves reveal the marker (the references' model)?
        probe = pixel_probe(data, canary.ATTRIBUTE)
        if probe is not None:
            result.metrics.update(probe_metrics(f"pixel_probe_{canary.ATTRIBUTE}", probe))
    result.metrics.update(external_metrics(result.model, external, config, device))
    record_result(recorder, result, config.tracking)
    if probe_hits.shape[1] > 1:  # image_id and a probe_<attribute> column or more
        recorder.table(probe_hits, schema.PROBE_CSV)
    if config.audit.enabled:
        audit = audit_split(result.model, data, inputs.test, result.predictions[PROB_COLUMNS].to_numpy(),
                            config.audit)
        if audit is not None:
            recorder.metrics(audit.metrics)
            recorder.table(audit.per_image, schema.AUDIT_CSV)
            recorder.figure(audit.montage, schema.AUDIT_MONTAGE)
    # Last, once all of it is recorded: what a resumed sweep reads to know this run needs no second
    # training (params keep a resumed run's first settings and are cut when long).
    recorder.tags({schema.EVALUATED: json.dumps(evaluation_asked(config))})


def evaluation_asked(config: Config) -> dict:
    """What a run evaluates besides its test metrics, none of it in the config key: external
    sets, subgroup attributes, the audit's settings (None: no audit)."""
    audit = config.audit
    settings = {key: getattr(audit, key) for key in AUDIT_SETTINGS} | {"methods": list(audit.methods)}
    return {"sets": [s.name for s in config.eval.sets], "subgroups": evaluated_attributes(config),
            "audit": settings if audit.enabled else None}


def evaluated_attributes(config: Config) -> list[str]:
    """The attributes a run is evaluated by: eval.subgroups, and in the canary run its marker."""
    return [*config.eval.subgroups, *([canary.ATTRIBUTE] if config.dataset.canary else [])]


def evaluate_subgroups(attributes: list[str], data: PreparedData, test_rows, result: RunResult) -> None:
    """Attributes beside each prediction, and test accuracy per level of each of ``attributes``."""
    if data.attributes:
        columns = data.table.iloc[test_rows][["image_id", *data.attributes]].reset_index(drop=True)
        result.predictions = result.predictions.merge(columns, on="image_id", how="left", validate="1:1")
    probs = result.predictions[PROB_COLUMNS].to_numpy()
    for attribute in attributes:
        scores = subgroup_scores(result.predictions["label"].to_numpy(), probs,
                                 result.predictions[attribute].to_numpy())
        for score in scores:
            name = f"subgroup_{attribute}_{safe_level(score.level)}"
            result.metrics.update({f"{name}_accuracy": score.accuracy.rate, f"{name}_n": score.accuracy.n})
        gap = accuracy_gap(scores)
        if gap is not None:
            result.metrics[f"subgroup_{attribute}_gap"] = gap


def _set_threads(config: Config, hydra_cfg) -> None:
    """config.threads, else split the cores between a parallel launcher's jobs."""
    threads = config.threads
    if threads is None:
        n_jobs = hydra_cfg.launcher.get("n_jobs") if hydra_cfg.mode == RunMode.MULTIRUN else None
        if n_jobs:
            cores = os.cpu_count() or 1
            threads = max(1, cores // (cores if n_jobs < 0 else min(n_jobs, cores)))
    if threads:
        torch.set_num_threads(int(threads))

"""The sweep's own work around Hydra's basic sweeper, done in the launching process.

Before any job starts (``on_multirun_start``): plan the jobs, create the MLflow database and
experiment, mark runs of dead processes FAILED, build every preprocessing cache and BRISQUE
score table the jobs need, and open the sweep's parent run. After the sweep (``finish``, called
by ``python -m xray_ablate`` whether Hydra returned or raised, since Hydra skips
``on_multirun_end`` when a job raised): summarise the outcome files, close the parent run, and
optionally build the report.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hydra import compose
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from xray_ablate.errors import UserError
from xray_ablate.settings import data_config, ensure_synthetic
from xray_ablate.sweep.outcomes import FAILED, FINISHED, SKIPPED, read_outcomes, summarize
from xray_ablate.sweep.plan import planned_jobs, sweep_id
from xray_ablate.sweep.resume import fail_dead_runs, process_tags
from xray_ablate.sweep.state import SweepInfo
from xray_ablate.tracking import schema
from xray_ablate.tracking.store import code_version, connect

log = logging.getLogger(__name__)


@dataclass
class ActiveSweep:
    cfg: DictConfig
    info: SweepInfo
    jobs: list[list[str]]
    started: float


_active: ActiveSweep | None = None


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        global _active
        cfg = config
        jobs = planned_jobs(cfg)
        experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
        if cfg.tracking.uri.startswith("sqlite") and cfg.hydra.launcher.get("n_jobs") not in (None, 1):
            log.warning("parallel jobs writing to %s directly: start `make server` and pass "
                        "tracking.uri=http://127.0.0.1:5000 instead", cfg.tracking.uri)
        client = MlflowClient()
        fail_dead_runs(client, experiment_id)
        prepare_shared_work([compose(config_name=config_name, overrides=job) for job in jobs])
        sid = sweep_id(str(cfg.experiment_name), jobs)
        parent = _open_parent_run(client, experiment_id, sid, cfg, jobs)
        outcome_dir = Path(cfg.hydra.sweep.dir) / "outcomes" / f"{os.getpid()}-{time.time_ns()}"
        info = SweepInfo(sid, parent, str(outcome_dir))
        info.export()
        _active = ActiveSweep(cfg, info, jobs, time.perf_counter())
        log.info("sweep %s: %d jobs, parent run %s", sid, len(jobs), parent)


def prepare_shared_work(job_cfgs: list[DictConfig]) -> None:
    """Build each distinct preprocessing cache and BRISQUE table once, before jobs fan out."""
    from xray_ablate.data.prepare import prepare

    prepared = {}
    for job_cfg in job_cfgs:
        try:
            key = data_config(job_cfg)
            ensure_synthetic(job_cfg)
            if key not in prepared:
                prepared[key] = prepare(key)
            if job_cfg.brisque_filter.enabled:
                from xray_ablate.quality.filter import brisque_filter

                brisque_filter(prepared[key], job_cfg)
        except UserError as err:  # that job will fail on its own; the others go on
            log.warning("a job of this sweep cannot run: %s", err)


def _open_parent_run(client: MlflowClient, experiment_id: str, sid: str, cfg: DictConfig,
                     jobs: list[list[str]]) -> str:
    """The sweep's parent run; a rerun of the same sweep reopens it."""
    query = f"tags.`{schema.KIND}` = 'sweep' and tags.`{schema.SWEEP_ID}` = '{sid}'"
    found = client.search_runs([experiment_id], query, max_results=1)
    tags = {schema.KIND: "sweep", schema.SWEEP_ID: sid, schema.EXPERIMENT: str(cfg.experiment_name),
            schema.CODE_VERSION: code_version(), **process_tags()}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        return run_id
    run = client.create_run(experiment_id, run_name=f"sweep-{cfg.experiment_name}-{sid}", tags=tags)
    client.log_param(run.info.run_id, "planned_jobs", len(jobs))
    # The baseline this sweep was designed around, for a later `make report` without experiment=.
    for factor, level in OmegaConf.to_container(cfg.report.baseline, resolve=True).items():
        client.log_param(run.info.run_id, f"report.baseline.{factor}", level)
    client.log_text(run.info.run_id, "\n".join(" ".join(j) for j in jobs) + "\n", "sweep/jobs.txt")
    client.log_text(run.info.run_id, OmegaConf.to_yaml(cfg, resolve=False), "sweep/multirun.yaml")
    return run.info.run_id


def finish(interrupted: bool = False) -> int:
    """Print the summary, close the parent run, build the report if asked; the exit status."""
    global _active
    if _active is None:
        return 0
    sweep, _active = _active, None
    SweepInfo.clear()
    outcomes = read_outcomes(Path(sweep.info.outcome_dir))
    counts, problems = summarize(sweep.jobs, outcomes)
    wall = time.perf_counter() - sweep.started
    print(f"\nsweep {sweep.info.sweep_id} (parent run {sweep.info.parent_run_id}): {len(sweep.jobs)} jobs: "
          f"{counts[FINISHED]} finished, {counts[SKIPPED]} skipped (already finished), "
          f"{counts[FAILED]} failed, {wall:.1f} s")
    if problems:
        print("failed jobs:\n" + "\n".join(problems))
    client = MlflowClient()
    run_id = sweep.info.parent_run_id
    for status, n in counts.items():
        client.log_metric(run_id, f"jobs_{status}", n)
    client.log_metric(run_id, "sweep_seconds", wall)
    status = "KILLED" if interrupted else ("FAILED" if counts[FAILED] else "FINISHED")
    client.set_terminated(run_id, status)
    if sweep.cfg.sweep.report and counts[FINISHED] + counts[SKIPPED] and not interrupted:
        from xray_ablate.report import build_report

        try:
            folder = build_report(sweep.cfg, sweep_id=sweep.info.sweep_id)
        except Exception as err:  # the runs are safe in MLflow; `make report` can retry
            log.error("report not built", exc_info=not isinstance(err, UserError))
            print(f"report not built: {err}")
        else:
            print("\n" + (folder / "report.md").read_text() + f"\nreport and plots: {folder}")
    return 1 if counts[FAILED] else 0


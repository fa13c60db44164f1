"""A sweep from start to finish, around Hydra's launcher.

Start (before any job): the plan is already composed and checked; create the MLflow experiment,
mark runs of dead processes FAILED, build every preprocessing cache and BRISQUE table the jobs
need and the datasets' reference figures (sweep/evidence.py), and open the sweep's parent run
(which records those figures). A failure here stops the sweep before any job starts.
Jobs (any launcher, this process or others) find the sweep through environment variables.
Finish: the summary from the jobs' outcome files, the parent run's counts, and the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf

from xray_ablate.config.factors import factor_levels, varied_factors
from xray_ablate.config.load import Plan
from xray_ablate.config.schema import Config
from xray_ablate.data.prepare import prepare
from xray_ablate.data.settings import data_config, ensure_synthetic
from xray_ablate.errors import UserError
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.sweep.evidence import dataset_references, record_references
from xray_ablate.sweep.outcomes import FAILED, FINISHED, INTERRUPTED, NOT_STARTED, SKIPPED, read_outcomes, summarize
from xray_ablate.sweep.signals import raise_pending, remember_ctrl_c
from xray_ablate.sweep.state import SweepInfo
from xray_ablate.tracking import schema
from xray_ablate.tracking.keys import config_key
from xray_ablate.tracking.lifecycle import tracked_run
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.tracking.resume import fail_dead_runs, process_tags, sweep_parent
from xray_ablate.tracking.store import code_version, connect, describe_experiment
from xray_ablate.tracking.view import VIEW_ID, AblationView, save_view, sweep_filter

log = logging.getLogger(__name__)


class JobsFailed(Exception):
    """Some jobs of the sweep failed (the others finished; the summary lists them)."""


@dataclass
class Sweep:
    """An open sweep: what its jobs are told, its parent run, and every job planned so far (the
    adaptive rounds add theirs). Each launch of Hydra's launcher writes its outcomes to a folder of
    its own, since Hydra numbers each launch's jobs from 0."""

    info: SweepInfo
    recorder: Recorder
    jobs: list[list[str]]
    launches: int = field(default=0)

    def next_launch(self, jobs: list[list[str]]) -> None:
        """Before a further launch of ``jobs``: count them (a job launched again, a seed that failed
        and a round asks for, once) and give their outcomes a new folder."""
        self.launches += 1
        known = {tuple(sorted(job)) for job in self.jobs}
        self.jobs.extend(job for job in jobs if tuple(sorted(job)) not in known)
        replace(self.info, outcome_dir=str(Path(self.info.outcome_dir).parent / f"launch-{self.launches}")).export()


@contextmanager
def sweep_run(plan: Plan, report: Callable[[Config, str], bool] | None = None) -> Iterator[Sweep]:
    """The sweep around ``with``: start before, finish after (also on Ctrl-C); raises JobsFailed
    after the summary when any job failed. ``report(config, sweep id)``, with sweep.report=true,
    builds and prints the report once runs finished and says whether it did (the command line
    passes it: the report sits above the sweep in the import order)."""
    first = plan.configs[0]
    tracking = first.tracking
    launcher = plan.primary.hydra.launcher
    if tracking.uri.startswith("sqlite") and launcher.get("n_jobs") not in (None, 1):
        log.warning("parallel jobs writing to %s directly: start `make server` and pass "
                    "tracking.uri=http://127.0.0.1:5000 instead", tracking.uri)
    fail_dead_runs(tracking)
    prepare_shared_work(plan.configs)
    try:
        references = dataset_references(plan.configs)
    except UserError:
        raise  # e.g. an eval.subgroups attribute the data lacks: the user's to fix, before any job
    except Exception as err:  # context for the report; the runs do not need it
        log.warning("reference figures not computed (%s: %s); the report will lack them",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        references = {}
    sid = sweep_id(first.experiment_name, plan.jobs)
    earlier = sweep_parent(tracking, sid)  # found by its tags, whatever its name
    experiment_id = connect(tracking.uri, tracking.experiment, tracking.artifact_root)
    describe_experiment(tracking.uri, experiment_id, experiment_note(plan))
    tags = {schema.KIND: "sweep", schema.SWEEP_ID: sid, schema.EXPERIMENT: first.experiment_name,
            schema.SWEEP_MEMBER.format(sid): "1",  # in the ablation view, whose filter is membership
            schema.CODE_VERSION: code_version(), **process_tags()}
    outcome_dir = Path(plan.primary.hydra.sweep.dir) / "outcomes" / f"{os.getpid()}-{time.time_ns()}"
    started, interrupted = time.perf_counter(), False
    with tracked_run(tracking, parent_name(plan), tags, reopen=earlier) as recorder:
        if not earlier:
            recorder.params({"planned_jobs": len(plan.jobs), "sweep.until": first.sweep.until,
                             "sweep.delta": first.sweep.delta, "sweep.max_seeds": first.sweep.max_seeds,
                             "audit.canary": first.audit.canary,
                             # the metric and baseline this sweep was designed around, for a later
                             # `make report` (and which of its reports speak for the sweep)
                             "report.metric": first.report.metric,
                             **{f"report.baseline.{k}": v for k, v in first.report.baseline.items()}})
            recorder.text("\n".join(" ".join(j) for j in plan.jobs) + "\n", "sweep/jobs.txt")
            recorder.text(OmegaConf.to_yaml(plan.primary, resolve=False), "sweep/multirun.yaml")
        record_references(recorder, references)
        sweep = Sweep(SweepInfo(sid, recorder.run_id, str(outcome_dir / "launch-0"), str(os.getpid())),
                      recorder, list(plan.jobs))
        sweep.info.export()
        log.info("sweep %s: %d jobs, parent run %s", sid, len(plan.jobs), recorder.run_id)
        try:
            with remember_ctrl_c():
                yield sweep
                raise_pending()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            SweepInfo.clear()
            counts, problems = summarize(sweep.jobs, read_outcomes(outcome_dir), interrupted)
            wall = time.perf_counter() - started
            stopped = f", {counts[INTERRUPTED]} interrupted, {counts[NOT_STARTED]} not started" if interrupted else ""
            print(f"\nsweep {sid} (parent run {recorder.run_id}): {len(sweep.jobs)} jobs: "
                  f"{counts[FINISHED]} finished, {counts[SKIPPED]} skipped (already finished), "
                  f"{counts[FAILED]} failed{stopped}, {wall:.1f} s")
            if problems:
                print("failed jobs:\n" + "\n".join(problems))
            recorder.metrics({**{f"jobs_{status}": n for status, n in counts.items()}, "sweep_seconds": wall})
        reported = bool(report and first.sweep.report and counts[FINISHED] + counts[SKIPPED]) and report(first, sid)
        if not reported:  # the report saves the view and prints the links itself
            print(f"runs in the MLflow UI: {save_view(tracking.uri, experiment_id, ablation_view(plan, sid))}")
        if counts[FAILED]:
            raise JobsFailed(f"{counts[FAILED]} of {len(sweep.jobs)} jobs failed")


def prepare_shared_work(configs: list[Config]) -> None:
    """Build each distinct preprocessing cache and BRISQUE table once, before jobs fan out."""
    from xray_ablate.quality.filter import brisque_filter

    prepared = {}
    for config in configs:
        key = data_config(config)
        ensure_synthetic(config)
        if key not in prepared:
            prepared[key] = prepare(key)
        if config.brisque_filter.enabled:
            brisque_filter(prepared[key], config)


def parent_name(plan: Plan) -> str:
    """The parent run's name: what the sweep ablates, e.g. "demo: dataset x class_weights"."""
    first = plan.configs[0]
    name = first.experiment_name if first.experiment_name != "none" else first.tracking.experiment
    return f"{name}: {' x '.join(varied_factors(plan.configs)) or 'seeds only'}"


def experiment_note(plan: Plan) -> str:
    """The MLflow experiment's description (Markdown): what the latest sweep ablates, its
    baseline, and the experiment config's README."""
    first = plan.configs[0]
    varied = varied_factors(plan.configs)
    baseline = ", ".join(f"{k}={v}" for k, v in first.report.baseline.items() if v is not None)
    lines = [f"**Ablation:** {' x '.join(varied) or 'no factor varied (seeds only)'}, "
             f"{len(plan.jobs)} runs (latest sweep).", f"**Baseline:** {baseline or 'any'}."]
    readme = Path(CONFIG_DIR) / "experiment" / f"{first.experiment_name}.md"
    if first.experiment_name != "none" and readme.is_file():
        lines.append(f"**README:** `experiments/{readme.name}` (experiment={first.experiment_name}).")
    lines.append(f"Compare runs: the view `{VIEW_ID}` (Views menu) groups them by configuration; the report "
                 "run (`xray.kind = report`) holds report.html.")
    return "\n\n".join(lines)


def ablation_view(plan: Plan, sid: str) -> AblationView:
    """The MLflow runs page's view of this sweep: its runs grouped by configuration."""
    varied = varied_factors(plan.configs)
    levels = {tuple(factor_levels(c)[f] for f in varied) for c in plan.configs}
    keys = {config_key(c, "") for c in plan.configs}  # one device for all: its type does not split them
    return AblationView(name=parent_name(plan), run_filter=sweep_filter(sid), metric=plan.configs[0].report.metric,
                        factors=tuple(varied), by_config_key=len(keys) > len(levels))


def sweep_id(experiment_name: str, jobs: list[list[str]]) -> str:
    """Stable across reruns of the same command, so a resumed sweep keeps its parent run."""
    text = json.dumps([experiment_name, sorted(sorted(j) for j in jobs)])
    return hashlib.sha256(text.encode()).hexdigest()[:10]

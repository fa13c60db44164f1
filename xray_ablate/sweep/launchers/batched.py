"""hydra/launcher=batched: a sweep's jobs in packs that fit_many trains together, each member still
one ordinary MLflow run (same params, tags, metrics, artifacts and resume keys as run_job's).

Jobs are grouped by what a pack must share (backbone, image size, amp, dataset and split) into
packs of at most ``members``. The runs are recorded after their pack has trained: per-epoch
metrics carry their epoch as the step, as they do live. A member that fails (diverges, or its
inputs are invalid) is ended FAILED alone. On a CPU or MPS device the jobs run one by one through
run_job, as the basic launcher does, unless ``force`` is true (batching pays only on a GPU).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from xray_ablate.config.factors import run_name
from xray_ablate.config.load import to_config
from xray_ablate.config.schema import Config
from xray_ablate.data.metadata import require_attributes
from xray_ablate.errors import UserError
from xray_ablate.settings import data_config
from xray_ablate.sweep.job import (
    finish,
    job_tags,
    load_data,
    record_epoch,
    record_failure,
    record_inputs,
    record_trained,
    skip_finished,
)
from xray_ablate.sweep.outcomes import FAILED, Outcome
from xray_ablate.sweep.state import SweepInfo
from xray_ablate.tracking.lifecycle import tracked_run
from xray_ablate.train.batched import MEMORY_FRACTION, fit_many, pack_key
from xray_ablate.train.device import select_device
from xray_ablate.train.inputs import FitInputs, prepare_inputs

log = logging.getLogger(__name__)


@dataclass
class Job:
    idx: int
    overrides: list[str]
    hydra_config: DictConfig  # the job's full config, hydra node included
    config: Config


@dataclass
class Member:
    job: Job
    outcome: Outcome
    tags: dict[str, str]
    inputs: FitInputs


class BatchedLauncher(Launcher):
    def __init__(self, members: int = 17, force: bool = False, compile: bool = False,
                 memory_fraction: float = MEMORY_FRACTION) -> None:
        super().__init__()
        if members < 1:
            raise UserError(f"hydra.launcher.members must be at least 1, got {members}")
        if not 0 < memory_fraction <= 1:
            raise UserError(f"hydra.launcher.memory_fraction must be in (0, 1], got {memory_fraction}")
        self.members, self.force, self.compile, self.memory_fraction = members, force, compile, memory_fraction

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._job(initial_job_idx + i, overrides) for i, overrides in enumerate(job_overrides)]
        returns: dict[int, JobReturn] = {}
        for pack in packs(jobs, self.members):
            device = select_device(pack[0].config.device)
            if device.type == "cuda" or self.force:
                log.info("training %d jobs in one pack: %s", len(pack), ", ".join(str(j.idx) for j in pack))
                returns.update(train_pack(pack, device, compile=self.compile, memory_fraction=self.memory_fraction))
            else:
                for job in pack:
                    log.info("\t#%d : %s", job.idx, " ".join(filter_overrides(job.overrides)))
                    returns[job.idx] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                               config=job.hydra_config, job_dir_key="hydra.sweep.dir",
                                               job_subdir_key="hydra.sweep.subdir")
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[job.idx] for job in jobs]

    def _job(self, idx: int, overrides: Sequence[str]) -> Job:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = idx
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return Job(idx, list(overrides), config, to_config(task))


def packs(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs that can train together, in packs of at most ``size``, in first-seen order."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((pack_key(job.config), data_config(job.config), job.config.device), []).append(job)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def train_pack(jobs: list[Job], device, compile: bool = False,
               memory_fraction: float = MEMORY_FRACTION) -> dict[int, JobReturn]:
    """Train the pack's jobs with fit_many and record one run per member; returns per job."""
    sweep = SweepInfo.current()
    data = load_data(jobs[0].config)
    members, values = [], {}
    for job in jobs:
        outcome = Outcome(job=job.idx, overrides=job.overrides, status=FAILED)
        try:
            tags = job_tags(job.config, device, sweep)
            if not skip_finished(job.config, data, tags, sweep, outcome):
                require_attributes(job.config.eval.subgroups, data.metadata)
                members.append(Member(job, outcome, tags, prepare_inputs(job.config, data)))
                continue
        except Exception as err:
            record_failure(outcome, err)
        outcome.write(Path(sweep.outcome_dir))
    try:
        results = fit_many([m.job.config for m in members], data, [m.inputs for m in members], device,
                           compile=compile, memory_fraction=memory_fraction) if members else []
    except Exception as err:  # the whole pack failed (out of memory, say): every member records it
        results = [err] * len(members)
    for member, result in zip(members, results, strict=True):
        config = member.job.config
        try:
            with tracked_run(config.tracking, config.tracking.run_name or run_name(config), member.tags,
                             parent_run_id=sweep.parent_run_id if sweep else None,
                             system_metrics=False) as recorder:
                member.outcome.run_id = recorder.run_id
                external = record_inputs(config, data, member.inputs, recorder)
                if isinstance(result, Exception):
                    raise result
                for row in result.history.to_dict("records"):
                    record_epoch(recorder, row)
                record_trained(config, data, member.inputs, result, recorder, external)
            finish(member.outcome, result)
            values[member.job.idx] = result.metrics["test_accuracy"]
        except Exception as err:
            record_failure(member.outcome, err)
        finally:
            member.outcome.write(Path(sweep.outcome_dir))
    return {job.idx: JobReturn(overrides=job.overrides, cfg=job.hydra_config, hydra_cfg=job.hydra_config,
                               task_name=str(job.hydra_config.hydra.job.name), status=JobStatus.COMPLETED,
                               _return_value=values.get(job.idx)) for job in jobs}

"""hydra/launcher=slurm: hydra-submitit-launcher's SLURM launcher with quiet job-state polling.

submitit polls `sacct` for the jobs' states. Where SLURM keeps no accounting (small clusters, CI)
sacct fails: submitit then logged a three-line "Bypassing sacct error" warning on every poll, and a
job that died without writing its result (SIGKILL, a lost node) stayed UNKNOWN, so the sweep
waited for it forever. StateWatcher asks squeue instead there, and logs one line whenever the
jobs' states change. A job that ended without a result is logged and counted as failed by the
sweep summary (it has no outcome file), not raised: the other jobs' results are still collected.
Preemption and time limits: submitit's checkpoint hook is this launcher's inherited
``checkpoint`` (resubmit with the same arguments); the job writes its training state itself
(sweep/signals.py), so the requeued job resumes from it.
"""

from __future__ import annotations

import logging
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from submitit.core.utils import UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)
ENDED = "ENDED"  # a job squeue no longer lists: SLURM has forgotten it; its result file tells how it went


class StateWatcher(SlurmInfoWatcher):
    """sacct where SLURM keeps accounting, else squeue; one log line per change of the states."""

    def __init__(self, delay_s: int = 60):
        super().__init__(delay_s)
        self._accounting: bool | None = None
        self._reported = ""

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None:
            return None
        if self._accounting is None:
            self._accounting = subprocess.run(["sacct", "--noheader", "-X", "-j", "1"], capture_output=True,
                                              timeout=60).returncode == 0
        # squeue --states=all also lists jobs that ended in the last MinJobAge (300 s by default)
        return command if self._accounting else ["squeue", "--me", "--states=all", "--noheader",
                                                 "--format=%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self._accounting:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)  # squeue's lines in sacct's format
        return {**{job: {"JobID": job, "State": ENDED} for job in self._jobs() - self._finished}, **info}

    def _jobs(self) -> set[str]:
        """The registered jobs and array tasks, without array jobs whose tasks are registered."""
        parents = {job.split("_")[0] for job in self._registered if "_" in job}
        return self._registered - parents

    def update(self) -> None:
        super().update()
        states = Counter(self._info_dict.get(job, {}).get("State", "UNKNOWN").split(" ")[0]
                         for job in self._jobs())
        line = ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items()))
        if line != self._reported:
            log.info("SLURM jobs: %s", line)
            self._reported = line


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        with _quiet_jobs(int(self.config.sweep.slurm_poll_s)):
            return super().launch(job_overrides, initial_job_idx)


@contextmanager
def _quiet_jobs(poll_s: int) -> Iterator[None]:
    """submitit's SlurmJob, for this launch: StateWatcher polling at most ``poll_s`` apart
    (sweep.slurm_poll_s: how late a job that died without a result is noticed), and a job without
    a result gives an empty return (logged) instead of raising. Both are class attributes that the
    launcher's executor uses; hydra-submitit-launcher offers no other way in."""
    watcher, results = SlurmJob.watcher, SlurmJob.results

    def results_or_empty(job: SlurmJob) -> list:
        try:
            return results(job)
        except UncompletedJobError as err:
            log.error("SLURM job %s ended without a result (%s)", job.job_id, str(err).splitlines()[1])
            return [JobReturn(status=JobStatus.COMPLETED, _return_value=None)]

    SlurmJob.watcher, SlurmJob.results = StateWatcher(poll_s), results_or_empty
    try:
        yield
    finally:
        SlurmJob.watcher, SlurmJob.results = watcher, results

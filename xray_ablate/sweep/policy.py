"""What the end of a job means: in a sweep, its outcome file (a failure is recorded and the sweep
goes on); alone, its exit status."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.types import RunMode

from xray_ablate.errors import Stopped, UserError
from xray_ablate.sweep.outcomes import FAILED, FINISHED, INTERRUPTED, Outcome
from xray_ablate.sweep.signals import hand_over, raise_pending
from xray_ablate.sweep.state import SweepInfo

log = logging.getLogger("xray_ablate")


@dataclass
class JobOutcome:
    outcome: Outcome  # FAILED until the job says otherwise
    sweep: SweepInfo | None  # None for a single run

    def finish(self, metrics: dict[str, float]) -> None:
        self.outcome.status, self.outcome.train_seconds = FINISHED, metrics["train_seconds"]
        log.info("test accuracy %.4f, macro F1 %.4f", metrics["test_accuracy"], metrics["test_macro_f1"])


@contextmanager
def job_outcome(hydra_cfg) -> Iterator[JobOutcome]:
    """The exit policy of one job, for every way it can end:

    - a signal (Stopped: the run ended KILLED, its checkpoint saved): in the sweep's own process
      the whole sweep stops (KeyboardInterrupt); in a job process, submitit may requeue it; a
      single run exits 1;
    - Ctrl-C: the outcome says interrupted, and the interrupt goes on up;
    - any other error: a sweep records it and goes on; a single run exits 2 with one line for a
      user's mistake (UserError) and lets anything else surface.
    In a sweep every ending writes the job's outcome file.
    """
    raise_pending()  # a Ctrl-C dropped during the last job: this one is not started
    sweep = SweepInfo.current() if hydra_cfg.mode == RunMode.MULTIRUN else None
    job = JobOutcome(Outcome(job=int(hydra_cfg.job.num) if sweep else 0,  # hydra.job.num exists in sweeps only
                             overrides=list(hydra_cfg.overrides.task), status=FAILED), sweep)
    try:
        yield job
    except Stopped as stop:
        _record_failure(job.outcome, stop)
        if sweep is not None and sweep.pid == str(os.getpid()):  # the sweep's own process was told to stop
            job.outcome.status = INTERRUPTED
            raise KeyboardInterrupt from stop
        not_requeued = hand_over(stop)  # submitit's requeue exits here
        if not_requeued:
            job.outcome.error += f"; {not_requeued}"
        if sweep is None:
            sys.exit(1)
    except KeyboardInterrupt:
        job.outcome.status = INTERRUPTED
        raise
    except Exception as err:
        if sweep is None:
            if isinstance(err, UserError):
                log.error("%s", err)
                sys.exit(2)
            raise
        _record_failure(job.outcome, err)
    finally:
        if sweep is not None:
            job.outcome.write(Path(sweep.outcome_dir))


def _record_failure(outcome: Outcome, err: Exception) -> None:
    outcome.error = f"{type(err).__name__}: {err}".splitlines()[0]
    log.error("job failed: %s", outcome.error, exc_info=not isinstance(err, UserError | Stopped))

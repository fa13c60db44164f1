"""A job's answer to a scheduler's signals while it trains.

SLURM sends SIGTERM on `scancel`, at the time limit and (on most clusters) on preemption, then
SIGKILL after KillWait (30 s by default); submitit asks for SIGUSR1 ``signal_delay_s`` before the
time limit, and some clusters send it on preemption. Either signal writes the run's checkpoint and
raises Stopped, so the run ends KILLED with the reason instead of staying RUNNING. After the run has
ended, ``hand_over`` gives a SIGUSR1 to submitit's own handler, which requeues the job (the
requeued job resumes from the checkpoint) or says why not (timed out too often).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from xray_ablate.errors import Stopped

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
CAUSES = {signal.SIGTERM: "cancelled, timed out or preempted", signal.SIGUSR1: "time limit or preemption ahead"}


@contextmanager
def stop_on_signals(save: Callable[[], int | None]) -> Iterator[None]:
    """Inside: SIGTERM and SIGUSR1 call ``save`` (returns the checkpoint's epoch, or None) and raise
    Stopped; the handlers from before are back afterwards. Off the main thread nothing changes
    (Python runs signal handlers there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}

    def handler(signum: int, frame) -> None:
        for other in SIGNALS:  # SLURM may follow USR1 with TERM: one stop is enough
            signal.signal(other, signal.SIG_IGN)
        epoch = save()
        kept = f"checkpoint after epoch {epoch}" if epoch else "no epoch finished, nothing to keep"
        raise Stopped(signum, f"{signal.Signals(signum).name} ({CAUSES[signum]}): {kept}")

    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def hand_over(stop: Stopped) -> str:
    """After the run has ended: pass a SIGUSR1 to the handler from before (submitit's requeues the
    job and exits). The reason the job was not requeued, or '' when there is no such handler."""
    old = signal.getsignal(stop.signum)
    if stop.signum != signal.SIGUSR1 or not callable(old):
        return ""
    try:
        old(stop.signum, None)
    except Exception as err:  # submitit: "Job not requeued because: timed-out too many times."
        return str(err).splitlines()[0]
    return ""

"""A job's answer to a scheduler's signals while it trains.

SLURM sends SIGTERM on `scancel`, at the time limit and (on most clusters) on preemption, then
SIGKILL after KillWait (30 s by default). submitit asks SLURM for SIGUSR2 (SUBMITIT_PREEMPT_SIGNAL)
``signal_delay_s`` before the time limit; clusters set up for checkpointing send SIGUSR1 or SIGUSR2
on preemption. Each of these writes the run's checkpoint and raises Stopped, so the run ends KILLED
with the reason instead of staying RUNNING. After the run has ended, ``hand_over`` gives a SIGUSR1
or SIGUSR2 to the handler from before, submitit's, which requeues the job (the requeued job
resumes from the checkpoint) or says why not (timed out too often).

Python drops an exception raised inside a garbage-collection callback or ``__del__`` (it prints
"Exception ignored in ..." and goes on), and a signal's handler runs wherever the main thread is.
So each handler here also leaves its exception pending, and ``raise_pending`` raises it again at the
next epoch or job: a Ctrl-C or SIGTERM that lands in such a place still stops the work.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from xray_ablate.errors import STOP_SIGNALS, Stopped

AHEAD = "time limit or preemption ahead"
CAUSES = {signal.SIGTERM: "cancelled, timed out or preempted", signal.SIGUSR1: AHEAD, signal.SIGUSR2: AHEAD}
_pending: dict[int, BaseException] = {}  # by signal, while the context that raised it is open


def raise_pending() -> None:
    """Raise again a stop whose handler's exception was dropped (see the module's docstring)."""
    for stop in _pending.values():
        raise stop


@contextmanager
def remember_ctrl_c() -> Iterator[None]:
    """Inside, on the main thread: Ctrl-C raises KeyboardInterrupt as Python's own handler does, and
    stays pending for ``raise_pending``. Where SIGINT is ignored (a background job) nothing changes."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def handler(signum: int, frame) -> None:
        _pending[signum] = KeyboardInterrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending.pop(signal.SIGINT, None)


@contextmanager
def stop_on_signals(save: Callable[[], int | None]) -> Iterator[None]:
    """Inside: SIGTERM, SIGUSR1 and SIGUSR2 call ``save`` (returns the checkpoint's epoch, or None)
    and raise Stopped; the handlers from before are back afterwards. Off the main thread nothing changes
    (Python runs signal handlers there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def handler(signum: int, frame) -> None:
        for other in STOP_SIGNALS:  # SLURM may follow USR2 with TERM: one stop is enough
            signal.signal(other, signal.SIG_IGN)
        epoch = save()
        kept = f"checkpoint after epoch {epoch}" if epoch else "no epoch finished, nothing to keep"
        _pending[signum] = Stopped(signum, f"{signal.Signals(signum).name} ({CAUSES[signum]}): {kept}")
        raise _pending[signum]

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
            _pending.pop(signum, None)


def hand_over(stop: Stopped) -> str:
    """After the run has ended: pass a SIGUSR1/2 to the handler from before (submitit's requeues
    the job and exits). The reason the job was not requeued, or '' when there is no such handler."""
    old = signal.getsignal(stop.signum)
    if stop.signum == signal.SIGTERM or not callable(old):
        return ""
    try:
        old(stop.signum, None)
    except Exception as err:  # submitit: "Job not requeued because: timed-out too many times."
        return str(err).splitlines()[0]
    return ""

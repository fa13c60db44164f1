"""Process pools whose workers exit when the process that started them dies, and whose dead
worker is an error at once.

A pool's parent killed with SIGKILL cannot shut its workers down, and spawned workers that wait
for work never notice on their own: each worker watches its parent's pid and exits when the
parent is gone (the worker is then re-parented, so its parent pid changes).

A worker that dies (killed, out of memory, or unable to start Python at all) breaks the pool.
CPython 3.11 then waits for the queue that feeds the workers to flush into a pipe nobody reads
any more, forever when the pipe is full (python/cpython#94777, fixed in 3.12): so that queue
is never waited for, and ``pool_map`` turns the broken pool into a UserError.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from tqdm import tqdm

from xray_ablate.errors import UserError

_POLL_SECONDS = 0.5
_ONE_PROCESS = "num_workers=1 (--workers 1 for the summary) works without worker processes"


def spawn_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor with the spawn start method and orphan-exiting workers."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs))
    # Every item is read by a live worker before a normal shutdown, so nothing is lost; after
    # a worker died, not waiting is what keeps shutdown from hanging (see the module's note).
    pool._call_queue.cancel_join_thread()
    # Every worker starts now, before the pool's manager thread: CPython 3.11 otherwise spawns
    # them one per submit, and one spawned while the manager thread handles a dead worker can
    # miss its terminate() and be joined forever (the killed-worker test hung once for 120 s).
    pool._launch_processes()
    return pool


def pool_map(work: Callable, jobs: Sequence, workers: int, desc: str,
             initializer: Callable | None = None, initargs: tuple = ()) -> list:
    """``[work(job) for job in jobs]`` in a spawned pool, with a progress bar; a UserError when a
    worker process dies, or at once when none could start."""
    if not os.access(sys.executable, os.X_OK):  # e.g. a Python under another user's home folder
        raise UserError(f"worker processes cannot start for {desc}: {sys.executable} is not executable "
                        f"for this user; {_ONE_PROCESS}")
    chunk = max(1, len(jobs) // (workers * 8))
    try:
        with spawn_pool(workers, initializer, initargs) as pool:
            return list(tqdm(pool.map(work, jobs, chunksize=chunk), total=len(jobs),
                             desc=desc, leave=False, disable=None))
    except BrokenProcessPool:
        raise UserError(f"a worker process died while {desc} (killed, out of memory, or unable to "
                        f"start {sys.executable}); {_ONE_PROCESS}") from None


def _init_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    os._exit(1)

"""Process pools whose workers exit when the process that started them dies.

A pool's parent killed with SIGKILL cannot shut its workers down, and spawned workers that wait
for work never notice on their own: each worker watches its parent's pid and exits when the
parent is gone (the worker is then re-parented, so its parent pid changes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

_POLL_SECONDS = 0.5


def spawn_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor with the spawn start method and orphan-exiting workers."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _init_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    os._exit(1)

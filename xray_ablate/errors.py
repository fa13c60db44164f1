"""Errors caused by the user's input or set-up: shown as one clear message, no traceback; and
Stopped, a job told to stop from outside."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad data, configuration or environment; the message says what and where."""


# The signals that tell a job to stop (sweep/signals.py says who sends which); Stopped carries one.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Stopped(BaseException):
    """A job stopped by a signal (a scheduler's cancel, time limit or preemption); its run ends KILLED.
    ``signum``: the signal. A BaseException, like KeyboardInterrupt: the signal may arrive inside a
    library's ``except Exception`` (MLflow's HTTP calls wrap any Exception into their own error)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points: a UserError becomes 'error: ...' and exit status 2."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

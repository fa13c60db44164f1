"""Errors caused by the user's input or set-up: shown as one clear message, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad data, configuration or environment; the message says what and where."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points: a UserError becomes 'error: ...' and exit status 2."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

"""Errors caused by the user's input or set-up: shown as one clear message, no traceback."""


class UserError(Exception):
    """Bad data, configuration or environment; the message says what and where."""

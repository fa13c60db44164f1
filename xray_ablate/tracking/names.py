"""MLflow-safe parameter and tag names and values, derived from any config key or value.

MLflow rejects names outside ``[/\\w.\\- :]``, names that are not normalised paths (``a//b``, ``./a``)
and keys over 250 characters, and truncates or rejects long values. Every name and value the
project logs goes through here, so no config key (``+variant``, ``hydra/launcher``, ``a=b``) can
ever make a run fail.
"""

from __future__ import annotations

import hashlib
import json
import re

MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
MAX_PARAM_VALUE = 6000  # MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
TRUNCATED = "...[truncated]"
_UNSAFE = re.compile(r"[^\w.\- ]")  # '/' and ':' are allowed by MLflow, but not on every OS or path


def safe_name(key: str) -> str:
    """``key`` with every character MLflow (or a file system) may refuse replaced by ``_``.

    A name that had to be shortened keeps a hash of the original after a ``-``, so two long keys
    stay apart (MLflow refuses the ``~`` used here until 2026-12-07: a long key failed the run)."""
    name = _sanitised(str(key))
    if len(name) > MAX_KEY:
        name = name[:MAX_KEY - 9] + "-" + _digest(key)
    return name


MAX_LEVEL = 100  # a level's part of a metric name: subgroup_<attribute>_<level>_accuracy fits MAX_KEY


def safe_level(level: str) -> str:
    """An attribute level as part of a metric name (``subgroup_<attribute>_<level>_n``): sanitised
    and at most MAX_LEVEL characters, with a hash of the level after a ``-`` where that changed it,
    so levels that sanitise alike ('a/b', 'a_b') keep their own metrics instead of overwriting one
    another, and a long level keeps its '_n' and '_accuracy' (safe_name would cut the whole name)."""
    name = _sanitised(level)
    return name if name == level and len(name) <= MAX_LEVEL else f"{name[:MAX_LEVEL - 9]}-{_digest(level)}"


def _sanitised(text: str) -> str:
    return _UNSAFE.sub("_", text).strip(" .") or "_"


def _digest(text) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()[:8]


def safe_value(value, limit: int = MAX_PARAM_VALUE) -> str:
    """The value as text (lists and dicts as JSON), cut to ``limit`` with a visible marker."""
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= limit else text[:limit - len(TRUNCATED)] + TRUNCATED


def safe_params(params: dict) -> dict[str, str]:
    """Sanitised names and values; keys that collide after sanitising get a numbered suffix."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = base = safe_name(key)
        n = 1
        while name in out:
            n += 1
            name = f"{base[:MAX_KEY - 4]}_{n}"
        out[name] = safe_value(value)
    return out


def safe_tags(tags: dict) -> dict[str, str]:
    return {safe_name(k): safe_value(v, MAX_TAG_VALUE) for k, v in tags.items()}

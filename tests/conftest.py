"""Shared fixtures: the real cxr-mini subset, tiny synthetic datasets, isolated caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xray_ablate.data.synthetic import generate


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    """The real Darwin fixture from $XRAY_ABLATE_FIXTURE; required under CI=true."""
    value = os.environ.get("XRAY_ABLATE_FIXTURE")
    if value and (Path(value) / "annotations").is_dir():
        return Path(value)
    message = f"real fixture not found (XRAY_ABLATE_FIXTURE={value!r})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """40 synthetic 96-px phantoms (read-only: copy before modifying)."""
    return generate(tmp_path_factory.mktemp("synthetic") / "data", n=40, seed=0, size=96)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("XRAY_ABLATE_CACHE", str(path))
    return path

"""Shared fixtures: the real cxr-mini subset, tiny synthetic datasets, isolated caches."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

# Under pytest-xdist (make test: one worker per core) each worker's torch gets its share of the
# cores, as the joblib launcher gives its jobs: oversubscribed OpenMP threads spin and slow all down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

import pytest

import xray_ablate.config.schema  # noqa: F401  registers config_schema for every compose() in tests
from xray_ablate.data.synthetic import generate
from xray_ablate.paths import project_root
from xray_ablate.quality.weights import WEIGHTS_NAME, weights_path

# The longest tests first (measured with --durations): pytest-xdist hands tests out in collection
# order, and the demo at two threads, collected late, ran alone for the last minutes of make test
# while the other worker sat idle. (The SLURM group goes first anyway: xdist puts groups of several
# tests before single ones.)
LONGEST_FIRST = ("test_demo_verdict_holds_at_two_threads", "test_make_run_and_report",
                 "test_adaptive_sweep_adds_seeds_only_where_a_claim_is_unresolved_and_resumes",
                 "test_study_phase2_full_factorial", "test_study_pretrained_with_standin_weights",
                 "test_make_bench_smoke", "test_type_one_error_at_every_look",
                 "test_learning_curve_experiment_report_on_the_real_fixture")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(getattr(item, "originalname", item.name), len(rank)))


@pytest.fixture(autouse=True)
def _isolate_logging():
    """Hydra entry points run in-process configure logging for the whole process (levels from
    conf/hydra/job_logging, file handlers); undo that after each test so the next one sees the
    logging it sets up itself."""
    levels = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    yield
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))
    for handler in root.handlers:
        if handler not in root_handlers:
            handler.close()
    root.setLevel(root_level)
    root.handlers[:] = root_handlers


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """One SQLite store built by MLflow's Alembic migrations (about 2 s), with no rows."""
    from mlflow.store.db import utils
    from sqlalchemy import create_engine

    template = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    engine = create_engine(f"sqlite:///{template}")
    utils._initialize_tables(engine)
    engine.dispose()
    return template


@pytest.fixture
def migrated_store(mlflow_template):
    """``place(path)`` puts a copy of the migrated template at ``path``, for a store that a
    subprocess (a sweep, `make run`, an MLflow server) opens: MLflow finds its tables there and
    skips the 2-3 s of migrations that each new store costs."""
    def place(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, path)
        return path
    return place


@pytest.fixture(scope="session", autouse=True)
def _mlflow_schema_from_a_template(mlflow_template):
    """MLflow builds each new SQLite store with its Alembic migrations; the tests make hundreds.
    In this process, a new store gets the tables of the template instead (SQLite's backup: the same
    schema, no rows); MLflow then goes on as with its own."""
    import sqlite3

    from mlflow.store.db import utils

    template, migrate = mlflow_template, utils._initialize_tables

    def copy_template(engine) -> None:
        path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:":
            return migrate(engine)
        with sqlite3.connect(template) as source, sqlite3.connect(path) as target:
            source.backup(target)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "_initialize_tables", copy_template)
        yield


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler, as in a terminal: a suite started in the background (`make test &`:
    the shell ignores SIGINT for the job, and Python keeps it ignored) would not see a Ctrl-C at all."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


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


@pytest.fixture
def make_cfg(tmp_path, synthetic_root):
    """Compose the real conf/ with a temporary cache, MLflow store and reports folder: the typed
    Config the code receives."""
    from hydra import compose, initialize_config_dir

    from xray_ablate.config.load import to_config
    from xray_ablate.paths import CONFIG_DIR

    def _make(*overrides: str):
        base = [
            "dataset=masked", f"dataset.root={synthetic_root}", "image_size=32", "backbone=cnn16_gap",
            "trainer.epochs=1", "trainer.batch_size=8", "num_workers=1",
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.reports_dir={tmp_path / 'reports'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"tracking.artifact_root={tmp_path / 'artifacts'}", "tracking.system_metrics=false",
            "tracking.log_figures=false",  # tests/test_train.py asks for them where it checks them
        ]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return to_config(compose(config_name="config", overrides=base + list(overrides)))

    return _make


def train_once(config):
    """One real training run as a job does it (tracked, recorded); (run id, RunResult)."""
    from xray_ablate.config.factors import run_name
    from xray_ablate.sweep.job import load_data, train_and_record
    from xray_ablate.tracking.lifecycle import tracked_run
    from xray_ablate.tracking.run_info import run_tags
    from xray_ablate.train.device import select_device

    device = select_device(config.device)
    with tracked_run(config.tracking, run_name(config), run_tags(config, device.type)) as recorder:
        result = train_and_record(config, load_data(config), device, recorder)
    return recorder.run_id, result


@pytest.fixture(scope="session")
def brisque_weights() -> Path:
    """piq's SVM weights in $TORCH_HOME, copied from shared/models into a temporary TORCH_HOME
    when missing (CI puts them there itself); under CI=true a missing file is a failure."""
    if weights_path().is_file():
        yield weights_path()
        return
    fixture = os.environ.get("XRAY_ABLATE_FIXTURE")
    candidates = [Path(fixture) / ".." / ".." / "models" / WEIGHTS_NAME] if fixture else []
    candidates.append(project_root().parent / "shared" / "models" / WEIGHTS_NAME)
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        message = f"BRISQUE weights not at {weights_path()} nor in {[str(c) for c in candidates]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", tmp)  # an env var, so spawned scoring workers see it too
        weights_path().parent.mkdir(parents=True)
        shutil.copy(source, weights_path())
        yield weights_path()


def chromium(*args: str, tmp_path: Path) -> str:
    """Headless Chromium's stdout; skipped without a browser, except under CI=true (.ci/run installs it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium on PATH: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium): no page checked in a browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    res = subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120, check=True)
    return res.stdout


def invoke_cli(monkeypatch, root: Path, *args: str) -> int:
    """Run `python -m xray_ablate ARGS` in this process (so monkeypatches hold), with its MLflow
    store, caches and outputs under ``root``; its exit code."""
    import sys
    import time

    from hydra.core.global_hydra import GlobalHydra

    from xray_ablate.__main__ import cli

    GlobalHydra.instance().clear()
    sweep_dir = root / "multirun" / str(time.time_ns())
    flags = [a for a in args if a.startswith("-")]  # argparse wants -m before the overrides
    argv = ["xray_ablate", *flags, f"paths.root_dir={root}", f"hydra.sweep.dir={sweep_dir}",
            "tracking.system_metrics=false", *[a for a in args if not a.startswith("-")]]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli()
    return exit_.value.code


def invoke_report(monkeypatch, *overrides: str) -> None:
    """python -m xray_ablate.report OVERRIDES, in this process (no Hydra logging set-up)."""
    import sys

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from xray_ablate.report.__main__ import cli

    monkeypatch.setattr(sys, "argv", ["xray_ablate.report", *overrides, "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])
    GlobalHydra.instance().clear()
    try:
        cli()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # no stale command line for later build_report calls


def mlflow_runs(root: Path, experiment: str, kind: str = "train"):
    """Every run of ``kind`` in the SQLite store under ``root/mlruns``."""
    from mlflow.tracking import MlflowClient

    from xray_ablate.tracking import schema

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], f"tags.`{schema.KIND}` = '{kind}'", max_results=1000)

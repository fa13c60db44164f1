"""Connect to the MLflow store and make sure the experiment exists (once, race-free)."""

from __future__ import annotations

import subprocess
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import mlflow
import sqlalchemy.exc
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import xray_ablate
from xray_ablate.errors import UserError


def connect(uri: str, experiment: str, artifact_root: str | Path) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment``, creating it if needed.

    Artifacts of a new experiment go to ``artifact_root/<experiment>`` (for the SQLite store,
    mlruns/artifacts); a tracking server decides its own artifact location.
    A SQLite store is first touched under a file lock beside it: two processes starting on a fresh
    database would both run MLflow's schema migrations and one would fail half-way.
    """
    database = sqlite_path(uri)
    if database is not None and database.is_dir():  # MLflow retries opening it for some 100 s first
        raise UserError(f"tracking.uri={uri}: no MLflow store there ({database} is a folder); use "
                        "sqlite:///<path>/mlflow.db or http://host:port of an mlflow server")
    try:
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        with FileLock(f"{database}.lock") if database is not None else nullcontext():
            found = mlflow.get_experiment_by_name(experiment)
    except (OSError, MlflowException, KeyError, sqlalchemy.exc.SQLAlchemyError) as err:
        # a folder, a file that is no database, a read-only place, an unknown scheme: the user's
        # setting, before anything is logged
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
        raise UserError(f"tracking.uri={uri}: no MLflow store there ({detail}); use sqlite:///<path>/mlflow.db "
                        "or http://host:port of an mlflow server") from None
    if found is not None:
        return found.experiment_id
    location = None
    if not uri.startswith(("http://", "https://")):
        location = (Path(artifact_root) / experiment).resolve().as_uri()
    try:
        return mlflow.create_experiment(experiment, artifact_location=location)
    except MlflowException:  # created by a parallel job in the meantime
        return mlflow.get_experiment_by_name(experiment).experiment_id


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@lru_cache(maxsize=1)
def code_version() -> str:
    """git commit of the checkout (with '+dirty' for local changes), else the package version."""
    root = Path(xray_ablate.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"xray-ablate {getattr(xray_ablate, '__version__', 'unknown')}"


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """A tracking server that does not answer is a one-line UserError now, not minutes of retries
    and tracebacks later. File and SQLite stores need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except OSError as err:
        raise UserError(f"tracking.uri={uri} does not answer ({getattr(err, 'reason', err)}): start it "
                        "(make server) or point tracking.uri at a running MLflow server") from None


NOTE_TAG = "mlflow.note.content"  # the experiment's description in the UI (Markdown)
# Marks a model-training experiment, so the MLflow 3 UI opens on its runs, not the GenAI overview
# (the 3.17 UI reads this tag; its values include custom_model_development).
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def describe_experiment(uri: str, experiment_id: str, note: str) -> None:
    """Set the experiment's description and mark it as model training."""
    client = MlflowClient(uri)
    for key, value in ((NOTE_TAG, note), (KIND_TAG, MODEL_TRAINING)):
        try:
            client.set_experiment_tag(experiment_id, key, value)
        except MlflowException as err:
            # MLflow's SQL store looks for the tag, then inserts it: two sweeps starting at once can
            # both insert, and the second one's insert breaks the unique key. The tag exists now,
            # so setting it again updates it.
            if "UNIQUE constraint failed" not in str(err):
                raise
            client.set_experiment_tag(experiment_id, key, value)

"""Reading the MLflow store: experiments, runs as a table, metric histories, CSV and JSON artifacts.

The report reads runs through these functions only.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from xray_ablate.errors import UserError
from xray_ablate.tracking import schema

# MLflow draws a progress bar per downloaded artifact: a report reads one or more per run, and the
# bars buried the printed report (set the variable to true to see them).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def open_store(uri: str) -> dict[str, str]:
    """Point MLflow at ``uri``; return {experiment id: name} of its experiments (creates nothing)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {uri}: train some runs first, or pass tracking.uri=...")
    mlflow.set_tracking_uri(uri)
    return {e.experiment_id: e.name for e in mlflow.search_experiments()}


def search_runs(experiment_ids: list[str], **tags: str) -> pd.DataFrame:
    """Runs whose tags equal ``tags`` (newest first), one row per run (mlflow.search_runs' columns)."""
    clauses = [f"tags.`{tag}` = '{_quote(value)}'" for tag, value in tags.items()]
    return mlflow.search_runs(experiment_ids=experiment_ids, filter_string=" and ".join(clauses),
                              output_format="pandas", order_by=["attributes.start_time DESC"])


def _quote(value: str) -> str:
    if "'" in value:
        raise UserError(f"quotes are not allowed in run selectors: {value!r}")
    return value


def epoch_history(run_ids: list[str], keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch metrics of runs: run_id, key, step, value (the last value of a step logged twice)."""
    client = MlflowClient()
    rows = [(run_id, key, m.step, m.value)
            for run_id in run_ids for key in keys
            for m in client.get_metric_history(run_id, key)]
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    return frame.drop_duplicates(["run_id", "key", "step"], keep="last")  # a resumed run


@functools.cache
def _artifact_uri(tracking_uri: str, run_id: str) -> str:
    """Where a run's artifacts live (fixed once the run exists), looked up once per run: each
    MlflowClient.download_artifacts looked it up twice (two get_run, every param and metric loaded)."""
    return MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri


def _repository(run_id: str):
    tracking_uri = mlflow.get_tracking_uri()
    return get_artifact_repository(_artifact_uri(tracking_uri, run_id), tracking_uri=tracking_uri)


def _download(run_id: str, name: str, dst: str) -> Path | None:
    """The run's artifact ``name`` (a path, possibly in a folder: "audit/audit.csv") copied under
    ``dst``; None when the run has no such file. A file that is there but cannot be read raises."""
    repository = _repository(run_id)
    try:
        return Path(repository.download_artifacts(name, dst))
    except (OSError, MlflowException):
        if name in {a.path for a in repository.list_artifacts(posixpath.dirname(name) or None)}:
            raise
        return None


def csv_artifacts(run_ids: Iterable[str], name: str, dtype: dict | type | None = None,
                  **read_csv) -> dict[str, pd.DataFrame]:
    """run id -> its CSV artifact ``name`` (a path, possibly in a folder); runs without it are left
    out. ``dtype`` and ``read_csv`` go to pandas.read_csv."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            path = _download(run_id, name, tmp)
            if path is not None:
                out[run_id] = pd.read_csv(path, dtype=dtype, **read_csv)
    return out


def json_artifacts(run_id: str, folder: str) -> dict[str, dict]:
    """File name -> parsed content of the JSON artifacts in ``folder`` of a run (empty when none)."""
    repository = _repository(run_id)
    found = [a.path for a in repository.list_artifacts(folder) if a.path.endswith(".json")]
    with tempfile.TemporaryDirectory() as tmp:
        return {Path(path).name: json.loads(Path(repository.download_artifacts(path, tmp)).read_text())
                for path in found}


def copy_artifact(run_id: str, name: str, dest: Path) -> Path | None:
    """Copy the run's artifact ``name`` to the file ``dest``; None when the run lacks it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _download(run_id, name, tmp)
        return None if path is None else Path(shutil.copyfile(path, dest))


def sweep_predictions(uri: str, experiment: str, sweep_id: str) -> dict[tuple[str, int], pd.DataFrame]:
    """(config key, seed) -> predictions.csv of every FINISHED training run the sweep counts (its
    own and those it found finished) on the data of its newest run (dataset fingerprint, split
    mode and, for a fixed split, its manifest: a rerun after the data changed retrains the planned
    seeds, and the seeds the rounds added before are on the old data); a (config, seed) run twice
    counts its newest run."""
    ids = [i for i, name in open_store(uri).items() if name == experiment]
    runs = search_runs(ids, **{schema.KIND: "train", schema.SWEEP_MEMBER.format(sweep_id): "1"}) if ids else []
    if len(runs) == 0:
        return {}
    runs = runs[runs["status"] == "FINISHED"]  # newest first
    if runs.empty:
        return {}
    data = [f"tags.{schema.FINGERPRINT}", f"tags.{schema.SPLIT_MODE}"]
    if runs[data[1]].iloc[0] == "fixed":
        data.append(f"tags.{schema.SPLIT_HASH}")
    runs = runs[(runs[data].fillna("") == runs[data].fillna("").iloc[0]).all(axis=1)]
    runs = runs.drop_duplicates([f"tags.{schema.CONFIG_KEY}", f"tags.{schema.SEED}"])
    found = csv_artifacts(runs["run_id"], schema.PREDICTIONS, dtype={"image_id": str})
    return {(row[f"tags.{schema.CONFIG_KEY}"], int(row[f"tags.{schema.SEED}"])): found[row["run_id"]]
            for _, row in runs.iterrows() if row["run_id"] in found}

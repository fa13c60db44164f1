"""Writes to one MLflow run: params, tags, metrics, texts, figures, files, its dataset, and a whole RunResult."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from xray_ablate.tracking.names import safe_name, safe_params, safe_tags
from xray_ablate.tracking.schema import RESUMED_PARAMS


@dataclass
class Recorder:
    client: MlflowClient
    run_id: str
    reopened: bool = False  # a resumed run: it holds the params of its first attempt

    def params(self, params: dict) -> None:
        """Log ``params``. A reopened run keeps the values it has (MLflow refuses to change a param,
        and the run would fail on every retry): a setting outside the config key changed since
        (trainer.checkpoint_every, num_workers, paths) is listed in the tag xray.resumed_params."""
        params = safe_params(params)
        if self.reopened:
            logged = self.client.get_run(self.run_id).data.params
            changed = [f"{k}: {logged[k]} -> {v}" for k, v in params.items() if k in logged and logged[k] != v]
            if changed:
                self.tags({RESUMED_PARAMS: "; ".join(changed)})
            params = {k: v for k, v in params.items() if k not in logged}
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in safe_tags(tags).items()])

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = _now_ms()
        batch = [Metric(safe_name(k), float(v), now, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def json(self, obj, artifact_file: str) -> None:
        self.text(json.dumps(obj, indent=2, default=str), artifact_file)

    def table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        self.text(frame.to_csv(index=False, float_format="%.6g"), artifact_file)

    def figure(self, fig, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, fig, artifact_file)
        plt.close(fig)

    def file(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def folder(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(path), folder)

    def dataset(self, frame: pd.DataFrame, name: str, digest: str, source: Path, context: str) -> None:
        """``frame`` as the run's input in MLflow's terms (mlflow.data; the runs page's Dataset
        column shows name and digest): its schema and row count, ``source`` a local folder."""
        import mlflow.data
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        # A local path resolves to two equal source types, with a warning: name the type.
        where = get_dataset_source_from_json(json.dumps({"uri": str(source)}), source_type="local")
        data = mlflow.data.from_pandas(frame, source=where, name=name, digest=digest)
        # _to_mlflow_entity is how mlflow.log_input turns a Dataset into what the client logs.
        entry = DatasetInput(data._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=[entry])
                return
            except MlflowException as err:
                # MLflow's store looks the dataset up, then inserts it: jobs of one sweep logging the
                # same dataset at once race, and the loser's insert breaks the unique key. Once the
                # winner's row is there, the lookup finds it.
                if attempt == 2 or "UNIQUE constraint failed: datasets" not in str(err):
                    raise

    def torch_state(self, state: dict, artifact_file: str) -> None:
        import torch

        with tempfile.TemporaryDirectory(prefix="xray-ablate-") as tmp:
            path = Path(tmp) / Path(artifact_file).name
            torch.save(state, path)
            self.file(path, str(Path(artifact_file).parent))


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)

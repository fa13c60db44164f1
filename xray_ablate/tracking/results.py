"""Record a training run's RunResult: the artifacts every run has, under fixed names."""

from __future__ import annotations

from xray_ablate import evaluation
from xray_ablate.config.schema import TrackingConfig
from xray_ablate.tracking import schema
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.train import figures
from xray_ablate.train.fit import RunResult


def record_result(recorder: Recorder, result: RunResult, tracking: TrackingConfig) -> None:
    """Params and final metrics, per-image predictions (for McNemar and image-level intervals),
    the classification report and history; the confusion matrix and learning curve figures and
    the best checkpoint as ``tracking`` asks. Per-epoch metrics are logged live by fit()'s on_epoch."""
    recorder.params(result.params)
    recorder.metrics(result.metrics)
    recorder.tags({schema.LEARNED: str(result.learned["learned"]).lower(),
                   schema.LEARNED_REASON: result.learned["reason"]})
    recorder.table(result.predictions, schema.PREDICTIONS)
    y_test = result.predictions["label"].to_numpy()
    probs = result.predictions[evaluation.PROB_COLUMNS].to_numpy()
    text, as_dict = evaluation.report(y_test, probs)
    recorder.text(text, "classification_report.txt")
    recorder.json(as_dict, "classification_report.json")
    recorder.table(result.history, "history.csv")
    if tracking.log_figures:
        recorder.figure(figures.confusion_figure(evaluation.confusion(y_test, probs), "test"), "confusion_matrix.png")
        recorder.figure(figures.learning_curve_figure(result.history, result.best_epoch), "learning_curve.png")
    if tracking.log_checkpoint:
        recorder.torch_state(result.model.state_dict(), "checkpoint/best_model.pt")

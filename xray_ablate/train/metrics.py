"""Test and validation metrics from predicted probabilities (scikit-learn does the work)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import binomtest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from xray_ablate.data.labels import CLASSES

LABELS = list(range(len(CLASSES)))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1/support, OvR AUC."""
    y_pred = probs.argmax(axis=1)
    out = {
        f"{prefix}_accuracy": accuracy_score(y_true, y_pred),
        f"{prefix}_balanced_accuracy": _quiet(balanced_accuracy_score, y_true, y_pred),
    }
    # Macro averages run over the classes present in y_true: a class with no test image has no
    # recall, and counting it as 0 would understate every configuration alike.
    present = np.unique(y_true)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro",
                                                 zero_division=0)
    out.update({f"{prefix}_macro_precision": p, f"{prefix}_macro_recall": r, f"{prefix}_macro_f1": f})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=LABELS, zero_division=0)
    for i, cls in enumerate(CLASSES):
        absent = s[i] == 0
        out.update({f"{prefix}_precision_{cls}": p[i], f"{prefix}_support_{cls}": s[i],
                    f"{prefix}_recall_{cls}": np.nan if absent else r[i],
                    f"{prefix}_f1_{cls}": np.nan if absent else f[i]})
    # AUC is undefined when a class is missing from y_true: NaN rather than a crash.
    out[f"{prefix}_roc_auc_ovr"] = (
        roc_auc_score(y_true, probs, multi_class="ovr", labels=LABELS)
        if len(present) == len(LABELS) else float("nan")
    )
    return {k: float(v) for k, v in out.items()}


def report(y_true: np.ndarray, probs: np.ndarray) -> tuple[str, dict]:
    """The study's classification report, as text and as a dict."""
    y_pred = probs.argmax(axis=1)
    kwargs = dict(labels=LABELS, target_names=list(CLASSES), zero_division=0, digits=4)
    return (classification_report(y_true, y_pred, **kwargs),
            classification_report(y_true, y_pred, output_dict=True, **kwargs))


def confusion(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return confusion_matrix(y_true, probs.argmax(axis=1), labels=LABELS)


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UndefinedMetricWarning, UserWarning))
        return fn(*args)


# A run has not learned when it gives one class to nearly every test image, or when its training
# loss never left ln(classes), the loss of uniform predictions.
ONE_CLASS_SHARE = 0.95
FLAT_LOSS_SHARE = 0.95


def learning_check(test_labels: np.ndarray, test_probs: np.ndarray, final_train_loss: float,
                   n_classes: int = len(CLASSES)) -> dict:
    """Did the run learn? Numbers and the verdict, from its test predictions and final train loss.

    top_prediction_share: share of test images given the most frequent prediction;
    loss_ratio: final train loss / ln(n_classes); majority_rate: share of the test set's most
    frequent class (majority_class); p_above_majority: one-sided exact binomial p of the test
    accuracy exceeding majority_rate; learned (bool) and reason ("" when learned).
    """
    labels = np.asarray(test_labels, int)
    pred = np.asarray(test_probs, float).argmax(axis=1)
    counts = np.bincount(pred, minlength=n_classes)
    share = float(counts.max() / len(pred))
    label_counts = np.bincount(labels, minlength=n_classes)
    majority = int(label_counts.argmax())
    rate = float(label_counts[majority] / len(labels))
    correct = int((pred == labels).sum())
    p = float(binomtest(correct, len(labels), rate, alternative="greater").pvalue) if rate < 1 else 1.0
    ratio = float(final_train_loss) / math.log(n_classes)
    names = CLASSES if n_classes == len(CLASSES) else tuple(map(str, range(n_classes)))
    reasons = []
    if share >= ONE_CLASS_SHARE:
        reasons.append(f"predicts {names[int(counts.argmax())]} for {share:.0%} of test images")
    if ratio >= FLAT_LOSS_SHARE:
        reasons.append(f"final training loss {final_train_loss:.3f} is {ratio:.0%} of ln({n_classes})")
    return {"top_prediction_share": share, "loss_ratio": ratio, "majority_rate": rate,
            "majority_class": names[majority],
            "p_above_majority": p, "learned": not reasons, "reason": "; ".join(reasons)}

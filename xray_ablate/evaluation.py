"""How a run's predictions score, each rule defined once and without torch: the predictions.csv
columns, the classification metrics (scikit-learn does the work), the Wilson interval, the
majority-class rule and the "did it learn?" check. Training records them, the trivial baselines
(references/) use them, and the report derives them for runs that did not record them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
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
from statsmodels.stats.proportion import proportion_confint

from xray_ablate.config.choices import CLASSES

LABELS = list(range(len(CLASSES)))
PROB_COLUMNS = [f"prob_{c}" for c in CLASSES]
# predictions.csv: one row per test image (attribute columns may follow).
PREDICTION_COLUMNS = ["image_id", "label", *PROB_COLUMNS]
CONFIDENCE = 0.95


def predictions_frame(image_ids, labels, probs: np.ndarray) -> pd.DataFrame:
    """A run's predictions: image_id, label (class index), prob_<class> per test image."""
    frame = pd.DataFrame({"image_id": image_ids, "label": labels})
    frame[PROB_COLUMNS] = probs
    return frame


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of k successes in n; (NaN, NaN) when n is 0: with no images there
    is no interval (a table shows "–"), rather than a [0, 1] that would read as a measurement."""
    if n < 1:
        return math.nan, math.nan
    low, high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def majority(values, order: Sequence):
    """The element of ``order`` most frequent in ``values``; a tie goes to the earliest in ``order``.

    The majority-class rule everywhere (the trivial baseline, the learning check, the report's
    reference row) counts the TRAINING split: that is the rule a model could learn without
    seeing the test set; the test set's own majority is knowledge no model has."""
    counts = [int(np.sum(np.asarray(values) == v)) for v in order]
    return order[majority_index(counts)]


def majority_index(counts: Sequence[float]) -> int:
    """The position of the largest count; a tie goes to the earliest (the rule of ``majority``)."""
    return int(np.argmax(counts))


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
                   majority_label: int | None, n_classes: int = len(CLASSES)) -> dict:
    """Did the run learn? Numbers and the verdict, from its test predictions and final train loss.

    top_prediction_share: share of test images given the most frequent prediction;
    loss_ratio: final train loss / ln(n_classes); majority_rate: test accuracy of always
    predicting ``majority_label`` (the training split's majority class, ``majority``; None when
    unknown: NaN); p_above_majority: one-sided exact binomial p of the test accuracy exceeding
    majority_rate; learned (bool) and reason ("" when learned).
    """
    labels = np.asarray(test_labels, int)
    pred = np.asarray(test_probs, float).argmax(axis=1)
    counts = np.bincount(pred, minlength=n_classes)
    share = float(counts.max() / len(pred))
    rate = math.nan if majority_label is None else float(np.mean(labels == majority_label))
    correct = int((pred == labels).sum())
    p = (math.nan if majority_label is None else 1.0 if rate == 1
         else float(binomtest(correct, len(labels), rate, alternative="greater").pvalue))
    ratio = float(final_train_loss) / math.log(n_classes)
    names = CLASSES if n_classes == len(CLASSES) else tuple(map(str, range(n_classes)))
    reasons = []
    if share >= ONE_CLASS_SHARE:
        reasons.append(f"predicts {names[int(counts.argmax())]} for {share:.0%} of test images")
    if ratio >= FLAT_LOSS_SHARE:
        reasons.append(f"final training loss {final_train_loss:.3f} is {ratio:.0%} of ln({n_classes})")
    return {"top_prediction_share": share, "loss_ratio": ratio, "majority_rate": rate,
            "majority_class": None if majority_label is None else names[majority_label],
            "p_above_majority": p, "learned": not reasons, "reason": "; ".join(reasons)}

"""The evaluation rules defined once (xray_ablate/evaluation.py): Wilson, the majority class, the
learning check, the predictions.csv columns; and that importing them loads no torch."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from xray_ablate.config.choices import CLASSES
from xray_ablate.evaluation import PREDICTION_COLUMNS, learning_check, majority, predictions_frame, wilson


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (8, 10), (15, 58), (37, 59), (59, 59)])
def test_wilson_matches_the_formula_and_has_no_interval_without_images(k, n):
    assert wilson(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)
    assert all(math.isnan(bound) for bound in wilson(0, 0))


def test_wilson_covers_the_true_rate_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    for p, n in ((0.3, 50), (0.9, 40)):
        ks = rng.binomial(n, p, size=20000)
        covers = np.array([lo <= p <= hi for lo, hi in (wilson(k, n) for k in range(n + 1))])
        covered = covers[ks].mean()
        assert 0.93 <= covered <= 0.975, (p, n, covered)


def test_the_majority_is_the_most_frequent_and_a_tie_goes_to_the_earliest():
    assert majority(np.array(["viral", "covid", "covid", "viral"]), CLASSES) == "viral"
    assert majority(np.array([3, 3, 1]), range(4)) == 3
    assert majority(np.array([], int), range(4)) == 0


def test_learning_check_flags_one_class_and_flat_loss_against_the_training_majority():
    labels = np.r_[np.zeros(15), np.ones(10), np.full(20, 2), np.full(13, 3)].astype(int)
    one_class = np.tile([0.1, 0.1, 0.7, 0.1], (58, 1))
    out = learning_check(labels, one_class, math.log(4) * 0.99, 2)
    assert not out["learned"] and out["top_prediction_share"] == 1.0
    assert "predicts covid for 100% of test images" in out["reason"] and "ln(4)" in out["reason"]
    assert out["majority_class"] == "covid" and out["majority_rate"] == pytest.approx(20 / 58)
    assert out["p_above_majority"] == pytest.approx(st.binomtest(20, 58, 20 / 58, "greater").pvalue)
    # The training split's majority, not the test set's: bacterial held 15 of the 58 test images.
    out = learning_check(labels, one_class, 0.3, 0)
    assert out["majority_class"] == "bacterial" and out["majority_rate"] == pytest.approx(15 / 58)
    assert out["p_above_majority"] == pytest.approx(st.binomtest(20, 58, 15 / 58, "greater").pvalue)
    good = np.eye(4)[labels] * 0.9 + 0.025
    out = learning_check(labels, good, 0.3, 2)
    assert out["learned"] and out["reason"] == "" and out["p_above_majority"] < 1e-10
    assert out["loss_ratio"] == pytest.approx(0.3 / math.log(4))
    unknown = learning_check(labels, good, 0.3, None)
    assert unknown["learned"] and math.isnan(unknown["majority_rate"]) and math.isnan(unknown["p_above_majority"])


def test_predictions_have_the_documented_columns():
    frame = predictions_frame(["a.png", "b.png"], [0, 3], np.eye(4)[[0, 3]])
    assert list(frame.columns) == PREDICTION_COLUMNS == ["image_id", "label", *(f"prob_{c}" for c in CLASSES)]
    assert frame["prob_healthy"].tolist() == [0.0, 1.0]


def test_evaluation_loads_no_torch():
    code = "import sys, xray_ablate.evaluation; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]

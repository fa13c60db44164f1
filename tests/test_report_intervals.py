"""Intervals that include test-set sampling, checked by simulation against a known population."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from xray_ablate.report import stats
from xray_ablate.train.metrics import learning_check

# Population: image difficulty on the logit scale (most images nearly always right or wrong,
# as for real classifiers), a seed effect in probability points, a finite test set per replicate.
MEAN, SPREAD, SHIFT = logit(0.75), 2.5, 0.4  # config B: logit + SHIFT


def _truth(shift: float, seed_sd: float) -> float:
    rng = np.random.default_rng(123)
    p = expit(MEAN + shift + SPREAD * rng.standard_normal(4_000_000))
    return float(np.clip(p + rng.normal(0, seed_sd, p.size), 0, 1).mean())


def _draw(rng, reps: int, seeds: int, images: int, seed_sd: float):
    """Correctness of configs a (baseline) and b on the same test images: (reps, seeds, images)."""
    z = MEAN + SPREAD * rng.standard_normal((reps, 1, images))
    out = []
    for shift in (0.0, SHIFT):
        p = np.clip(expit(z + shift) + rng.normal(0, seed_sd, (reps, seeds, 1)), 0, 1)
        out.append((rng.random((reps, seeds, images)) < p).astype(float))
    return out


def _total_arrays(y, confidence=0.95):
    means = y.mean(axis=-1)
    return stats.welch_satterthwaite_t(means.mean(-1), [stats.seed_variance(means),
                                                        stats.image_variance(y)],
                                       [y.shape[-2] - 1, y.shape[-1] - 1], confidence)


def _seed_only(means, confidence=0.95):
    n = means.shape[-1]
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * means.std(axis=-1, ddof=1) / math.sqrt(n)
    return means.mean(-1) - half, means.mean(-1) + half


@pytest.mark.slow
def test_total_interval_covers_the_population_value_in_every_regime(capsys):
    rng = np.random.default_rng(20261126)
    reps, rows = 1000, []
    for seeds, images, seed_pp in itertools.product((3, 10), (60, 1200), (1, 5)):
        sd = seed_pp / 100
        truth_a, truth_b = _truth(0.0, sd), _truth(SHIFT, sd)
        hits = {k: 0 for k in ("total", "seed-only", "Δ total", "Δ seed-only")}
        for chunk in range(4):
            a, b = _draw(rng, reps // 4, seeds, images, sd)
            low, high, _, _ = _total_arrays(a)
            hits["total"] += np.sum((low <= truth_a) & (truth_a <= high))
            low, high = _seed_only(a.mean(-1))
            hits["seed-only"] += np.sum((low <= truth_a) & (truth_a <= high))
            low, high, _, _ = _total_arrays(b - a)  # paired: seed-matched and image-matched
            hits["Δ total"] += np.sum((low <= truth_b - truth_a) & (truth_b - truth_a <= high))
            low, high = _seed_only(b.mean(-1) - a.mean(-1))
            hits["Δ seed-only"] += np.sum((low <= truth_b - truth_a) & (truth_b - truth_a <= high))
            if chunk == 0:  # the DataFrame functions the report calls give the same interval
                frame = lambda y: pd.DataFrame(y, index=range(seeds))  # noqa: E731
                one = stats.total_interval(frame(a[0]))
                assert (one.low, one.high) == pytest.approx((_total_arrays(a[0])[:2]))
                diff = stats.total_difference(frame(b[0]), frame(a[0]))
                assert (diff.low, diff.high) == pytest.approx((_total_arrays(b[0] - a[0])[:2]))
        rows.append({"seeds": seeds, "images": images, "seed sd (pp)": seed_pp,
                     **{k: v / reps for k, v in hits.items()}})
    table = pd.DataFrame(rows)
    with capsys.disabled():
        print("\ncoverage of 95 % intervals, 1000 replicates per regime\n" + table.to_string(index=False))
    assert table["total"].between(0.92, 0.98).all()
    assert table["Δ total"].between(0.92, 0.98).all()
    # Seed sd 1 pp: the test images dominate, and the seed-only interval misses them.
    image_dominated = table[table["seed sd (pp)"] == 1]
    assert (image_dominated["seed-only"] < 0.90).all()
    assert table.loc[(table["seeds"] == 10) & (table["images"] == 60), "seed-only"].max() < 0.6

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

from xray_ablate.stats import intervals

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
    return intervals.welch_satterthwaite_t(means.mean(-1), [intervals.seed_variance(means),
                                                        intervals.image_variance(y)],
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
                one = intervals.total_interval(pd.DataFrame(a[0]))
                assert (one.low, one.high) == pytest.approx(_total_arrays(a[0])[:2])
                diff = intervals.total_difference(pd.DataFrame(b[0]), pd.DataFrame(a[0]))
                assert (diff.low, diff.high) == pytest.approx(_total_arrays(b[0] - a[0])[:2])
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
    assert table.loc[(table["seeds"] == 10) & (table["images"] == 60), "seed-only"].max() < 0.7


@pytest.mark.slow
def test_factorial_contrasts_over_seeds_and_images_cover_the_population_effects(capsys):
    """A 2 x 2 design (A: shift 0.4 on the logit scale, B: 0.2, AB: -0.3) on one test set per
    replicate: the main effect of A and the interaction, taken per seed and per image
    (intervals.total_contrast), cover the population values about 95 % of the time."""
    rng = np.random.default_rng(7)
    shift = {"a0 | b0": 0.0, "a1 | b0": 0.4, "a0 | b1": 0.2, "a1 | b1": 0.3}
    sd, reps = 0.03, 800
    truth = {cell: _truth(v, sd) for cell, v in shift.items()}
    effects = {
        "A": intervals.contrast_weights(["A", "B"], {"A": ["a0", "a1"], "B": ["b0", "b1"]}, {"A": ("a1", "a0")}),
        "AB": intervals.contrast_weights(["A", "B"], {"A": ["a0", "a1"], "B": ["b0", "b1"]},
                                     {"A": ("a1", "a0"), "B": ("b1", "b0")}),
    }
    assert effects["A"] == {"a1 | b0": 0.5, "a0 | b0": -0.5, "a1 | b1": 0.5, "a0 | b1": -0.5}
    rows = []
    for seeds, images in ((3, 60), (3, 1200), (10, 300)):
        hits = dict.fromkeys(effects, 0)
        for chunk in range(4):
            z = MEAN + SPREAD * rng.standard_normal((reps // 4, 1, images))
            draws = {}
            for cell, v in shift.items():
                p = np.clip(expit(z + v) + rng.normal(0, sd, (reps // 4, seeds, 1)), 0, 1)
                draws[cell] = (rng.random(p.shape[:2] + (images,)) < p).astype(float)
            for name, weights in effects.items():
                y = sum(w * draws[c] for c, w in weights.items())
                target = sum(w * truth[c] for c, w in weights.items())
                low, high, _, _ = _total_arrays(y)
                hits[name] += np.sum((low <= target) & (target <= high))
                if chunk == 0:  # the DataFrame function the report calls gives the same interval
                    one = intervals.total_contrast({c: pd.DataFrame(d[0]) for c, d in draws.items()}, weights)
                    assert (one.low, one.high) == pytest.approx(_total_arrays(y[0])[:2])
        rows.append({"seeds": seeds, "images": images, **{k: v / reps for k, v in hits.items()}})
    table = pd.DataFrame(rows)
    with capsys.disabled():
        print("\ncoverage of 95 % factorial contrasts, 800 replicates per regime\n" + table.to_string(index=False))
    assert table[list(effects)].stack().between(0.925, 0.98).all()


def test_factorial_contrast_needs_two_common_seeds():
    cells = {"x": pd.DataFrame([[1.0, 0.0]], index=[0]), "y": pd.DataFrame([[1.0, 1.0]], index=[0])}
    assert math.isnan(intervals.total_contrast(cells, {"x": 1.0, "y": -1.0}).low)


def _predictions(rng, n=80, classes=4, skill=1.5):
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def test_image_scores_average_to_the_metric_and_give_the_jackknife_variance():
    from sklearn.metrics import balanced_accuracy_score

    labels, probs = _predictions(np.random.default_rng(1))
    pred = probs.argmax(1)
    assert intervals.image_scores(labels, probs, "accuracy").mean() == pytest.approx((pred == labels).mean())
    assert intervals.image_scores(labels, probs, "balanced_accuracy").mean() == pytest.approx(
        balanced_accuracy_score(labels, pred))
    auc = intervals.image_scores(labels, probs, "roc_auc_ovr")
    assert auc.mean() == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    # Brute-force leave-one-out: the scores' variance / N is the jackknife variance.
    n = len(labels)
    keep = ~np.eye(n, dtype=bool)
    loo = np.array([roc_auc_score(labels[k], probs[k], multi_class="ovr") for k in keep])
    assert auc.var(ddof=1) / n == pytest.approx((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    ece = intervals.image_scores(labels, probs, "ece")
    conf, correct = probs.max(1), pred == labels
    bins = np.minimum((np.ceil(conf * 10) - 1).astype(int), 9)
    hand = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * np.mean(bins == b)
               for b in np.unique(bins))
    assert ece.mean() == pytest.approx(hand) == intervals.expected_calibration_error(labels, probs)
    loo = np.array([intervals.expected_calibration_error(labels[k], probs[k]) for k in keep])
    assert ece.var(ddof=1) / n == pytest.approx((n - 1) / n * np.sum((loo - loo.mean()) ** 2))


def test_exact_mcnemar():
    # Same accuracy, different images right: 30 discordant pairs, split 15/15.
    a = np.r_[np.ones(15), np.zeros(15), np.zeros(28)].astype(bool)
    b = np.r_[np.zeros(15), np.ones(15), np.zeros(28)].astype(bool)
    assert intervals.mcnemar_exact(a, b) == (15, 15, pytest.approx(1.0))
    a[15:25] = True  # a now right on 10 more of b's images: 15 vs 5 discordant
    only_a, only_b, pvalue = intervals.mcnemar_exact(a, b)
    assert (only_a, only_b) == (15, 5)
    assert pvalue == pytest.approx(2 * st.binom.cdf(5, 20, 0.5))


def test_two_level_bootstrap_agrees_with_the_analytic_standard_errors():
    """The two-level bootstrap counts the seed x image residual twice (once in each level), so it
    matches the plain sum of the two terms, and the analytic interval, which counts it once, is a
    little tighter."""
    rng = np.random.default_rng(7)
    a, b = _draw(rng, 1, 20, 300, 0.03)
    frames = {k: pd.DataFrame(y[0]) for k, y in (("a", a), ("b", b))}
    boot = intervals.two_level_bootstrap(frames, n_resamples=2000, seed=1)

    def plain(y):  # var(run means) / n + N var(contributions), no residual correction
        return math.sqrt(intervals.seed_variance(y.mean(1)) + y.shape[1] * np.var(
            intervals.image_contributions(y), ddof=1))

    for boot_se, y, analytic in ((boot["a"].std(), a[0], intervals.total_interval(frames["a"])),
                                 ((boot["b"] - boot["a"]).std(), b[0] - a[0],
                                  intervals.total_difference(frames["b"], frames["a"]))):
        assert boot_se == pytest.approx(plain(y), rel=0.1)
        assert 0.6 * boot_se < analytic.se <= boot_se * 1.05
    # One image resample per replicate for both configurations: the difference is much tighter
    # than that of independent resamples.
    assert (boot["b"] - boot["a"]).std() < 0.7 * math.hypot(boot["a"].std(), boot["b"].std())


def test_split_per_seed_counts_each_seeds_images_and_stays_honest():
    """split.vary_with_seed: every seed its own test images (NaN elsewhere)."""
    rng = np.random.default_rng(3)
    truth, hits, reps, seeds, images = _truth(0.0, 0.02), 0, 400, 5, 60
    for _ in range(reps):
        y = _draw(rng, seeds, 1, images, 0.02)[0][:, 0]  # each seed: own images, own effect
        grid = np.full((seeds, seeds * images), np.nan)
        for s in range(seeds):
            grid[s, s * images:(s + 1) * images] = y[s]
        frame = pd.DataFrame(grid)
        ci = intervals.total_interval(frame)
        assert ci.n_images == seeds * images
        hits += ci.low <= truth <= ci.high
    assert 0.93 <= hits / reps <= 0.995  # the image term counts each seed's own images


def test_power_respects_the_test_sample_floor():
    # 58 test images: the image SE of Δ is ~3 pp; no number of seeds detects 1 pp.
    assert intervals.seeds_needed_with_floor(1.0, 1.0, 3.0, 58) == math.inf
    n = intervals.images_needed(1.0, 1.0, 10, 3.0, 58)
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert n == math.ceil(58 * 9 / ((1 / z) ** 2 - 0.1))
    # A small image term: seeds needed approaches the seed-only answer from above.
    few = intervals.seeds_needed_with_floor(2.0, 1.5, 0.05, 5000)
    assert intervals.seeds_needed(2.0, 1.5, paired=True) <= few <= intervals.seeds_needed(2.0, 1.5, paired=True) + 2


def test_power_without_any_spread_plans_nothing():
    """Runs that agree image for image (two seeds of models predicting one class): seed sd and
    test-sample SE of Δ both 0. The report said 'no number of seeds reaches it (the test-sample SE
    of Δ alone, 0.00 pp, is too large); about 0 test images would'."""
    from xray_ablate.report.images import floor_table

    assert math.isnan(intervals.seeds_needed_with_floor(1.0, 0.0, 0.0, 14))
    assert math.isnan(intervals.images_needed(1.0, 0.0, 2, 0.0, 14))
    table = floor_table((1.0, 2.0), 0.0, 0.0, 2, 14, 0.05, 0.8)
    assert table["seeds_needed"].isna().all() and table["images_needed"].isna().all() and (table["note"] == "").all()
    assert intervals.seeds_needed_with_floor(1.0, 0.0, 0.1, 14) == 2  # one term alone still plans


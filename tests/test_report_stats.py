"""The report's statistics as pure functions: equal to scipy/statsmodels, and calibrated."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from xray_ablate.config.factors import factor_names
from xray_ablate.report.runs import (
    UserError,
    clean_runs,
    fallback_baseline,
    integrity_filter,
    matching_configs,
    mixing_warnings,
)
from xray_ablate.report.tables import Settings, factorial
from xray_ablate.stats import intervals


def test_intervals_match_scipy():
    x = np.array([80.1, 81.7, 79.4, 80.9, 82.0])
    low, high = intervals.t_interval(x, 0.95)
    assert (low, high) == pytest.approx(st.t.interval(0.95, 4, loc=x.mean(), scale=st.sem(x)))
    ref = st.bootstrap((x,), np.mean, method="percentile", n_resamples=2000,
                       rng=np.random.default_rng(3)).confidence_interval
    assert intervals.bootstrap_interval(x, 0.95, 2000, 3) == pytest.approx((ref.low, ref.high))
    assert all(math.isnan(v) for v in intervals.t_interval([80.0]) + intervals.bootstrap_interval([80.0]))


def test_comparisons_match_scipy():
    a = pd.Series([81.0, 83.0, 82.5, 80.0], index=[0, 1, 2, 3])
    b = pd.Series([80.0, 81.5, 82.0, 79.0, 78.0], index=[0, 1, 2, 3, 4])
    paired = intervals.compare(a, b, pairable=True)
    ref = st.ttest_rel(a.loc[[0, 1, 2, 3]], b.loc[[0, 1, 2, 3]])
    assert paired.test == "paired t" and paired.n_pairs == 4
    assert paired.pvalue == pytest.approx(ref.pvalue)
    assert (paired.low, paired.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert paired.delta == pytest.approx((a - b.loc[a.index]).mean())

    welch = intervals.compare(a, b, pairable=False)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert welch.test == "Welch t" and welch.pvalue == pytest.approx(ref.pvalue)
    assert (welch.low, welch.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert welch.delta == pytest.approx(a.mean() - b.mean())
    # Seeds that do not pair fall back to Welch.
    shifted = pd.Series(a.to_numpy(), index=[10, 11, 12, 13])
    assert intervals.compare(shifted, b).test == "Welch t"
    single = intervals.compare(pd.Series([80.0], index=[0]), b)
    assert math.isnan(single.low) and math.isnan(single.pvalue)


def test_equal_count_differences_are_no_spread_whatever_the_rounding():
    """Two seeds, 624 test images, the configuration 6 images ahead on both: the differences of
    the percentages differ by ~1e-14, which ttest_rel took for a spread (p 4.7e-15, a zero-width
    "95 % CI"); like exactly equal ones they are no test."""
    config, base = np.array([565, 563]) / 624 * 100, np.array([559, 557]) / 624 * 100  # as the report scales
    assert np.ptp(config - base) > 0  # the rounding the guard must see through
    paired = intervals.compare(pd.Series(config), pd.Series(base))
    assert paired.test == "paired t" and math.isnan(paired.pvalue)
    assert paired.low == paired.high == paired.delta == pytest.approx(600 / 624)
    flat = intervals.welch_comparison(np.array([565, 565]) / 624 * 100, np.array([559, 559]) / 624 * 100)
    assert math.isnan(flat.pvalue)


def test_holm_and_probability_of_improvement():
    p = [0.01, float("nan"), 0.04, 0.03]
    got = intervals.holm(p)
    ref = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert math.isnan(got[1]) and got[[0, 2, 3]] == pytest.approx(ref)
    rng = np.random.default_rng(7)  # ties, values the step-down lifts past 1, one and many tests
    for m in (1, 2, 5, 40):
        p = np.round(rng.uniform(0, 0.6, m), 2)
        assert intervals.holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-12)
    assert intervals.holm([]).shape == (0,) and np.isnan(intervals.holm([float("nan")])).all()
    a, b = [3.0, 5.0, 7.0], [4.0, 5.0]
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b) / 6
    assert intervals.prob_improvement(a, b) == pytest.approx(wins)
    assert intervals.prob_improvement([1, 2], [1, 2]) == pytest.approx(0.5)


def test_power_numbers_of_the_issue():
    # sd 1 pp: 17 seeds for 1 pp, 6 for 2 pp, 4 for 3 pp (unpaired, two-sided, alpha .05, 80 %).
    assert [intervals.seeds_needed(d, 1.0) for d in (1, 2, 3)] == [17, 6, 4]
    assert intervals.seeds_needed(50, 1.0) == 2
    d = TTestIndPower().solve_power(nobs1=5, alpha=0.05, power=0.8)
    assert intervals.min_detectable_difference(5, 0.8) == pytest.approx(d * 0.8)
    # Pairing needs fewer seeds when the paired differences vary less.
    assert intervals.seeds_needed(1, 0.5, paired=True) < intervals.seeds_needed(1, 1.0)
    assert math.isnan(intervals.min_detectable_difference(1, 1.0))


@pytest.mark.slow
def test_coverage_of_the_intervals_is_close_to_95_percent():
    rng = np.random.default_rng(0)
    true_mean, sd, n, sims = 80.0, 1.0, 5, 2000
    samples = rng.normal(true_mean, sd, size=(sims, n))
    t_hits = [lo <= true_mean <= hi for lo, hi in map(intervals.t_interval, samples)]
    assert 0.935 <= np.mean(t_hits) <= 0.965
    # The Δ intervals: paired and Welch, true Δ = 1.
    b = rng.normal(true_mean, sd, size=(sims, n))
    a = b + 1.0 + rng.normal(0, 0.5, size=(sims, n))
    hits = [(c := intervals.paired_comparison(x, y)).low <= 1.0 <= c.high for x, y in zip(a, b, strict=True)]
    assert 0.935 <= np.mean(hits) <= 0.965
    a = rng.normal(true_mean + 1, 2 * sd, size=(sims, n))
    hits = [(c := intervals.welch_comparison(x, y)).low <= 1.0 <= c.high for x, y in zip(a, b, strict=True)]
    assert 0.93 <= np.mean(hits) <= 0.97
    # The percentile bootstrap runs a little narrow with few seeds, close to nominal with 20.
    big = rng.normal(true_mean, sd, size=(300, 20))
    boot = [lo <= true_mean <= hi for lo, hi in
            (intervals.bootstrap_interval(x, 0.95, 999, i) for i, x in enumerate(big))]
    assert 0.88 <= np.mean(boot) <= 0.98


def _factorial_data(replicates: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for aug in ("on", "off"):
        for ds in ("masked", "raw"):
            for cw in ("on", "off"):
                mean = 80 + 2 * (aug == "on") - 1 * (ds == "raw") + 0.5 * (cw == "on") \
                    + 1.5 * (aug == "on") * (ds == "raw")
                for seed in range(replicates):
                    rows.append({"augmentation": aug, "dataset": ds, "class_weights": cw,
                                 "seed": seed, "y": mean + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def test_main_effects_and_interactions_match_cell_means_and_anova():
    data = _factorial_data()
    factors = ["augmentation", "dataset", "class_weights"]
    refs = {"augmentation": "off", "dataset": "raw", "class_weights": "off"}
    main = intervals.main_effects(data, factors, "y", refs).set_index("factor")
    cells = data.groupby(factors)["y"].mean()
    aug = (cells.xs("on", level="augmentation") - cells.xs("off", level="augmentation")).mean()
    assert main.loc["augmentation", "estimate"] == pytest.approx(aug)
    assert main.loc["augmentation", "level"] == "on"
    assert main.loc["dataset", "level"] == "masked"
    # Balanced design: the contrast's p equals the saturated ANOVA's p for that term.
    full = anova_lm(ols("y ~ C(augmentation, Sum) * C(dataset, Sum) * C(class_weights, Sum)",
                        data).fit(), typ=2)
    assert main.loc["dataset", "p"] == pytest.approx(full.loc["C(dataset, Sum)", "PR(>F)"])
    assert main.loc["augmentation", "low"] < aug < main.loc["augmentation", "high"]
    inter = intervals.interactions(data, factors, "y", refs)
    row = inter[(inter.factor_a == "augmentation") & (inter.factor_b == "dataset")].iloc[0]
    m = data.groupby(["augmentation", "dataset"])["y"].mean()
    dd = (m["on", "masked"] - m["off", "masked"]) - (m["on", "raw"] - m["off", "raw"])
    assert row["estimate"] == pytest.approx(dd)
    assert row["p"] == pytest.approx(
        full.loc["C(augmentation, Sum):C(dataset, Sum)", "PR(>F)"])
    assert len(inter) == 3
    # The ANOVA: the same saturated model, so the same residual (the three-way interaction is
    # not pooled into it) and the same p-values as the contrasts.
    table = intervals.anova_table(data, factors, "y").set_index("term")
    assert table.loc["augmentation:dataset", "F"] == pytest.approx(
        full.loc["C(augmentation, Sum):C(dataset, Sum)", "F"])
    assert table.loc["Residual", "df"] == full.loc["Residual", "df"] == 16
    assert table.loc["Residual", "sum_sq"] == pytest.approx(full.loc["Residual", "sum_sq"])
    assert "augmentation:dataset:class_weights" not in table.index
    assert table.loc["dataset", "p"] == pytest.approx(main.loc["dataset", "p"])


def test_anova_agrees_with_the_main_effects_when_seeds_are_unbalanced():
    data = _factorial_data().drop(index=[0, 1, 5])  # failed seeds: 1 to 3 runs per cell
    factors = ["augmentation", "dataset", "class_weights"]
    refs = {"augmentation": "off", "dataset": "raw", "class_weights": "off"}
    main = intervals.main_effects(data, factors, "y", refs).set_index("factor")
    inter = intervals.interactions(data, factors, "y", refs).set_index(["factor_a", "factor_b"])
    table = intervals.anova_table(data, factors, "y").set_index("term")
    ref = anova_lm(ols("y ~ C(augmentation, Sum) * C(dataset, Sum) * C(class_weights, Sum)",
                       data).fit(), typ=3)
    for factor in factors:
        assert table.loc[factor, "p"] == pytest.approx(main.loc[factor, "p"])
        assert table.loc[factor, "F"] == pytest.approx(ref.loc[f"C({factor}, Sum)", "F"])
    assert table.loc["augmentation:dataset", "p"] == pytest.approx(
        inter.loc[("augmentation", "dataset"), "p"])
    assert table.loc["Residual", "df"] == len(data) - 8


def test_unreplicated_design_gives_estimates_without_ci():
    data = _factorial_data(replicates=1)
    refs = {"augmentation": "off", "dataset": "raw", "class_weights": "off"}
    main = intervals.main_effects(data, ["augmentation", "dataset", "class_weights"], "y", refs)
    assert main["estimate"].notna().all() and main["low"].isna().all()
    # Two crossed factors, one run each (`-m experiment=demo repeats=1`): no residual df; the
    # ANOVA used to raise "array must not contain infs or NaNs".
    two = data[data["class_weights"] == "off"]
    for factors in (["augmentation", "dataset"], ["augmentation", "dataset", "class_weights"]):
        sub = two if len(factors) == 2 else data
        assert intervals.residual_df(sub, factors) == 0
        table = intervals.anova_table(sub, factors, "y").set_index("term")
        assert table["F"].isna().all() and table["p"].isna().all()
        assert table.loc["Residual", "df"] == 0
        cells = sub.groupby("augmentation")["y"].mean()
        assert table.loc["augmentation", "sum_sq"] == pytest.approx(
            len(sub) * ((cells["on"] - cells["off"]) / 2) ** 2)


def test_main_effects_are_measured_against_a_level_of_their_crossed_design():
    """raw was run on another backbone only: the crossed design (dataset x augmentation at the
    baseline's backbone) has no raw cell, so the dataset effects are against the baseline's level.
    Measured against raw, whose cells were not in the model, each "effect" was the level's cell
    mean (81 pp, p 1e-19) and entered the Holm family."""
    rng = np.random.default_rng(0)
    configs = [("masked", "on", "resnet18"), ("masked", "off", "resnet18"), ("cropped", "on", "resnet18"),
               ("cropped", "off", "resnet18"), ("raw", "on", "resnet50")]
    runs = pd.DataFrame([{**{f: "x" for f in factor_names()}, "dataset": d, "augmentation": a, "backbone": b,
                          "config_key": f"k{i}", "seed": s,
                          "test_accuracy": 0.80 + 0.01 * (d == "cropped") + rng.normal(0, 0.005)}
                         for i, (d, a, b) in enumerate(configs) for s in range(3)])
    result = factorial(runs, "k0", Settings())
    main = result.main.set_index(["factor", "level"])
    assert list(main.index) == [("dataset", "cropped"), ("augmentation", "on")]
    assert main.loc[("dataset", "cropped"), "reference"] == "masked"
    cells = runs[runs["backbone"] == "resnet18"].groupby("dataset")["test_accuracy"].mean() * 100
    assert main.loc[("dataset", "cropped"), "estimate"] == pytest.approx(cells["cropped"] - cells["masked"])
    assert abs(main.loc[("dataset", "cropped"), "estimate"]) < 3


def _tidy(rows: list[dict]) -> pd.DataFrame:
    base = {"status": "FINISHED", "split_mode": "fixed", "split_seed": "0", "fingerprint": "f1",
            "split_hash": "h1", "end_time": pd.NaT, "test_accuracy": 0.8,
            **{f: "x" for f in factor_names()}}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    frame["start_time"] = pd.to_datetime(frame["start_time"], unit="s", utc=True)
    return frame


def test_clean_runs_keeps_latest_finished_run_per_config_and_seed():
    runs = _tidy([
        {"run_id": "old", "config_key": "k", "seed": 0, "start_time": 1, "test_accuracy": 0.5},
        {"run_id": "new", "config_key": "k", "seed": 0, "start_time": 2, "test_accuracy": 0.8},
        {"run_id": "s1", "config_key": "k", "seed": 1, "start_time": 3},
        {"run_id": "fail", "config_key": "k", "seed": 2, "start_time": 4, "status": "FAILED"},
        {"run_id": "dead", "config_key": "k", "seed": 3, "start_time": 5, "status": "RUNNING"},
        {"run_id": "nometric", "config_key": "k", "seed": 4, "start_time": 6,
         "test_accuracy": float("nan")},
    ])
    cleaned = clean_runs(runs, "test_accuracy")
    assert cleaned.runs["run_id"].tolist() == ["new", "s1"]
    text = " ".join(cleaned.notes)
    assert "1 FAILED" in text and "1 RUNNING" in text and "1 older duplicate" in text
    assert "nometric"[:8] in text
    with pytest.raises(UserError, match="no FINISHED"):
        clean_runs(runs[runs.status != "FINISHED"], "test_accuracy")


def test_a_rerun_on_another_dataset_does_not_hide_the_older_comparable_run():
    # Seed 0 of k was re-run on a newer dataset (f2); the report keeps the f1 runs (the
    # baseline's group), so the f1 run of seed 0 must survive the dedup.
    runs = _tidy([
        {"run_id": f"b{s}", "config_key": "base", "seed": s, "start_time": s} for s in range(3)
    ] + [
        {"run_id": f"k{s}", "config_key": "k", "seed": s, "start_time": 10 + s} for s in range(3)
    ] + [
        {"run_id": "k0-new", "config_key": "k", "seed": 0, "start_time": 20, "fingerprint": "f2"},
        {"run_id": "k1-dup", "config_key": "k", "seed": 1, "start_time": 21},
    ])
    cleaned = clean_runs(runs, "test_accuracy")
    kept, left, _ = integrity_filter(cleaned.runs, "base")
    assert sorted(kept["run_id"]) == ["b0", "b1", "b2", "k0", "k1-dup", "k2"]
    assert not kept.duplicated(["config_key", "seed"]).any()
    assert left["config_key"].tolist() == ["k"] and left["seeds"].tolist() == ["0"]
    assert "1 older duplicate" in " ".join(cleaned.notes)


def test_mixing_warnings():
    runs = _tidy([{"run_id": "a", "config_key": "k", "seed": 0, "start_time": 1}])
    runs["code_version"], runs["device"] = "abc", "cpu"
    assert mixing_warnings(runs) == []
    dirty = runs.assign(code_version="abc+dirty", data_patient_fallbacks=0.0)
    assert "uncommitted changes (+dirty): abc+dirty (1 run)" in mixing_warnings(dirty)[0]
    mixed = pd.concat([runs, runs.assign(run_id="b", device="cuda", data_patient_fallbacks=2.0)])
    text = " ".join(mixing_warnings(mixed))
    assert "cpu (1 run), cuda (1 run)" in text and "patient leakage" in text
    assert "code version" not in text


def test_integrity_fixed_split_keeps_the_baseline_group():
    runs = _tidy([
        {"run_id": f"b{s}", "config_key": "base", "seed": s, "start_time": s} for s in range(2)
    ] + [
        {"run_id": f"o{s}", "config_key": "other", "seed": s, "start_time": 9, "split_hash": "h2"}
        for s in range(4)
    ] + [
        {"run_id": "fp", "config_key": "base2", "seed": 0, "start_time": 9, "fingerprint": "f9"},
        {"run_id": "ok", "config_key": "base2", "seed": 1, "start_time": 9},
    ])
    kept, left, ref = integrity_filter(runs, "base")
    assert sorted(kept["run_id"]) == ["b0", "b1", "ok"]  # the baseline's group, not the majority
    assert ref["split_hash"] == "h1" and ref["fingerprint"] == "f1"
    reasons = left.set_index("config_key")["reason"]
    assert "split manifest h2" in reasons["other"] and "fingerprint f9" in reasons["base2"]
    assert left.set_index("config_key").loc["other", "n_runs"] == 4
    # Without a baseline, the majority group is the reference.
    kept, _, ref = integrity_filter(runs, None)
    assert ref["split_hash"] == "h2" and set(kept["config_key"]) == {"other"}


def test_integrity_per_seed_split_groups_by_fingerprint_and_split_seed():
    runs = _tidy([
        {"run_id": f"a{s}", "config_key": "a", "seed": s, "start_time": s, "split_mode": "per_seed",
         "split_hash": f"h{s}"} for s in range(3)
    ] + [
        {"run_id": "b0", "config_key": "b", "seed": 0, "start_time": 5, "split_mode": "per_seed",
         "split_hash": "h0"},
        {"run_id": "b1", "config_key": "b", "seed": 1, "start_time": 5, "split_mode": "per_seed",
         "split_hash": "hx", "split_seed": "100"},
        {"run_id": "c0", "config_key": "c", "seed": 0, "start_time": 5, "split_hash": "h0"},
    ])
    kept, left, _ = integrity_filter(runs, "a")
    assert sorted(kept["run_id"]) == ["a0", "a1", "a2", "b0"]
    reasons = dict(zip(left["config_key"], left["reason"], strict=True))
    assert "split seed base 100" in reasons["b"] and "split mode fixed" in reasons["c"]


def test_fallback_baseline_prefers_most_seeds_then_closest_levels():
    rows = [{"run_id": f"{k}{s}", "config_key": k, "seed": s, "start_time": t, "augmentation": aug,
             "dataset": ds} for k, aug, ds, seeds, t in [
                 ("far", "off", "raw", 2, 9), ("near", "off", "masked", 2, 1), ("few", "on", "masked", 1, 5)]
            for s in range(seeds)]
    runs = _tidy(rows)
    levels = {"augmentation": "on", "dataset": "masked"}
    assert matching_configs(runs, levels) == ["few"]
    assert fallback_baseline(runs[runs.config_key != "few"], levels) == "near"
    assert fallback_baseline(runs, {"augmentation": "off", "dataset": "masked"}) == "near"
    assert fallback_baseline(runs, {}) == "far"  # a tie on seeds and levels: the newest

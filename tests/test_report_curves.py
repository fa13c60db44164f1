"""The learning-curve figure and table, and per-class recall next to accuracy (report/curves.py).

Fast tests on a synthetic run frame with known numbers; one slow test runs the learning_curve
experiment on the real fixture through the command line and reads its report.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from conftest import invoke_cli

from xray_ablate.config.choices import CLASSES
from xray_ablate.report.curves import (
    FIGURE,
    LEARNING_TITLE,
    OVER_SEEDS,
    OVER_SEEDS_AND_IMAGES,
    Curves,
    compute_curves,
    curve_frames,
    curve_section,
    display_per_class,
    learning_curve_plot,
    learning_curve_table,
    per_class_table,
    trade_off,
)
from xray_ablate.report.images import Evidence
from xray_ablate.report.render.markdown import markdown
from xray_ablate.report.tables import Settings, run_table
from xray_ablate.stats import intervals

SETTINGS = Settings(n_resamples=99)
BASE = {"dataset": "masked", "train_fraction": "1.0", "class_weights": "off",
        "class_balance": "natural", "normalization": "on", "augmentation": "on",
        "brisque_filter": "off", "backbone": "cnn16"}
FULL = 400  # training images at fraction 1


def _runs(levels: list[dict], seeds=(0, 1, 2), accuracy=None) -> pd.DataFrame:
    """One run per (configuration, seed); test_accuracy = accuracy(levels, seed) (a fraction),
    n_train = FULL * fraction, recall of class i = accuracy - 0.1 * i."""
    rows = []
    for i, lv in enumerate(levels):
        factors = BASE | lv
        for seed in seeds:
            acc = accuracy(factors, seed)
            rows.append({"run_id": f"r{i}s{seed}", "config_key": f"k{i}", "seed": seed, **factors,
                         "test_accuracy": acc, "test_balanced_accuracy": acc - 0.05,
                         "n_train": FULL * float(factors["train_fraction"]),
                         **{f"test_recall_{c}": acc - 0.1 * j for j, c in enumerate(CLASSES)}})
    runs = pd.DataFrame(rows)
    runs["seed"] = runs["seed"].astype("Int64")
    return runs


FRACTIONS = ("0.125", "0.25", "0.5", "1.0")


def _learning_runs() -> pd.DataFrame:
    # accuracy rises with log2(fraction); raw is 5 pp below masked; the seed adds -1, 0, +1 pp
    levels = [{"train_fraction": f, "dataset": d} for d, f in itertools.product(("masked", "raw"), FRACTIONS)]
    return _runs(levels, accuracy=lambda lv, seed: 0.8 + 0.04 * np.log2(float(lv["train_fraction"]))
                 - 0.05 * (lv["dataset"] == "raw") + 0.01 * (seed - 1))


def test_learning_curve_table_one_row_per_fraction_and_curve():
    runs = _learning_runs()
    table = run_table(runs, "k3", SETTINGS)
    curve = learning_curve_table(runs, table, SETTINGS)
    assert list(curve["curve"]) == [f"dataset={d}" for d in ("masked", "raw") for _ in FRACTIONS]
    assert list(curve["train_fraction"]) == [0.125, 0.25, 0.5, 1.0] * 2
    assert list(curve["n_train"]) == [50, 100, 200, 400] * 2
    expected = [80 + 4 * np.log2(float(f)) - 5 * (d == "raw") for d in ("masked", "raw") for f in FRACTIONS]
    np.testing.assert_allclose(curve["test_accuracy_mean"], expected)
    # no predictions: the t-interval over the three seeds (sd 1 pp)
    low, high = intervals.t_interval(np.array([-1.0, 0.0, 1.0]) + 80, 0.95)
    row = curve.iloc[3]
    assert (row["interval"], row["test_accuracy_low"], row["test_accuracy_high"]) == (
        OVER_SEEDS, pytest.approx(low), pytest.approx(high))


def test_no_learning_curve_without_varied_fractions_and_no_recall_table_without_rebalancing():
    runs = _learning_runs()
    runs = runs[runs["train_fraction"] == "1.0"]
    table = run_table(runs, "k3", SETTINGS)
    assert learning_curve_table(runs, table, SETTINGS) is None
    assert per_class_table(runs, table, SETTINGS) is None
    assert curve_section(compute_curves(runs, table, SETTINGS), SETTINGS, {}) == []
    assert curve_frames(Curves(), SETTINGS) == {}


def _predictions(rng, correct_by_class: list[float], per_class: int = 50) -> pd.DataFrame:
    """Test images 0..4*per_class-1 (per_class of each class), correct with the given rate per class."""
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    right = np.concatenate([rng.random(per_class) < p for p in correct_by_class])
    predicted = np.where(right, labels, (labels + 1) % len(CLASSES))
    probs = np.full((len(labels), len(CLASSES)), 0.1)
    probs[np.arange(len(labels)), predicted] = 0.7
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(len(labels))], "label": labels,
                         **{f"prob_{c}": probs[:, j] for j, c in enumerate(CLASSES)}})


def test_learning_curve_uses_the_interval_over_seeds_and_test_images_when_predictions_exist():
    runs = _learning_runs()
    rng = np.random.default_rng(0)
    evidence = Evidence({r: _predictions(rng, [0.8, 0.6, 0.4, 0.9]) for r in runs["run_id"]})
    table = run_table(runs, "k3", SETTINGS, evidence)
    curve = learning_curve_table(runs, table, SETTINGS)
    assert set(curve["interval"]) == {OVER_SEEDS_AND_IMAGES}
    merged = curve.merge(table, on="config_key")
    np.testing.assert_allclose(merged["test_accuracy_low"], merged["ci_total_low"])
    np.testing.assert_allclose(merged["test_accuracy_high"], merged["ci_total_high"])


def test_learning_curve_plot_and_markdown(tmp_path):
    runs = _learning_runs()
    table = run_table(runs, "k3", SETTINGS)
    curves = compute_curves(runs, table, SETTINGS)
    path = learning_curve_plot(curves.learning, SETTINGS, tmp_path / "learning_curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown(curve_section(curves, SETTINGS, {FIGURE: path.name}))
    assert f"![{FIGURE}](learning_curve.png)" in text
    assert "one curve per level of dataset" in text
    assert re.search(r"\| dataset=raw +\| 0\.125 +\| 50 +\| 3 +\| 63\.0 \[", text), text
    stem, numeric, shown = curve_frames(curves, SETTINGS)[LEARNING_TITLE]
    assert stem == "learning_curve" and len(numeric) == len(shown) == 8


def _imbalance_runs() -> pd.DataFrame:
    levels = [{"class_weights": w, "class_balance": b}
              for w, b in itertools.product(("off", "on"), ("natural", "undersample"))]
    # rebalanced runs: 2 pp less accuracy; the seed adds -1, 0, +1 pp
    return _runs(levels, accuracy=lambda lv, seed: 0.8 - 0.02 * ((lv["class_weights"] == "on")
                                                                 + (lv["class_balance"] != "natural"))
                 + 0.01 * (seed - 1))


def test_per_class_table_from_logged_metrics():
    runs = _imbalance_runs()
    table = run_table(runs, "k0", SETTINGS)
    recall = per_class_table(runs, table, SETTINGS)
    assert list(recall["config"]) == list(table["config"])
    assert {"class_weights", "class_balance"} <= set(recall.columns)
    means = recall.set_index("config_key")
    assert means.loc["k3", "test_accuracy_mean"] == pytest.approx(76)
    assert means.loc["k3", "test_balanced_accuracy_mean"] == pytest.approx(71)
    assert means.loc["k3", "test_recall_healthy_mean"] == pytest.approx(76 - 30)
    low, high = intervals.t_interval(np.array([75.0, 76, 77]) - 20, 0.95)
    assert (means.loc["k3", "test_recall_covid_low"], means.loc["k3", "test_recall_covid_high"]) == (
        pytest.approx(low), pytest.approx(high))
    shown = display_per_class(recall, SETTINGS)
    assert shown.loc[3, "recall healthy (%) [95% CI]"].startswith("46.0 [")


def test_per_class_recall_from_predictions_is_each_class_s_accuracy():
    runs = _imbalance_runs()
    rng = np.random.default_rng(1)
    rates = {"natural": [0.9, 0.7, 0.2, 0.9], "undersample": [0.6, 0.6, 0.7, 0.7]}
    predictions = {r.run_id: _predictions(rng, rates[r.class_balance], per_class=200)
                   for r in runs.itertuples()}
    evidence = Evidence(predictions)
    table = run_table(runs, "k0", SETTINGS, evidence)
    recall = per_class_table(runs, table, SETTINGS, evidence).set_index("config_key")
    assert set(recall["interval"]) == {OVER_SEEDS_AND_IMAGES}
    for key, balance in (("k0", "natural"), ("k1", "undersample")):
        seeds = runs[runs["config_key"] == key]["run_id"]
        for j, c in enumerate(CLASSES):
            per_seed = [(lambda p: (p[[f"prob_{k}" for k in CLASSES]].to_numpy().argmax(1)
                                    == p["label"])[p["label"] == j].mean())(predictions[r]) for r in seeds]
            assert recall.loc[key, f"test_recall_{c}_mean"] == pytest.approx(100 * np.mean(per_seed))
            assert abs(recall.loc[key, f"test_recall_{c}_mean"] - 100 * rates[balance][j]) < 6
        row = recall.loc[key]
        assert row["test_recall_covid_low"] < row["test_recall_covid_mean"] < row["test_recall_covid_high"]
    # balanced accuracy is the mean recall over the classes
    np.testing.assert_allclose(recall["test_balanced_accuracy_mean"],
                               recall[[f"test_recall_{c}_mean" for c in CLASSES]].mean(axis=1))


def test_trade_off_sentence_names_the_leaders():
    frame = pd.DataFrame({"config": ["baseline", "class_balance=undersample"], "config_key": ["a", "b"],
                          "test_accuracy_mean": [80.0, 76.0], "test_balanced_accuracy_mean": [60.0, 70.0]})
    text = trade_off(frame)
    assert "trades one for the other" in text
    assert "highest accuracy is **baseline**'s (accuracy 80.0 %, balanced accuracy 60.0 %)" in text
    assert "highest balanced accuracy **class_balance=undersample**'s (accuracy 76.0 %" in text
    frame.loc[1, "test_balanced_accuracy_mean"] = 50.0
    assert "**baseline** leads on both" in trade_off(frame)


@pytest.mark.slow
def test_learning_curve_experiment_report_on_the_real_fixture(monkeypatch, tmp_path, capsys, fixture_root):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=learning_curve", f"dataset.root={fixture_root}",
                      "image_size=32", "backbone=cnn16_gap", "trainer.epochs=1", "repeats=2", "num_workers=1",
                      # 16 jobs: the audit and the per-run figures are tested elsewhere
                      "tracking.log_checkpoint=false", "tracking.log_figures=false", "audit.enabled=false")
    assert code == 0, capsys.readouterr().out[-3000:]
    folder = tmp_path / "reports" / "learning_curve"
    assert (folder / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(folder / "learning_curve.csv")
    assert sorted(zip(table["train_fraction"], table["dataset"], strict=True)) == sorted(
        itertools.product((0.125, 0.25, 0.5, 1.0), ("masked", "raw")))
    assert (table["n"] == 2).all()
    for _, curve in table.groupby("dataset"):
        sizes = curve.sort_values("train_fraction")["n_train"].to_numpy()
        assert (np.diff(sizes) > 0).all(), sizes
    report = (folder / "report.md").read_text()
    assert f"![{FIGURE}](learning_curve.png)" in report
    assert "[CSV](learning_curve.csv)" in report

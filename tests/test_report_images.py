"""The report's per-image evidence on runs with predictions.csv: learned flags, intervals over
seeds + test images, McNemar, variance decomposition, references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_report import Sweep, make_cfg

from xray_ablate.config.choices import CLASSES
from xray_ablate.report import build_report
from xray_ablate.stats import intervals
from xray_ablate.tracking import schema

N_IMAGES = 200
LABELS = np.repeat([0, 1, 2, 3], [50, 40, 30, 80])  # healthy is the majority: 40 %
IDS = [f"img{i:03d}" for i in range(N_IMAGES)]
# Per-image difficulty shared by every run, as with real classifiers: mean 0.7.
EASE = np.random.default_rng(0).beta(1.4, 0.6, N_IMAGES)


def _probs(rng, shift: float | None) -> np.ndarray:
    """Right with probability EASE + ``shift`` per image (None: always 'healthy', collapsed)."""
    probs = np.full((N_IMAGES, 4), 0.1)
    if shift is None:
        probs[:, 3] = 0.7
        return probs
    right = rng.random(N_IMAGES) < np.clip(EASE + shift, 0, 1)
    guess = np.where(right, LABELS, (LABELS + rng.integers(1, 4, N_IMAGES)) % 4)
    probs[np.arange(N_IMAGES), guess] = 0.7
    return probs


def _log(sweep: Sweep, key: str, seed: int, probs: np.ndarray, **factors) -> tuple[str, np.ndarray]:
    correct = (probs.argmax(1) == LABELS).astype(float)
    # A stratified split: the training classes in the test set's proportions (healthy the majority).
    run_id = sweep.run(key, seed, float(correct.mean()), train_counts=3 * np.bincount(LABELS), **factors)
    frame = pd.DataFrame({"image_id": IDS, "label": LABELS})
    for i, cls in enumerate(CLASSES):
        frame[f"prob_{cls}"] = probs[:, i]
    sweep.client.log_text(run_id, frame.to_csv(index=False), "predictions.csv")
    return run_id, correct


# The module's report (a store of synthetic runs, 3.5 s) is built once per worker: its tests share one.
BUILT_ONCE = pytest.mark.xdist_group("report-images-store")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db", root / "artifacts"


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    rng = np.random.default_rng(5)
    sweep = Sweep(store, "images", "sw-img")
    correct = {}
    for seed in range(3):
        for key, skill, factors in (("base", 0.0, {}), ("good", 0.15, {"augmentation": "off"}),
                                    ("flat", None, {"class_weights": "on"})):
            run_id, correct[key, seed] = _log(sweep, key, seed, _probs(rng, skill), **factors)
            if key == "good" and seed == 2:  # training's own record wins over the derived check
                sweep.client.set_tag(run_id, schema.LEARNED, "false")
                sweep.client.set_tag(run_id, schema.LEARNED_REASON, "recorded by training")
    folder = build_report(make_cfg(store, "images", tmp_path_factory.mktemp("reports"),
                                   "report.log_to_mlflow=false"))
    return folder, correct


def _matrix(correct, key):
    return pd.DataFrame({s: correct[key, s] * 100 for s in range(3)}, index=IDS).T


@pytest.mark.slow
@BUILT_ONCE
def test_learned_flags_count_and_warn_at_the_top(report):
    folder, _ = report
    table = pd.read_csv(folder / "run_table.csv").set_index("config_key")
    assert table["n_not_learned"].to_dict() == {"base": 0, "good": 1, "flat": 3}
    runs = pd.read_csv(folder / "runs.csv").set_index(["config_key", "seed"])
    assert runs.loc[("good", 2), "learned_source"] == "recorded"
    assert runs.loc[("flat", 0), "learned_source"] == "derived"
    assert runs.loc[("flat", 0), "top_prediction_share"] == 1.0
    assert "predicts healthy for 100% of test images" in runs.loc[("flat", 0), "learned_reason"]
    # the report's first section, before the verdicts and every table
    top = (folder / "report.md").read_text().split("## Warnings\n\n")[1].split("## Verdicts")[0]
    assert top.startswith("- **Warning:** 4 of 9 runs did not learn: ")
    first = top.split("\n")[0]
    assert "their accuracy measures the class mix, not the configuration" in first
    assert "augmentation=off seed 2 (recorded by training)" in first
    assert "class_weights=on seeds 0, 1, 2 (predicts healthy for 100% of test images)" in first


@pytest.mark.slow  # over 2.5 s: not in the inner loop
@BUILT_ONCE
def test_total_intervals_equal_the_statistics_on_the_predictions(report):
    folder, correct = report
    table = pd.read_csv(folder / "run_table.csv").set_index("config_key")
    base = _matrix(correct, "base")
    ci = intervals.total_interval(base)
    assert (table.loc["base", "ci_total_low"], table.loc["base", "ci_total_high"]) == pytest.approx(
        (ci.low, ci.high))
    # Consistent per-image difficulty: the 200 test images add about as much SE as the seeds, and
    # the total interval is never narrower than the seed-only one.
    assert ci.se_image > 1.5
    assert ci.high - ci.low >= table.loc["base", "test_accuracy_t_high"] - table.loc["base", "test_accuracy_t_low"]
    assert table.loc["base", "se_image"] == pytest.approx(ci.se_image)
    for key in ("good", "flat"):
        diff = intervals.total_difference(_matrix(correct, key), base)
        row = table.loc[key]
        assert (row["delta_ci_total_low"], row["delta_ci_total_high"]) == pytest.approx((diff.low, diff.high))
        assert row["p_total"] == pytest.approx(diff.pvalue)
    assert table["p_total_holm"].iloc[1:].to_numpy() == pytest.approx(
        intervals.holm(table["p_total"].iloc[1:].to_numpy()))
    for metric in ("test_balanced_accuracy", "test_roc_auc_ovr", "test_ece"):
        assert np.isfinite(table.loc["base", f"{metric}_ci_total_low"]), metric
    columns = list(table.columns)
    assert columns.index("ci_total_low") == columns.index("test_accuracy_boot_high") + 1
    text = (folder / "report.md").read_text()
    assert "95% CI over seeds (t)" in text and "95% CI over seeds + test images" in text
    assert "Distinguishable from seed and test-sample noise" in text or \
        "Not distinguishable from seed and test-sample noise" in text
    assert "need ≥ 5 seeds per side" in text  # P(improvement) and bootstrap: 3 seeds only


@pytest.mark.slow  # over 2.5 s: not in the inner loop
@BUILT_ONCE
def test_mcnemar_variance_and_references(report):
    folder, correct = report
    mc = pd.read_csv(folder / "mcnemar.csv")
    assert len(mc) == 6  # 2 configurations x 3 seeds
    row = mc[(mc["config_key"] == "flat") & (mc["seed"] == 1)].iloc[0]
    a, b, p = intervals.mcnemar_exact(correct["flat", 1].astype(bool), correct["base", 1].astype(bool))
    assert (row["only_config_right"], row["only_baseline_right"], row["p_exact"]) == (a, b, pytest.approx(p))
    variance = pd.read_csv(folder / "variance.csv").set_index("quantity").iloc[:, 0]
    split = intervals.variance_split(_matrix(correct, "base"))
    assert variance.iloc[0] == pytest.approx(split.seed_sd)
    assert variance.iloc[1] == pytest.approx(split.test_sample_sd)
    acc = correct["base", 0].mean()
    assert split.test_sample_sd == pytest.approx(100 * math.sqrt(acc * (1 - acc) / N_IMAGES), rel=0.05)
    text = (folder / "report.md").read_text()
    assert "## Variance decomposition (baseline)" in text and "Where the uncertainty comes from" in text
    assert "## Image-level comparisons (exact McNemar, per seed pair)" in text
    # 200 images: the test-sample SE of Δ alone is ~4 pp, so 1 pp is out of reach of seeds.
    assert "**Detecting 1 pp:** no number of seeds reaches it" in text
    floor = pd.read_csv(folder / "power_floor.csv")
    assert floor.loc[0, "seeds_needed"] == math.inf and floor.loc[0, "images_needed"] > N_IMAGES
    refs = pd.read_csv(folder / "references.csv").set_index("config")
    assert refs.loc["reference: majority class (healthy)", "test_accuracy_mean"] == pytest.approx(40.0)
    assert refs.loc["reference: chance (1/4)", "test_accuracy_mean"] == pytest.approx(25.0)
    assert "| reference: majority class (healthy)" in text and "| reference: chance (1/4)" in text


@pytest.mark.slow
@BUILT_ONCE
def test_report_metric_chooses_the_primary_metric(report, store, tmp_path):
    folder, _ = report
    ece = build_report(make_cfg(store, "images", tmp_path, "report.metric=test_ece",
                                "report.log_to_mlflow=false"))
    table = pd.read_csv(ece / "run_table.csv").set_index("config_key")
    runs = pd.read_csv(folder / "runs.csv")
    base = runs[runs["config_key"] == "base"]["test_ece"] * 100
    assert table.loc["base", "test_ece_mean"] == pytest.approx(base.mean())
    assert table.loc["base", "ci_total_low"] < base.mean() < table.loc["base", "ci_total_high"]
    # Accuracy is now a secondary column with its own interval over seeds + test images.
    acc = pd.read_csv(folder / "run_table.csv").set_index("config_key")
    assert table.loc["base", "test_accuracy_ci_total_low"] == pytest.approx(acc.loc["base", "ci_total_low"])
    assert "## Run table (test ece)" in (ece / "report.md").read_text()


def test_plots_take_a_degenerate_interval_a_rounding_off_its_centre(tmp_path):
    """Every seed alike on every image: the interval is one point, computed apart from the mean
    (predictions against logged metrics) and 1e-14 off it. Both plots draw it (seen in a tiny sweep,
    where matplotlib refused the negative error-bar length and the report was not built)."""
    from xray_ablate.report.render import plots
    from xray_ablate.report.tables import Settings

    mean = 100 * 2 / 7
    table = pd.DataFrame({"config": ["baseline", "raw"], "config_key": ["a", "b"], "n_not_learned": [0, 0],
                          "test_accuracy_mean": [mean, mean], "test_accuracy_sd": [0.0, 0.0],
                          "ci_total_low": [mean + 1e-14] * 2, "ci_total_high": [mean - 1e-14] * 2,
                          "test_accuracy_t_low": [mean] * 2, "test_accuracy_t_high": [mean] * 2,
                          "delta": [0.0, 0.0], "delta_low": [0.0, 0.0], "delta_high": [0.0, 0.0],
                          "delta_ci_total_low": [1e-14] * 2, "delta_ci_total_high": [-1e-14] * 2})
    runs = pd.DataFrame({"config_key": ["a", "a", "b", "b"], "test_accuracy": [2 / 7] * 4, "learned": [True] * 4})
    assert plots.points_plot(runs, table, Settings(), tmp_path / "points.png").stat().st_size > 0
    assert plots.forest_plot(table, Settings(), tmp_path / "forest.png").stat().st_size > 0


@pytest.mark.parametrize("shares", [(0.5, 0.3, 0.0, 0.2), (0.35, 0.2, 0.15, 0.3), (0.0, 0.5, 0.3, 0.2)],
                         ids=["no covid", "all four", "no majority-class image"])
def test_the_reference_rows_are_what_their_predictors_score(shares):
    """Chance and majority rows against the predictors themselves, scored by the runs' own metric
    code: uniform guesses over the 4 classes recall 1/4 of each class the test split holds, so
    their balanced accuracy is 25 % with a class missing too (it was 1/3); the majority class
    (from training counts) recalls its own images only."""
    from xray_ablate.evaluation import classification_metrics
    from xray_ablate.report.images import references

    test = pd.Series(shares, index=list(CLASSES))
    train = pd.DataFrame({f"n_train_{c}": [n] for c, n in zip(CLASSES, (50, 30, 20, 5), strict=True)})
    rows = references(test, train).set_index("config")
    labels = np.repeat(np.arange(len(CLASSES)), (test.to_numpy() * 2000).round().astype(int))
    rng = np.random.default_rng(0)
    one_hot = np.eye(len(CLASSES))
    guessed = np.mean([classification_metrics(labels, one_hot[rng.integers(0, len(CLASSES), len(labels))],
                                              "test")["test_balanced_accuracy"] for _ in range(50)])
    majority = classification_metrics(labels, one_hot[np.zeros(len(labels), int)], "test")
    assert rows.loc["reference: chance (1/4)", "test_balanced_accuracy"] == pytest.approx(guessed, abs=0.01)
    assert rows.loc["reference: majority class (bacterial)", "test_balanced_accuracy"] == pytest.approx(
        majority["test_balanced_accuracy"])
    assert rows.loc["reference: majority class (bacterial)", "test_accuracy"] == pytest.approx(
        majority["test_accuracy"])


@pytest.mark.slow
@BUILT_ONCE
def test_a_row_says_so_where_any_interval_it_shows_was_cut(report):
    """A percentage's interval is shown cut to [0, 100] %, and its row's note says so, for a
    secondary metric's interval too: it did for the main metric only, so this store's ECE interval
    over seeds + test images, whose low end is below 0, was shown from 0.0 without a word."""
    from xray_ablate.report.render.tables import CLIPPED, display_run_table
    from xray_ablate.report.tables import Settings

    table = pd.read_csv(report[0] / "run_table.csv")
    main = ["test_accuracy_t_low", "test_accuracy_t_high", "ci_total_low", "ci_total_high"]
    shown = main + [f"{m}_ci_total_{end}" for m in ("test_balanced_accuracy", "test_roc_auc_ovr", "test_ece")
                    for end in ("low", "high")]
    cut = (table[shown].lt(0) | table[shown].gt(100)).any(axis=1)
    assert cut.any() and not (table[main].lt(0) | table[main].gt(100)).any(axis=1)[cut].all()
    notes = display_run_table(table, Settings())["note"]
    assert notes.str.contains(CLIPPED, regex=False).tolist() == cut.tolist()

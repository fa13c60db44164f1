"""The report end to end, on runs inserted into a temporary MLflow store."""

from __future__ import annotations

import base64
import itertools
import math
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from conftest import chromium, invoke_report
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats as st
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from xray_ablate.config.choices import CLASSES
from xray_ablate.errors import UserError
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.report import build_report
from xray_ablate.tracking import schema
from xray_ablate.tracking.store import connect

BASE = {"dataset": "masked", "class_weights": "off", "normalization": "on", "augmentation": "on",
        "brisque_filter": "off", "backbone": "cnn16"}
_clock = itertools.count(1_700_000_000_000, 1000)  # start times, one second apart


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db", root / "artifacts"


def make_cfg(store, experiment: str, reports_dir, *overrides: str):
    uri, artifacts = store
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[
            f"tracking.uri={uri}", f"tracking.experiment={experiment}",
            f"tracking.artifact_root={artifacts}", f"paths.reports_dir={reports_dir}", *overrides])


TRAIN_COUNTS = (20, 20, 40, 10)  # training images per class: covid is the training majority


class Sweep:
    """Writes runs the way the training and sweep code log them."""

    def __init__(self, store, experiment: str, sweep_id: str = "sw1", exp_tag: str = "none",
                 baseline: dict[str, str] | None = None):
        uri, artifacts = store
        self.exp_id = connect(uri, experiment, artifacts)
        self.client = MlflowClient()
        self.sweep_id, self.exp_tag = sweep_id, exp_tag
        parent = self.client.create_run(self.exp_id, start_time=next(_clock), tags={
            schema.KIND: "sweep", schema.SWEEP_ID: sweep_id, schema.EXPERIMENT: exp_tag})
        self.parent = parent.info.run_id
        if baseline:  # as sweep/callback.py records the report's baseline on the parent run
            self.client.log_batch(self.parent, params=[
                Param(f"report.baseline.{f}", v) for f, v in baseline.items()])

    def run(self, key: str, seed: int, acc: float, *, status="FINISHED", split_hash="h1",
            fingerprint="f1", split_mode="fixed", start_time=None, code_version="test",
            device: str | None = None, fallbacks: int | None = None, train_counts=TRAIN_COUNTS,
            audit_images: int | None = None, audited: bool = True, n_test: int = 60, **factors) -> str:
        levels = {**BASE, **factors}
        tags = {schema.KIND: "train", schema.SEED: str(seed), schema.CONFIG_KEY: key,
                schema.SWEEP_ID: self.sweep_id, schema.SWEEP_MEMBER.format(self.sweep_id): "1",
                schema.EXPERIMENT: self.exp_tag,
                schema.SPLIT_HASH: split_hash, schema.SPLIT_MODE: split_mode,
                schema.FINGERPRINT: fingerprint, schema.CODE_VERSION: code_version,
                schema.PARENT_RUN: self.parent, **({"xray.device": device} if device else {}),
                **{schema.FACTOR_TAG.format(f): v for f, v in levels.items()}}
        run_id = self.client.create_run(self.exp_id, start_time=start_time or next(_clock),
                                        tags=tags).info.run_id
        finals = {}
        for p, shift in (("test", 0.0), ("val", 0.01)):
            finals |= {f"{p}_accuracy": acc + shift, f"{p}_balanced_accuracy": acc - 0.02,
                       f"{p}_macro_precision": acc - 0.01, f"{p}_macro_recall": acc - 0.02,
                       f"{p}_macro_f1": acc - 0.03, f"{p}_roc_auc_ovr": 0.9, f"{p}_loss": 1 - acc}
            for i, cls in enumerate(CLASSES):
                finals |= {f"{p}_precision_{cls}": acc, f"{p}_recall_{cls}": acc,
                           f"{p}_f1_{cls}": acc - 0.1 * (cls == "viral") + 0.001 * i,
                           f"{p}_support_{cls}": 10.0}
        if fallbacks is not None:
            finals["data_patient_fallbacks"] = float(fallbacks)
        now = next(_clock)
        metrics = [Metric(k, v, now, 0) for k, v in finals.items()]
        for epoch in (1, 2, 3):
            metrics += [Metric("val_acc", acc * epoch / 3, now, epoch),
                        Metric("val_loss", 2.0 / epoch, now, epoch),
                        Metric("train_acc", acc, now, epoch), Metric("train_loss", 1.0, now, epoch)]
        params = [Param("seed", str(seed)), Param("split.seed", "0"), Param("n_test", str(n_test)),
                  Param("dataset.mode", levels["dataset"]),
                  *(Param(f"n_train_{c}", str(n)) for c, n in zip(CLASSES, train_counts, strict=True))]
        if audit_images is not None:  # as record_config logs them; audited: and the audit's metrics
            params += [Param("audit.enabled", "True"), Param("audit.images", str(audit_images)),
                       Param("audit.seed", "0"), Param("audit.border", "0.08"), Param("audit.layer", "None"),
                       Param("audit.methods", '["gradcam", "inputxgrad"]')]
            metrics += [Metric("audit_lung_area", 0.4, now, 0),  # audit_images: how many it audited
                        Metric("audit_images", min(audit_images, n_test), now, 0)] if audited else []
        self.client.log_batch(run_id, metrics=metrics, params=params)
        if status != "RUNNING":
            self.client.set_terminated(run_id, status)
        return run_id


# The tiny sweep: dataset x augmentation crossed with 3 paired seeds, class weights on with other
# seeds (Welch), vgg16 with one seed, plus duplicates, failures and incomparable runs.
ACC = {
    "base": ({}, [0.80, 0.83, 0.81], [0, 1, 2]),
    "augoff": ({"augmentation": "off"}, [0.76, 0.795, 0.77], [0, 1, 2]),
    "raw": ({"dataset": "raw"}, [0.78, 0.80, 0.80], [0, 1, 2]),
    "rawoff": ({"dataset": "raw", "augmentation": "off"}, [0.74, 0.78, 0.75], [0, 1, 2]),
    "cw": ({"class_weights": "on"}, [0.82, 0.84, 0.80], [5, 6, 7]),
    "vgg": ({"backbone": "vgg16"}, [0.85], [0]),
}


@pytest.fixture(scope="module")
def tiny(store, tmp_path_factory):
    sweep = Sweep(store, "tiny", "sw-tiny", exp_tag="tinyexp")
    sweep.run("base", 0, 0.50, start_time=next(_clock) - 10**8)  # older duplicate of seed 0
    for key, (factors, accs, seeds) in ACC.items():
        for seed, acc in zip(seeds, accs, strict=True):
            sweep.run(key, seed, acc, **factors)
    sweep.run("base", 3, 0.99, status="FAILED")
    sweep.run("augoff", 3, 0.10, status="RUNNING")
    sweep.run("augoff", 4, 0.70, fingerprint="other-data", augmentation="off")
    sweep.run("oddsplit", 0, 0.90, split_hash="h2", normalization="off")
    sweep.run("oddsplit", 1, 0.91, split_hash="h2", normalization="off")
    reports = tmp_path_factory.mktemp("reports")
    folder = build_report(make_cfg(store, "tiny", reports))
    return sweep, folder


def _values(key):
    return np.array(ACC[key][1]) * 100


@pytest.mark.slow
def test_run_table_rows_and_statistics_equal_scipy(tiny):
    _, folder = tiny
    # Reference rows: chance and always predicting the training split's majority class (covid,
    # TRAIN_COUNTS), right on its 10 of the 40 test images.
    refs = pd.read_csv(folder / "references.csv").set_index("config")["test_accuracy_mean"]
    assert refs.to_dict() == {"reference: chance (1/4)": 25.0,
                              "reference: majority class (covid)": 25.0}
    table = pd.read_csv(folder / "run_table.csv").set_index("config_key")
    assert table.index.tolist() == ["base", "augoff", "vgg", "cw", "raw", "rawoff"]
    assert table.loc["base", "config"] == "baseline"
    assert table.loc["augoff", "config"] == "augmentation=off"
    assert table.loc["rawoff", "config"] == "dataset=raw, augmentation=off"
    assert table["n"].to_dict() == {"base": 3, "augoff": 3, "cw": 3, "raw": 3, "rawoff": 3,
                                    "vgg": 1}
    base = _values("base")  # the older duplicate (0.50) was replaced
    row = table.loc["base"]
    assert row["test_accuracy_mean"] == pytest.approx(base.mean())
    assert row["test_accuracy_sd"] == pytest.approx(base.std(ddof=1))
    assert (row["test_accuracy_t_low"], row["test_accuracy_t_high"]) == pytest.approx(
        st.t.interval(0.95, 2, loc=base.mean(), scale=st.sem(base)))
    boot = st.bootstrap((base,), np.mean, method="percentile", n_resamples=9999,
                        rng=np.random.default_rng(0)).confidence_interval
    assert (row["test_accuracy_boot_low"], row["test_accuracy_boot_high"]) == pytest.approx(
        (boot.low, boot.high))
    assert row["test_macro_f1_mean"] == pytest.approx(base.mean() - 3)
    assert row["test_f1_viral_mean"] == pytest.approx(base.mean() - 10 + 0.1)

    pvals = {}
    for key in ("augoff", "raw", "rawoff"):
        ref = st.ttest_rel(_values(key), base)
        r = table.loc[key]
        assert r["test"] == "paired t" and r["n_pairs"] == 3
        assert r["delta"] == pytest.approx((_values(key) - base).mean())
        assert (r["delta_low"], r["delta_high"]) == pytest.approx(tuple(ref.confidence_interval()))
        assert r["p"] == pytest.approx(ref.pvalue)
        pvals[key] = ref.pvalue
    welch = st.ttest_ind(_values("cw"), base, equal_var=False)
    assert table.loc["cw", "test"] == "Welch t"
    assert table.loc["cw", "p"] == pytest.approx(welch.pvalue)
    pvals["cw"] = welch.pvalue
    keys = list(pvals)
    holm = multipletests([pvals[k] for k in keys], method="holm")[1]
    assert table.loc[keys, "p_holm"].to_numpy() == pytest.approx(holm)
    # P(improvement): share of all (config run, baseline run) pairs the config wins.
    cw, b = _values("cw"), base
    wins = np.mean([(x > y) + 0.5 * (x == y) for x in cw for y in b])
    assert table.loc["cw", "p_improvement"] == pytest.approx(wins)
    # n < 2: no CI, no test, and the table says why.
    vgg = table.loc["vgg"]
    assert math.isnan(vgg["test_accuracy_t_low"]) and math.isnan(vgg["delta_low"])
    assert math.isnan(vgg["p"]) and "n = 1" in vgg["note"]


@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_dedup_and_integrity_in_the_report(tiny):
    _, folder = tiny
    runs = pd.read_csv(folder / "runs.csv")
    assert len(runs) == 16 and (runs["status"] == "FINISHED").all()
    assert not runs.duplicated(["config_key", "seed"]).any()
    assert 0.5 not in runs["test_accuracy"].tolist()
    left = pd.read_csv(folder / "excluded.csv").set_index("config_key")
    assert left.loc["oddsplit", "n_runs"] == 2 and "split manifest h2" in left.loc["oddsplit", "reason"]
    assert "fingerprint other-data" in left.loc["augoff", "reason"]
    text = (folder / "report.md").read_text()
    assert "1 FAILED" in text and "1 RUNNING" in text and "1 older duplicate" in text
    assert "oddsplit"[:8] in text and "Runs left out" in text


@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_power_model_and_factorial_tables(tiny):
    _, folder = tiny
    power = pd.read_csv(folder / "power.csv").set_index("quantity")
    # Unpaired: the residual sd of "accuracy ~ configuration" over every run (vgg's single run
    # adds no df), not the baseline's sd alone.
    runs = pd.DataFrame([{"k": k, "y": v} for k in ACC for v in _values(k)])
    fit = ols("y ~ C(k)", runs).fit()
    sd = math.sqrt(fit.scale)
    assert sd != pytest.approx(_values("base").std(ddof=1))
    assert power.loc["sd used (pp)", "unpaired"] == pytest.approx(sd)
    assert power.loc["df of the sd", "unpaired"] == fit.df_resid == 10
    assert power.loc["configurations pooled", "unpaired"] == 5
    d = TTestIndPower().solve_power(nobs1=3, alpha=0.05, power=0.8)
    mdd = "minimum detectable difference at n = 3 (pp)"
    assert power.loc[mdd, "unpaired"] == pytest.approx(d * sd)
    n1 = TTestIndPower().solve_power(effect_size=1 / sd, alpha=0.05, power=0.8)
    assert power.loc["seeds needed to detect 1 pp", "unpaired"] == math.ceil(n1)
    # Paired: the pooled sd of the seed-matched differences of the paired rows (not cw: Welch).
    diffs = pd.DataFrame([{"k": k, "d": v} for k in ("augoff", "raw", "rawoff")
                          for v in _values(k) - _values("base")])
    pair_fit = ols("d ~ C(k)", diffs).fit()
    pair_sd = math.sqrt(pair_fit.scale)
    assert power.loc["sd used (pp)", "paired"] == pytest.approx(pair_sd)
    assert power.loc["df of the sd", "paired"] == pair_fit.df_resid == 6
    d = TTestPower().solve_power(nobs=3, alpha=0.05, power=0.8)
    assert power.loc[mdd, "paired"] == pytest.approx(d * pair_sd)
    # Δ mixes paired and Welch rows: the summary quotes both figures, each named.
    text = (folder / "report.md").read_text()
    assert f"about {d * pair_sd:.2f} pp" in text and f"{pair_sd:.2f} pp, pooled over 3" in text
    assert "**Power (paired):**" in text and "**Power (unpaired):**" in text

    model = pd.read_csv(folder / "model_table.csv")
    assert list(dict.fromkeys(model["backbone"])) == ["cnn16", "vgg16"]
    acc = model[model["metric"] == "accuracy"].set_index("backbone")
    assert acc.loc["cnn16", "mean"] == pytest.approx(_values("base").mean())
    assert acc.loc["vgg16", "mean"] == pytest.approx(85.0) and acc.loc["vgg16", "n"] == 1
    assert {"macro precision", "macro recall", "F1 viral"} <= set(model["metric"])

    # dataset x augmentation is the crossed design (class_weights and backbone held at baseline).
    main = pd.read_csv(folder / "main_effects.csv").set_index("factor")
    assert set(main.index) == {"dataset", "augmentation"}
    cells = {k: _values(k).mean() for k in ("base", "augoff", "raw", "rawoff")}
    aug = ((cells["base"] - cells["augoff"]) + (cells["raw"] - cells["rawoff"])) / 2
    masked = ((cells["base"] - cells["raw"]) + (cells["augoff"] - cells["rawoff"])) / 2
    assert main.loc["augmentation", "estimate"] == pytest.approx(aug)
    assert main.loc["dataset", "estimate"] == pytest.approx(masked)
    assert main.loc["dataset", "level"] == "masked" and main.loc["dataset", "reference"] == "raw"
    data = pd.DataFrame([{"dataset": f.get("dataset", "masked"),
                          "augmentation": f.get("augmentation", "on"), "y": v}
                         for k in cells for f, v in [(ACC[k][0], x) for x in _values(k)]])
    ref = anova_lm(ols("y ~ C(dataset, Sum) * C(augmentation, Sum)", data).fit(), typ=3)
    anova = pd.read_csv(folder / "anova.csv").set_index("term")
    assert anova.loc["dataset", "F"] == pytest.approx(ref.loc["C(dataset, Sum)", "F"])
    assert anova.loc["dataset:augmentation", "p"] == pytest.approx(
        ref.loc["C(dataset, Sum):C(augmentation, Sum)", "PR(>F)"])
    assert main.loc["dataset", "p"] == pytest.approx(ref.loc["C(dataset, Sum)", "PR(>F)"])
    inter = pd.read_csv(folder / "interactions.csv")
    assert len(inter) == 1
    dd = (cells["base"] - cells["augoff"]) - (cells["raw"] - cells["rawoff"])
    assert inter.loc[0, "estimate"] == pytest.approx(dd)


@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_every_output_exists_and_is_logged_to_mlflow(tiny):
    sweep, folder = tiny
    expected = {"report.md", "runs.csv", "forest.png", "accuracy_points.png",
                "learning_curves.png"} | {f"{stem}.{ext}" for ext in ("csv", "tex") for stem in (
                    "run_table", "power", "excluded", "model_table", "main_effects",
                    "interactions", "anova")}
    assert expected <= {p.name for p in folder.iterdir()}
    assert all((folder / name).stat().st_size > 0 for name in expected)
    text = (folder / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"forest.png", "accuracy_points.png", "learning_curves.png"} <= set(images)
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (folder / link).is_file(), link
    assert "Run-to-run variability" in text and "Distinguishable from seed noise" in text
    methods = text.split("## Methods")[1]
    assert "training-seed variability on that one test set" in methods
    assert "`predictions.csv` (image_id, label, prob_bacterial" in methods
    assert "zero width means every seed gave the same value" in methods
    assert "## Warnings" not in text  # one code version, one device, no patient-id fallback
    assert "\\begin{tabular}" in (folder / "run_table.tex").read_text()
    assert folder.name == "tinyexp"  # the experiment name, else the sweep id

    client = MlflowClient()
    reports = client.search_runs([sweep.exp_id], "tags.`xray.kind` = 'report'")
    assert len(reports) == 1
    run = reports[0]
    assert run.data.tags[schema.SWEEP_ID] == "sw-tiny"
    assert run.data.tags[schema.PARENT_RUN] == sweep.parent
    assert run.data.tags[schema.EXPERIMENT] == "tinyexp"
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert expected <= logged


@pytest.mark.slow
def test_selection_latest_sweep_experiment_name_and_fallback_baseline(store, tmp_path):
    old = Sweep(store, "select", "old-sweep", exp_tag="demo")
    for seed, acc in enumerate([0.7, 0.72]):
        old.run("k1", seed, acc, backbone="vgg16")
    new = Sweep(store, "select", "new-sweep")
    for seed, acc in enumerate([0.75, 0.74, 0.76]):
        new.run("k2", seed, acc, backbone="vgg19")
    new.run("k3", 0, 0.7, backbone="resnet50")
    off = "report.log_to_mlflow=false"
    # Default: the newest sweep; no run matches the cnn16 baseline: most seeds (k2) instead.
    folder = build_report(make_cfg(store, "select", tmp_path, off))
    table = pd.read_csv(folder / "run_table.csv")
    assert folder.name == "new-sweep" and table["config_key"].tolist() == ["k2", "k3"]
    assert "No run matches report.baseline" in (folder / "report.md").read_text()
    # By experiment name (here the old sweep only), with a chosen baseline.
    folder = build_report(make_cfg(store, "select", tmp_path, "report.experiment_name=demo",
                                   "report.baseline.backbone=vgg16", off))
    table = pd.read_csv(folder / "run_table.csv")
    assert folder.name == "demo" and table["config_key"].tolist() == ["k1"]
    assert "nothing to compare" in (folder / "report.md").read_text()
    # An explicit sweep id and a report name; a missing MLflow experiment falls back to the others.
    folder = build_report(make_cfg(store, "nonexistent", tmp_path, "report.sweep_id=new-sweep",
                                   "report.name=mine", off))
    assert folder.name == "mine"
    assert pd.read_csv(folder / "run_table.csv")["config_key"].tolist() == ["k2", "k3"]
    assert "'nonexistent' does not exist" in (folder / "report.md").read_text()
    # The same configuration and seed in two sweeps of one experiment: the latest run counts.
    again = Sweep(store, "select", "newer-sweep", exp_tag="demo")
    again.run("k1", 0, 0.9, backbone="vgg16")
    folder = build_report(make_cfg(store, "select", tmp_path, "report.experiment_name=demo",
                                   "report.baseline.backbone=vgg16", off))
    runs = pd.read_csv(folder / "runs.csv").set_index("seed")
    assert runs.loc[0, "test_accuracy"] == pytest.approx(0.9) and len(runs) == 2
    assert runs.loc[1, "sweep_id"] == "old-sweep"


@pytest.mark.slow
def test_no_seed_replication_and_single_configurations_give_a_report(store, tmp_path):
    # `-m experiment=demo repeats=1`: dataset x class weights crossed, one run per cell. The
    # two-way ANOVA has no residual df (it used to raise "array must not contain infs or NaNs").
    sweep = Sweep(store, "unreplicated", "unrep")
    for key, acc, factors in [("base", 0.80, {}), ("raw", 0.76, {"dataset": "raw"}),
                              ("cw", 0.81, {"class_weights": "on"}),
                              ("rawcw", 0.78, {"dataset": "raw", "class_weights": "on"})]:
        sweep.run(key, 0, acc, **factors)
    folder = build_report(make_cfg(store, "unreplicated", tmp_path, "report.log_to_mlflow=false"))
    anova = pd.read_csv(folder / "anova.csv").set_index("term")
    assert anova.index.tolist() == ["dataset", "class_weights", "dataset:class_weights", "Residual"]
    assert anova["F"].isna().all() and anova["p"].isna().all()
    assert anova.loc["dataset", "sum_sq"] == pytest.approx(((80 + 81) / 2 - (76 + 78) / 2) ** 2)
    assert anova.loc["Residual", "df"] == 0
    main = pd.read_csv(folder / "main_effects.csv").set_index("factor")
    assert main.loc["dataset", "estimate"] == pytest.approx(3.5) and main["p"].isna().all()
    text = (folder / "report.md").read_text()
    assert "No seed replication" in text and "no residual degrees of freedom" in text
    assert "not testable, each factor combination has a single run" in text
    assert "Run-to-run variability:** unknown" in text and "**Power" not in text
    power = pd.read_csv(folder / "power.csv").set_index("quantity")
    assert power.loc["df of the sd", "unpaired"] == 0 and power["paired"].iloc[3:].isna().all()

    # One configuration with one run, then with three seeds near 100 % (t-interval > 100 %).
    single = Sweep(store, "single", "one-run")
    single.run("only", 0, 0.9)
    folder = build_report(make_cfg(store, "single", tmp_path, "report.log_to_mlflow=false"))
    assert "Only one configuration" in (folder / "report.md").read_text()
    three = Sweep(store, "single", "three-seeds")
    for seed, acc in enumerate([0.99, 1.0, 0.97]):
        three.run("only", seed, acc)
    folder = build_report(make_cfg(store, "single", tmp_path, "report.log_to_mlflow=false"))
    table = pd.read_csv(folder / "run_table.csv")
    assert len(table) == 1 and table.loc[0, "test_accuracy_t_high"] > 100  # the CSV: unclipped
    text = (folder / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| baseline"))
    low = st.t.interval(0.95, 2, loc=table.loc[0, "test_accuracy_mean"],
                        scale=st.sem([99.0, 100.0, 97.0]))[0]
    assert f"[{low:.1f}, 100.0]" in row and "CI clipped to [0, 100] %" in row
    bounds = [float(b) for pair in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", row) for b in pair]
    assert bounds and all(0 <= b <= 100 for b in bounds)  # every interval of a percentage, shown cut
    assert "**Power (unpaired):** with 3 seeds" in text and "for planning" in text


@pytest.mark.slow
def test_baseline_recorded_by_the_sweep_and_mixing_warnings(store, tmp_path):
    # `make report` after `make run`: no experiment config loaded, so report.baseline is the base
    # config's (augmentation on), but the demo sweep recorded its own baseline (augmentation off).
    recorded = {**BASE, "augmentation": "off"}
    sweep = Sweep(store, "recorded", "demo-sweep", baseline=recorded)
    for seed in range(2):
        sweep.run("augon", seed, 0.80 + seed / 100, code_version="abc123", device="cpu", audit_images=60)
        sweep.run("augoff", seed, 0.75 + seed / 100, augmentation="off",
                  code_version="def456+dirty", device="cuda:0", fallbacks=3 * seed, audit_images=8)
    # audit on, but a dataset without Lung polygons: not audited, so no setting of its counts
    sweep.run("cw", 0, 0.79, class_weights="on", code_version="abc123", device="cpu", audit_images=200,
              audited=False)
    # audit.images=200 on a 60-image test split audits the 60 that images=60 does: the same audit;
    # so does it on a 61-image split of another seed (split.vary_with_seed): each its whole split
    sweep.run("cw", 1, 0.80, class_weights="on", code_version="abc123", device="cpu", audit_images=200)
    sweep.run("cw", 2, 0.80, class_weights="on", code_version="abc123", device="cpu", audit_images=200,
              n_test=61)
    off = "report.log_to_mlflow=false"
    folder = build_report(make_cfg(store, "recorded", tmp_path, off))
    table = pd.read_csv(folder / "run_table.csv")
    assert table["config_key"].tolist() == ["augoff", "augon", "cw"]
    text = (folder / "report.md").read_text()
    assert "recorded by sweep demo-sweep (params report.baseline.* of its parent run" in text
    assert "augmentation=off, brisque_filter=off" in text.split("## Summary")[0]
    # Warnings: two code versions (one uncommitted), two devices, patient id fallbacks.
    warnings = text.split("## Warnings")[1].split("## Summary")[0]
    assert "2 code versions and uncommitted changes (+dirty): abc123 (5 runs), def456+dirty " \
        "(2 runs)" in warnings
    assert "cpu (5 runs), cuda:0 (2 runs)" in warnings
    assert "1 run(s) used data with images without a patient id (up to 3)" in warnings
    assert "patient leakage" in warnings
    # audited with other settings (two sweeps of one experiment): the audit tables would compare them
    assert ('The runs were audited with different settings: images=8 seed=0 border=0.08 layer=None '
            'methods=["gradcam", "inputxgrad"] (2 runs); images=all seed=0 border=0.08 layer=None '
            'methods=["gradcam", "inputxgrad"] (4 runs).') in warnings
    # An explicit report.baseline beats the recorded one. Without Hydra's command line (here: the
    # compose API) "explicit" means: differs from conf/report/default.yaml; for the CLI see
    # test_cli_writes_a_report.
    folder = build_report(make_cfg(store, "recorded", tmp_path, off,
                                   "report.baseline.class_weights=on"))
    assert pd.read_csv(folder / "run_table.csv")["config_key"].tolist()[0] == "cw"
    assert "report.baseline of the configuration passed in" in (folder / "report.md").read_text()
    # An experiment config's baseline also beats the recorded one.
    folder = build_report(make_cfg(store, "recorded", tmp_path, off, "experiment_name=demo",
                                   "report.sweep_id=demo-sweep"))
    assert pd.read_csv(folder / "run_table.csv")["config_key"].tolist()[0] == "augon"
    assert "report.baseline of experiment config 'demo'" in (folder / "report.md").read_text()


def test_the_report_judges_against_the_adaptive_rounds_baseline(store, tmp_path):
    """backbone=vgg16,vgg19,resnet50 with the default baseline (cnn16): no configuration matches,
    the rounds judge against the first (vgg16, recorded as sweep.baseline), and the report took
    the one with the most seeds, ties to the newest (resnet50): its verdicts, written over the
    parent's tags, were against another configuration than the rounds' and named other claims."""
    sweep = Sweep(store, "rounds", "rounds-sweep")
    sweep.client.log_batch(sweep.parent, params=[Param("sweep.baseline", "vgg16"), Param("sweep.looks", "3")])
    for key, acc in (("vgg16", 0.70), ("vgg19", 0.71), ("resnet50", 0.85)):
        for seed in range(3):
            sweep.run(key, seed, acc + seed / 100, backbone=key)
    folder = build_report(make_cfg(store, "rounds", tmp_path, "report.log_to_mlflow=false"))
    assert pd.read_csv(folder / "run_table.csv")["config_key"].tolist()[0] == "vgg16"
    assert "the adaptive sweep's rounds judged against (vgg16)" in (folder / "report.md").read_text()


def test_only_a_report_judging_as_the_sweep_did_rewrites_its_parents_verdicts(store, tmp_path):
    """The parent run holds the sweep's verdicts as tags and sweep/verdicts.csv. A later report with
    another report.baseline or report.metric wrote its own over them (tags of the same names, the
    metric not named), and a claim no longer judged kept its old tag beside the new table."""
    from xray_ablate.evaluation import PROB_COLUMNS
    from xray_ablate.tracking.reader import csv_artifacts
    from xray_ablate.tracking.verdicts import verdict_tag

    sweep = Sweep(store, "speaks", "speaks-sweep", baseline=BASE)
    sweep.client.log_batch(sweep.parent, params=[Param("report.metric", "test_accuracy")])
    sweep.client.set_tag(sweep.parent, verdict_tag("backbone=vgg16 − baseline"), "better: (an old claim)")
    rng, augoff = np.random.default_rng(0), []
    for seed in range(3):
        for key, acc, factors in (("base", 0.80, {}), ("augoff", 0.70, {"augmentation": "off"})):
            run_id = sweep.run(key, seed, acc, **factors)
            augoff += [run_id] if key == "augoff" else []
            label = rng.integers(0, len(CLASSES), 100)  # per-image predictions: what verdicts are judged on
            pred = np.where(rng.random(100) < acc, label, (label + 1) % len(CLASSES))
            frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(100)], "label": label,
                                  **{c: (pred == j).astype(float) for j, c in enumerate(PROB_COLUMNS)}})
            sweep.client.log_text(run_id, frame.to_csv(index=False), "predictions.csv")

    def parent():
        tags = sweep.client.get_run(sweep.parent).data.tags
        table = csv_artifacts([sweep.parent], "sweep/verdicts.csv")[sweep.parent]
        return {k: v for k, v in tags.items() if k.startswith("verdict.")}, table

    build_report(make_cfg(store, "speaks", tmp_path))  # as the sweep judged: its own verdicts
    tags, table = parent()
    assert set(tags) == {verdict_tag(c) for c in table["claim"]} == {verdict_tag("augmentation=off − baseline")}
    for other in ("report.baseline.augmentation=off", "report.metric=test_balanced_accuracy"):
        folder = build_report(make_cfg(store, "speaks", tmp_path, other))
        assert len(pd.read_csv(folder / "verdicts.csv")), other  # it judged: verdicts it could have written
        again, table_again = parent()
        assert again == tags and table_again.equals(table), other
    # A report judging as the sweep did, with no claim left to judge (the user deleted the runs of
    # every configuration but the baseline): the parent keeps no verdict (they stayed on it).
    for run_id in augoff:
        sweep.client.delete_run(run_id)
    folder = build_report(make_cfg(store, "speaks", tmp_path))
    assert pd.read_csv(folder / "run_table.csv")["config_key"].tolist() == ["base"]
    tags, table = parent()
    assert tags == {} and table.empty


def test_artifacts_are_read_with_one_lookup_per_run_and_only_a_missing_file_is_skipped(tmp_path, monkeypatch,
                                                                                       migrated_store):
    """The report reads a CSV of every run: a run without it is left out, a run whose file is there
    but cannot be read is an error (not a run silently missing from the table), and each run's
    artifact location is looked up once, however many of its files are read."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from xray_ablate.tracking import reader

    uri = f"sqlite:///{migrated_store(tmp_path / 'mlflow.db')}"
    client = MlflowClient(uri)
    experiment = connect(uri, "reads", tmp_path / "artifacts")
    with_file, without = (client.create_run(experiment).info.run_id for _ in range(2))
    for name in ("predictions.csv", "audit/audit.csv"):
        client.log_text(with_file, "image_id,x\n007,1\n", name)
    reader.open_store(uri)
    lookups = []
    monkeypatch.setattr(MlflowClient, "get_run", lambda self, run_id, real=MlflowClient.get_run: (
        lookups.append(run_id), real(self, run_id))[1])
    for name in ("predictions.csv", "audit/audit.csv"):
        found = reader.csv_artifacts([with_file, without], name, dtype={"image_id": str})
        assert list(found) == [with_file] and found[with_file]["image_id"].tolist() == ["007"]
    assert sorted(lookups) == sorted([with_file, without])
    assert reader.copy_artifact(without, "audit/audit.csv", tmp_path / "copy.csv") is None

    def broken(self, artifact_path, dst_path=None):
        raise OSError(f"I/O error reading {artifact_path}")

    monkeypatch.setattr(LocalArtifactRepository, "download_artifacts", broken)
    with pytest.raises(OSError, match="I/O error reading predictions.csv"):
        reader.csv_artifacts([with_file], "predictions.csv")
    assert reader.csv_artifacts([without], "predictions.csv") == {}


def test_loss_metric_keeps_its_unit_and_lower_is_better(store, tmp_path):
    sweep = Sweep(store, "loss", "loss-sweep")
    for seed in range(3):
        sweep.run("base", seed, 0.80 + seed / 100)
        sweep.run("better", seed, 0.85 + seed / 100, augmentation="off")
    folder = build_report(make_cfg(store, "loss", tmp_path, "report.metric=test_loss",
                                   "report.log_to_mlflow=false"))
    table = pd.read_csv(folder / "run_table.csv").set_index("config_key")
    assert table.loc["base", "test_loss_mean"] == pytest.approx(1 - 0.81)
    assert table.loc["better", "delta"] == pytest.approx(-0.05)
    assert table.loc["better", "p_improvement"] == pytest.approx(1.0)


def test_user_errors(store, tmp_path):
    Sweep(store, "errors", "only-sweep")
    with pytest.raises(UserError, match="no training runs of sweep 'nope'.*only-sweep"):
        build_report(make_cfg(store, "errors", tmp_path, "report.sweep_id=nope"))
    with pytest.raises(UserError, match="no training runs of sweep 'only-sweep'"):
        build_report(make_cfg(store, "errors", tmp_path))
    with pytest.raises(UserError, match="no training runs of experiment 'ghost'"):
        build_report(make_cfg(store, "errors", tmp_path, "report.experiment_name=ghost"))
    s = Sweep(store, "errors2", "s")
    s.run("k", 0, 0.8)
    with pytest.raises(UserError, match="unknown factor"):
        build_report(make_cfg(store, "errors2", tmp_path, "+report.baseline.colour=red"))
    with pytest.raises(UserError, match="no FINISHED training run with test_nothing"):
        build_report(make_cfg(store, "errors2", tmp_path, "report.metric=test_nothing"))


def test_cli_prints_error_and_exits_2_without_traceback(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "none" / "mlflow.db"
    with pytest.raises(SystemExit) as exit_info:
        invoke_report(monkeypatch, f"tracking.uri=sqlite:///{missing}", f"paths.reports_dir={tmp_path}",
              f"hydra.run.dir={tmp_path}/hydra")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MLflow store") and "Traceback" not in err
    assert not missing.exists()


@pytest.mark.parametrize("override, message", [
    ("report.nope=1", "error: Could not override 'report.nope'.; Key 'nope' not in 'ReportConfig'"),
    ("+report.alpah=0.1", "error: report.alpah is not a setting; did you mean report.alpha?"),
    ("report.alpha=2", "error: report.alpha must be in (0, 1), not 2.0"),
    ("report.detect=[2,-1]", "error: report.detect must be differences > 0 (pp), not [2.0, -1.0]"),  # "needed: ."
])
def test_cli_bad_setting_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, override, message):
    """Checked before Hydra starts, as training's command line is (Hydra's own error: exit 1, six lines)."""
    with pytest.raises(SystemExit) as exit_info:
        invoke_report(monkeypatch, override, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == message.strip() or err.strip().startswith(message), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_cli_writes_a_report(store, tmp_path, monkeypatch, capsys):
    sweep = Sweep(store, "cli", "cli-sweep", baseline={**BASE, "dataset": "raw"})
    for seed in range(2):
        sweep.run("base", seed, 0.8 + seed / 100)
        sweep.run("raw", seed, 0.78 + seed / 50, dataset="raw")
    args = [f"tracking.uri={store[0]}", "tracking.experiment=cli", f"paths.reports_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/hydra", "report.log_to_mlflow=false"]
    invoke_report(monkeypatch, *args)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(tmp_path / "cli-sweep" / "report.md")
    assert (tmp_path / "cli-sweep" / "forest.png").is_file()
    table = pd.read_csv(tmp_path / "cli-sweep" / "run_table.csv")
    assert table["config_key"].tolist() == ["raw", "base"]  # the baseline the sweep recorded
    # A command-line override wins, even one equal to conf/report/default.yaml.
    invoke_report(monkeypatch, *args, "report.baseline.dataset=masked")
    table = pd.read_csv(tmp_path / "cli-sweep" / "run_table.csv")
    assert table["config_key"].tolist() == ["base", "raw"]
    text = (tmp_path / "cli-sweep" / "report.md").read_text()
    assert "from report.baseline set on the command line" in text
    # `python -m` finds the entry point (cheap: --help exits before reading any run).
    res = subprocess.run([sys.executable, "-m", "xray_ablate.report", "--help"], check=False,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "report" in res.stdout


class _Dom(HTMLParser):
    """The tables (rows of cell texts), image sources and heading ids of a DOM."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_report_html_in_a_browser(tiny, tmp_path):
    """report.html as Chromium loads it: every table with its cells, figures as data: URIs, the
    contents linking to the sections."""
    _, folder = tiny
    page = folder / "report.html"
    dom = _Dom(chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path))
    numeric = pd.read_csv(folder / "run_table.csv")
    head, *rows = next(t for t in dom.tables if t and t[0][:2] == ["config", "n"])
    # the first screen: the configuration, its runs, the result with its interval, its verdict, Δ
    assert head[:7] == ["config", "n", "runs not learned", "test accuracy (%)", "95% CI over seeds + test images",
                        "verdict vs baseline", "Δ (pp)"] and "dataset" in head[7:]
    assert [row[0] for row in rows[:len(numeric)]] == numeric["config"].tolist()
    # this sweep has no verdicts (no predictions.csv): every row says "–" (the demo's test checks real ones)
    assert not (folder / "verdicts.csv").exists()
    assert [row[5] for row in rows[1:len(numeric)]] == ["–"] * (len(numeric) - 1)
    baseline = dict(zip(head, rows[0], strict=True))
    assert baseline["test accuracy (%)"] == f"{_values('base').mean():.1f} ± {_values('base').std(ddof=1):.1f}"
    firsts = {t[0][0] for t in dom.tables if t}
    assert {"factor", "interaction", "term", "quantity"} <= firsts  # main effects, interactions, ANOVA, power
    pngs = [src for src in dom.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == len(dom.images) == 3  # forest, points, learning curves: nothing fetched
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in pngs)
    toc = [link[1:] for link in dom.links if link.startswith("#")]
    # the answer first: the verdicts, then each configuration's result, interval and verdict
    assert toc[:2] == ["verdicts", "run-table-test-accuracy"] and set(toc) <= set(dom.ids)
    assert toc.index("run-table-test-accuracy") < toc.index("summary")
    assert {"run-table-test-accuracy", "methods", "power"} <= set(toc)
    text = page.read_text()
    assert "<script" not in text and "training-seed variability on that one test set" in text


def test_names_in_report_html_cannot_make_links_or_attributes():
    """An experiment or attribute name reaches the page's text: a [link](javascript:...) in it was
    made a live link, also inside a code span, and a quote in an href added attributes
    (onmouseover). Links are made to the web, a section or a file only, outside code."""
    from xray_ablate.report.render.html import inline_html

    page = inline_html('MLflow experiment `[docs](javascript:alert(1))`, sweep [x](a"onmouseover="alert(1)), '
                       "[y](javascript:alert(2)) [csv](verdicts.csv) [ui](http://127.0.0.1:5000/#/x) [top](#verdicts)")
    hrefs = re.findall(r'<a href="([^"]*)"', page)
    assert hrefs == ["a&quot;onmouseover=&quot;alert(1", "verdicts.csv", "http://127.0.0.1:5000/#/x", "#verdicts"]
    assert "<code>[docs](javascript:alert(1))</code>" in page and "onmouseover=\"" not in page


def test_a_bar_or_line_break_in_a_name_stays_in_its_markdown_cell():
    """A metadata level such as "A|B" or "line1\\nline2" ended a cell or a row of report.md, and
    every later column shifted; subgroup intervals, like the run table's, are cut to [0, 100] %."""
    from xray_ablate.report.confounds import display_subgroups
    from xray_ablate.report.render.tables import to_markdown

    frame = pd.DataFrame({"config": ["baseline"] * 2, "attribute": ["site", "site"], "level": ["A|B", "line1\nline2"],
                          "n": [40, 12], "small": [False, True], "accuracy": [80.0, 21.7], "ci_low": [70.0, -9.6],
                          "ci_high": [90.0, 52.9], "interval": ["seeds + test images"] * 2, "gap": [58.3] * 2,
                          "seeds": [3, 3]})
    lines = to_markdown(display_subgroups(frame)).splitlines()
    assert len(lines) == 4 and len({line.replace("\\|", "").count("|") for line in lines}) == 1
    assert "A\\|B" in lines[2] and "line1 line2" in lines[3] and "[0.0, 52.9]" in lines[3]


def test_report_names_get_folders_of_their_own():
    """Names that lost every character to the old ASCII-only rule ("胸部", "肺炎") or differ only in
    what it replaced ("my exp", "my_exp") shared one folder, and one report replaced the other; a
    300-character name made a temporary folder name the file system refused."""
    from xray_ablate.report.build import safe_name

    names = ["demo", "胸部", "肺炎", "..", "my exp", "my_exp", "Röntgen A", "../../etc", "a" * 300, "b" * 300]
    folders = [safe_name(n) for n in names]
    assert len(set(folders)) == len(names) and folders[:3] == ["demo", "胸部", "肺炎"] and folders[5] == "my_exp"
    assert all("/" not in f and f not in (".", "..") and len(f.encode()) <= 127 for f in folders)

"""The report after real sweeps through the CLI: runs that collapse to one class, and the real
fixture (2 configurations x 3 seeds)."""

from __future__ import annotations

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow import MlflowClient
from test_sweep import run_sweep, sqlite_uri

from xray_ablate.paths import CONFIG_DIR
from xray_ablate.report import build_report
from xray_ablate.tracking import schema


def _report(root, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking.uri={sqlite_uri(root)}",
                                           f"paths.reports_dir={root / 'reports'}",
                                           "report.log_to_mlflow=false", *overrides])
    return build_report(cfg)


@pytest.mark.slow
def test_runs_that_collapse_to_one_class_are_flagged(monkeypatch, tmp_path, synthetic_root, cache_dir):
    # lr = 1.0 blows the tiny network up: every test image gets the same class.
    assert run_sweep(monkeypatch, tmp_path, synthetic_root, "trainer.lr=1.0,0.001", "seed=0,1") == 0
    folder = _report(tmp_path)
    client = MlflowClient(sqlite_uri(tmp_path))
    exp = client.get_experiment_by_name("xray-ablate")
    runs = client.search_runs([exp.experiment_id], f"tags.`{schema.KIND}` = 'train'")
    lr_one = {r.data.tags[schema.CONFIG_KEY] for r in runs if float(r.data.params["trainer.lr"]) == 1.0}
    assert len(lr_one) == 1
    key = lr_one.pop()
    table = pd.read_csv(folder / "run_table.csv").set_index("config_key")
    assert table.loc[key, "n_not_learned"] == 2
    flags = pd.read_csv(folder / "runs.csv").set_index("run_id")
    for run in runs:
        if run.data.tags[schema.CONFIG_KEY] != key:
            continue
        # Training's record (xray.learned) when present, else the same rule on predictions.csv.
        recorded = run.data.tags.get("xray.learned")
        assert recorded in (None, "false")
        row = flags.loc[run.info.run_id]
        assert not row["learned"] and row["learned_source"] == ("recorded" if recorded else "derived")
        if not recorded:
            assert row["top_prediction_share"] == 1.0 and "for 100% of test images" in row["learned_reason"]
    total = int(table["n_not_learned"].sum())
    top = (folder / "report.md").read_text().split("## Warnings\n\n")[1].split("## Verdicts")[0]
    assert top.startswith(f"- **Warning:** {total} of 4 runs did not learn: ")
    assert "their accuracy measures the class mix, not the configuration" in top.split("\n")[0]


@pytest.mark.slow
def test_report_on_the_real_fixture(monkeypatch, tmp_path, fixture_root, cache_dir):
    assert run_sweep(monkeypatch, tmp_path, fixture_root, "class_weights=on,off", "seed=0,1,2",
                     "trainer.epochs=3") == 0
    folder = _report(tmp_path)
    table = pd.read_csv(folder / "run_table.csv")
    assert len(table) == 2 and (table["n"] == 3).all()
    for column in ("ci_total_low", "ci_total_high", "delta_ci_total_low", "delta_ci_total_high",
                   "p_total", "p_total_holm", "n_not_learned", "test_balanced_accuracy_ci_total_low",
                   "test_roc_auc_ovr_mean", "test_ece_ci_total_high"):
        assert column in table.columns, column
    assert table[["ci_total_low", "ci_total_high"]].notna().all().all()
    assert table.loc[1, ["delta_ci_total_low", "delta_ci_total_high"]].notna().all()
    # p is undefined only when every run and image agree (no spread at all).
    row = table.loc[1]
    assert pd.notna(row["p_total"]) or row["delta_ci_total_low"] == row["delta_ci_total_high"]
    # Never narrower than the seed-only interval.
    assert ((table["ci_total_high"] - table["ci_total_low"])
            >= (table["test_accuracy_t_high"] - table["test_accuracy_t_low"]) - 1e-9).all()
    text = (folder / "report.md").read_text()
    assert "| reference: chance (1/4)" in text and "| reference: majority class (" in text
    assert "95% CI over seeds + test images" in text and "95% CI over seeds (t)" in text
    assert "## Image-level comparisons (exact McNemar, per seed pair)" in text
    assert "## Variance decomposition (baseline)" in text
    mcnemar = pd.read_csv(folder / "mcnemar.csv")
    assert sorted(mcnemar["seed"]) == [0, 1, 2]
    assert (mcnemar["n_images"] == mcnemar["n_images"].iloc[0]).all()  # one fixed test set

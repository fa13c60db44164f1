"""The report's saliency audit: per-configuration shares with intervals from per-image audits of a
known truth, the masked/raw paragraph, and end to end on the real fixture (one raw and one masked
run audited, logged to MLflow, shown in the report with the montages)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import invoke_cli, invoke_report, mlflow_runs

from xray_ablate.report.audit import (
    SHARES,
    AuditSummary,
    audit_section,
    audit_table,
    display_audit,
    informative,
    lead_share,
    level_table,
    most_different,
    summarise_audit,
    summary_blocks,
)

IMAGES = [f"img{i:03d}" for i in range(60)]


def _audit(rng, outside: float, border: float, lung_area: float = 0.3) -> pd.DataFrame:
    """A per-image audit whose shares scatter around the given truth."""
    n = len(IMAGES)
    frame = pd.DataFrame({"image_id": IMAGES, "lung_area": lung_area})
    for method in ("gradcam", "inputxgrad"):
        frame[f"outside_lung_{method}"] = np.clip(outside + rng.normal(0, 0.05, n), 0, 1)
        frame[f"border_{method}"] = np.clip(border + rng.normal(0, 0.03, n), 0, 1)
    return frame


@pytest.fixture
def audited():
    """Two configurations x 3 seeds: masked (30 % outside the lungs) and raw (60 %)."""
    rng = np.random.default_rng(0)
    rows, audits = [], {}
    for key, level, outside, border in (("k_masked", "masked", 0.3, 0.05), ("k_raw", "raw", 0.6, 0.2)):
        for seed in range(3):
            run_id = f"{level}{seed}"
            shift = rng.normal(0, 0.02)  # a seed effect
            audits[run_id] = _audit(rng, outside + shift, border)
            rows.append({"run_id": run_id, "config_key": key, "seed": seed, "dataset": level,
                         "audit_border_area": 0.29})
    configs = pd.DataFrame({"config": ["baseline", "dataset=raw"], "config_key": ["k_masked", "k_raw"]})
    return pd.DataFrame(rows), configs, audits


def test_table_means_sds_and_intervals(audited):
    runs, configs, audits = audited
    table = audit_table(runs, configs, audits).set_index("config_key")
    for key, truth in (("k_masked", 30), ("k_raw", 60)):
        ids = runs.loc[runs["config_key"] == key, "run_id"]
        run_means = [audits[r]["outside_lung_gradcam"].mean() * 100 for r in ids]
        row = table.loc[key]
        assert row["outside_lung_gradcam_mean"] == pytest.approx(np.mean(run_means))
        assert row["outside_lung_gradcam_sd"] == pytest.approx(np.std(run_means, ddof=1))
        assert row["outside_lung_gradcam_low"] < truth < row["outside_lung_gradcam_high"]
        assert row["outside_lung_gradcam_high"] - row["outside_lung_gradcam_low"] < 15
        assert row["n"] == 3 and row["images"] == len(IMAGES)
        assert row["uniform_outside"] == pytest.approx(70) and row["uniform_border"] == pytest.approx(29)
    assert most_different(table.reset_index(), "k_masked") == "k_raw"


def test_intervals_cover_the_truth_in_simulation():
    """Coverage of the per-configuration interval over repeated simulated studies: seed effects
    and image scatter around a known mean of 40 %."""
    rng = np.random.default_rng(1)
    configs = pd.DataFrame({"config": ["baseline"], "config_key": ["k"]})
    hits, trials = 0, 60
    for _ in range(trials):
        image_truth = np.clip(0.4 + rng.normal(0, 0.1, len(IMAGES)), 0, 1)  # the images' own shares
        audits, rows = {}, []
        for seed in range(3):
            frame = pd.DataFrame({"image_id": IMAGES, "lung_area": 0.3})
            value = np.clip(image_truth + rng.normal(0, 0.03) + rng.normal(0, 0.05, len(IMAGES)), 0, 1)
            for column in SHARES:
                frame[column] = value
            audits[f"r{seed}"] = frame
            rows.append({"run_id": f"r{seed}", "config_key": "k", "seed": seed, "dataset": "raw"})
        row = audit_table(pd.DataFrame(rows), configs, audits).iloc[0]
        # the population mean of the clipped image shares is 40 % (symmetric clipping far away)
        hits += row["outside_lung_gradcam_low"] < 40 < row["outside_lung_gradcam_high"]
    assert hits / trials >= 0.85  # nominal 95 %; P(<= 51 of 60 | 95 %) < 1 %


def test_levels_paragraph_and_difference(audited):
    runs, configs, audits = audited
    levels = level_table(runs, audits).set_index("config")
    assert list(levels.index) == ["masked models", "raw models", "raw − masked"]
    diff = levels.loc["raw − masked"]
    means = levels["outside_lung_gradcam_mean"]
    assert diff["outside_lung_gradcam_mean"] == pytest.approx(means["raw models"] - means["masked models"])
    assert diff["outside_lung_gradcam_low"] < 30 < diff["outside_lung_gradcam_high"]
    assert diff["outside_lung_gradcam_p"] < 0.01
    summary = AuditSummary(audit_table(runs, configs, audits), levels.reset_index(), {})
    (text,) = summary_blocks(summary)
    raw = levels.loc["raw models"]
    assert (f"raw models (3 runs) put {raw['outside_lung_gradcam_mean']:.0f} % "
            f"[{raw['outside_lung_gradcam_low']:.0f}, {raw['outside_lung_gradcam_high']:.0f}] of their "
            "Grad-CAM mass outside the lungs, where a uniform map would put 70 %") in text
    assert (f"Raw − masked, Grad-CAM outside the lungs: {diff['outside_lung_gradcam_mean']:+.0f} pp "
            f"[{diff['outside_lung_gradcam_low']:.0f}, {diff['outside_lung_gradcam_high']:.0f}] (p = ") in text
    shown = display_audit(summary.table)
    base = summary.table.iloc[0]
    assert shown["outside lungs, Grad-CAM"].iloc[0] == (
        f"{base['outside_lung_gradcam_mean']:.1f} ± {base['outside_lung_gradcam_sd']:.1f} "
        f"[{base['outside_lung_gradcam_low']:.1f}, {base['outside_lung_gradcam_high']:.1f}]")


@pytest.mark.slow
def test_real_fixture_raw_and_masked_audited_and_reported(monkeypatch, tmp_path, fixture_root):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "dataset=masked,raw", f"dataset.root={fixture_root}",
                      "image_size=64", "trainer.epochs=1", "trainer.batch_size=16", "num_workers=1",
                      "audit.images=16", "repeats=1", "tracking.log_checkpoint=false", "tracking.log_figures=false",
                      "sweep.report=true")
    assert code == 0
    runs = mlflow_runs(tmp_path, "xray-ablate")
    assert sorted(r.data.tags["factor.dataset"] for r in runs) == ["masked", "raw"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    for run in runs:
        metrics = run.data.metrics
        assert 0 <= metrics["audit_outside_lung_gradcam"] <= 1
        assert 0 <= metrics["audit_border_gradcam"] <= 1
        assert metrics["audit_images"] == 16
        assert 0 < metrics["audit_lung_area"] < 1
        assert {a.path for a in client.list_artifacts(run.info.run_id, "audit")} == {
            "audit/audit.csv", "audit/montage.png"}
    folder = next((tmp_path / "reports").glob("*/report.md")).parent
    report = (folder / "report.md").read_text()
    assert "## Where the models look (saliency audit)" in report
    assert "| outside lungs, Grad-CAM " in report and "raw models (1 run) put" in report
    assert "No intervals: they need at least 2 audited runs per level." in report
    table = pd.read_csv(folder / "audit.csv")
    assert set(table["config"]) >= {"baseline", "dataset=raw", "masked models", "raw models", "raw − masked"}
    masked = table.set_index("config").loc["baseline"]
    by_tag = {r.data.tags["factor.dataset"]: r.data.metrics for r in runs}
    assert masked["outside_lung_gradcam_mean"] == pytest.approx(100 * by_tag["masked"]["audit_outside_lung_gradcam"])
    montages = sorted(folder.glob("audit_montage_*.png"))
    assert len(montages) == 2 and all(p.stat().st_size > 1000 for p in montages)
    for png in montages:
        assert f"]({png.name})" in report

    # report.metric=audit_outside_lung names the share of the method the audit leads with (Grad-CAM,
    # which one run per level cannot show uninformative) and makes it the report's metric
    invoke_report(monkeypatch, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}", "report.name=lead",
                  "report.metric=audit_outside_lung", "report.log_to_mlflow=false")
    lead = (tmp_path / "reports" / "lead" / "report.md").read_text()
    assert ("report.metric=audit_outside_lung: audit_outside_lung_gradcam, the attribution outside the lungs of "
            "the method the saliency audit leads with") in lead
    assert "## Run table (audit outside lung gradcam)" in lead


def test_a_method_whose_maps_spread_like_a_uniform_map_is_uninformative_and_not_shown_first(audited):
    """Planted: Grad-CAM's shares at the uniform map's (70 % outside the lungs, the lung area
    0.3) for every configuration; input x gradient keeps 30 % masked vs 60 % raw."""
    runs, configs, audits = audited
    rng = np.random.default_rng(1)
    blind = {}
    for run_id, frame in audits.items():
        frame = frame.copy()
        frame["outside_lung_gradcam"] = np.clip(0.7 + rng.normal(0, 0.02, len(frame)), 0, 1)
        blind[run_id] = frame
    for maps, expected, lead in ((audits, {"gradcam": True, "inputxgrad": True}, "gradcam"),
                                 (blind, {"gradcam": False, "inputxgrad": True}, "inputxgrad")):
        table = audit_table(runs, configs, maps)
        levels = level_table(runs, maps).reset_index(drop=True)
        summary = AuditSummary(table, levels, {}, informative=informative(table, levels))
        assert summary.informative == expected and summary.lead == lead
        assert lead_share(runs, maps) == f"audit_outside_lung_{lead}"  # report.metric=audit_outside_lung
        (text,) = summary_blocks(summary)
        label = {"gradcam": "Grad-CAM", "inputxgrad": "input × gradient"}[lead]
        assert f"of their {label} mass outside the lungs" in text
        assert ("Grad-CAM is uninformative here" in text) == (lead != "gradcam")
        assert list(display_audit(table, summary.lead).columns)[3].endswith(label)
        shown = "\n".join(str(block) for block in audit_section(summary))
        assert ("Grad-CAM: uninformative" in shown) == (lead != "gradcam")
    # the model-randomisation check: input x gradient's shares, far from a uniform map's, that hardly
    # move when the weights are redrawn (within 5 pp in every configuration) say nothing of the model
    still = runs.assign(audit_randomisation_change_inputxgrad=0.01, audit_randomisation_change_gradcam=0.2)
    table = audit_table(still, configs, audits)
    assert table["randomisation_change_inputxgrad"].tolist() == pytest.approx([1.0, 1.0])
    assert informative(table, level_table(still, audits)) == {"gradcam": True, "inputxgrad": False}
    moved = still.assign(audit_randomisation_change_inputxgrad=np.where(still["dataset"] == "raw", 0.2, 0.0))
    assert informative(audit_table(moved, configs, audits))["inputxgrad"] is True


def test_a_montage_says_how_often_its_runs_maps_light_a_planted_marker(audited):
    """The montage runs' audit_hotspot_<attribute>_<method> metrics, in words under the montage."""
    from xray_ablate.report.audit import planted_note

    runs, configs, audits = audited
    runs = runs.assign(audit_hotspot_Marker_gradcam=np.where(runs["dataset"] == "raw", 0.93, 0.0),
                       audit_hotspot_Marker_inputxgrad=np.where(runs["dataset"] == "raw", 0.8, 0.0))
    assert planted_note(runs.iloc[3]) == (
        "The planted marker (Marker=corner) is a hot spot of Grad-CAM in 93% and of input × gradient in 80% of "
        "this run's audited images that carry it (a hot spot: the box's mean attribution at least 2× the map's).")
    assert planted_note(runs.iloc[0][["run_id", "seed"]]) == ""
    summary = summarise_audit(runs, configs, "k_masked", audits)
    assert list(summary.montage_notes.values())[1].startswith("The planted marker (Marker=corner) is a hot spot of "
                                                              "Grad-CAM in 93%")
    summary.montages = {title: "m.png" for title in summary.montage_runs}
    shown = [str(b) for b in audit_section(summary)]
    assert any("Grad-CAM in 93%" in b for b in shown) and any("Grad-CAM in 0%" in b for b in shown)


def test_the_report_shows_the_methods_the_runs_audited_and_leads_with_an_informative_one(audited):
    """audit.methods=[gradcam, intgrad]: no input x gradient columns; with Grad-CAM spread like a
    uniform map, integrated gradients (30 % masked vs 60 % raw) leads."""
    from xray_ablate.report.audit import lead_method

    runs, configs, audits = audited
    rng = np.random.default_rng(2)
    chosen = {}
    for run_id, frame in audits.items():
        frame = frame.rename(columns=lambda c: c.replace("inputxgrad", "intgrad"))
        frame["outside_lung_gradcam"] = np.clip(0.7 + rng.normal(0, 0.02, len(frame)), 0, 1)
        chosen[run_id] = frame
    table, levels = audit_table(runs, configs, chosen), level_table(runs, chosen)
    assert not any("inputxgrad" in c for c in table.columns) and "outside_lung_intgrad_low" in table
    informed = informative(table, levels)
    assert informed == {"gradcam": False, "intgrad": True} and lead_method(informed) == "intgrad"
    summary = AuditSummary(table, levels, {}, informative=informed)
    assert "of their integrated gradients mass outside the lungs" in summary_blocks(summary)[0]
    shown = display_audit(table, summary.lead)
    assert list(shown.columns)[3] == "outside lungs, integrated gradients"
    assert not any("input × gradient" in c for c in shown.columns)


def test_empty_maps_are_counted_where_the_shares_leave_them_out():
    """A map without positive mass (Grad-CAM's of the demo's masked models, on up to 32 of 60
    images) has no share, and the shares average the other images' maps while "audited images"
    counts all 60: the table now says how many maps each share left out."""
    from xray_ablate.audit.shares import mass_shares
    from xray_ablate.report.audit import audit_table, display_audit

    n = 60
    lungs = np.zeros((n, 8, 8), bool)
    lungs[:, 2:6, 2:6] = True
    maps = np.zeros((n, 8, 8), np.float32)
    maps[:28, 0, 0] = 1.0  # 28 maps with all their mass outside the lungs, 32 empty
    outside = 1 - mass_shares(maps, lungs)
    audits = {f"run{s}": pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(n)], "lung_area": 0.25,
                                       "outside_lung_gradcam": outside, "border_gradcam": outside})
              for s in (0, 1)}
    runs = pd.DataFrame([{"config_key": "k", "run_id": f"run{s}", "seed": s, "audit_border_area": 0.4,
                          "dataset": "masked"} for s in (0, 1)])
    shown = display_audit(audit_table(runs, pd.DataFrame({"config": ["masked"], "config_key": ["k"]}), audits))
    row = shown.iloc[0]
    assert row["audited images"] == "60" and row["Grad-CAM: empty maps, left out of its shares (%)"] == "53.3"

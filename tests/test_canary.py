"""The positive control (audit.canary=true): the planted marker's rule, the checks that must see it,
and end to end on the real fixture: the canary run is found by the audit and both probes, stays
out of every factor table, and a blind audit (constant maps) puts the warning first in the report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import invoke_cli, mlflow_runs

from xray_ablate.audit.shares import hot_spots
from xray_ablate.data import canary
from xray_ablate.report.canary import HOTSPOT_SHARE, canary_checks, canary_result, canary_tag, canary_warning


def _table(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"image_id": [f"img{i:05d}" for i in range(n)],
                         "cls": rng.choice(["bacterial", "viral", "covid", "healthy"], n),
                         "split": rng.choice(["train", "val", "test"], n, p=[0.5, 0.2, 0.3])})


def test_the_marker_goes_with_the_class_in_training_and_with_a_coin_in_test():
    table = _table()
    marked = canary.carries_marker(table)
    fit = table["split"] != "test"
    covid = table["cls"] == canary.CANARY_CLASS
    assert marked[fit & covid].all() and not marked[fit & ~covid].any()
    test = table[~fit].assign(marked=marked[~fit])
    rates = test.groupby("cls")["marked"].mean()  # about 1,200 test images: ~300 per class
    assert rates.between(canary.TEST_RATE - 0.1, canary.TEST_RATE + 0.1).all(), rates
    # the same images for the same ids, whatever the order or the other rows
    shuffled = table.sample(frac=1, random_state=1)
    assert (canary.carries_marker(shuffled) == marked[shuffled.index]).all()


def test_planting_copies_the_images_and_paints_only_the_top_right_box():
    images = np.full((3, 50, 50), 7, np.uint8)
    out = canary.plant(images, np.array([True, False, True]))
    assert (images == 7).all(), "the cached array must never be written"
    top, bottom, left, right = canary.marker_box(50)
    assert (top, bottom, left, right) == (2, 8, 42, 48)
    assert (out[[0, 2], top:bottom, left:right] == 255).all() and (out[1] == 7).all()
    out[[0, 2], top:bottom, left:right] = 7
    assert (out == 7).all()


def test_hot_spots_of_hand_made_maps():
    box = np.zeros((10, 10), bool)
    box[:2, :2] = True  # 4 % of the image
    maps = np.ones((4, 10, 10))
    maps[1, :2, :2] = 3.0  # mean in the box 3 / overall 1.08: 2.8 x
    maps[2, :2, :2] = 2.0  # 2 / 1.04: 1.9 x, not a hot spot
    maps[3] = 0.0  # an empty map sees nothing
    assert hot_spots(maps, box).tolist() == [False, True, False, False]


def _canary_run(**metrics) -> pd.Series:
    seen = {"audit_hotspot_Canary_gradcam": 0.9, "audit_hotspot_Canary_inputxgrad": 1.0,
            "probe_Canary_accuracy": 0.95, "probe_Canary_majority": 0.5, "probe_Canary_n": 60.0,
            "pixel_probe_Canary_accuracy": 0.8, "pixel_probe_Canary_majority": 0.5, "pixel_probe_Canary_n": 60.0}
    return pd.Series({**seen, **metrics})


def test_each_check_sees_the_marker_only_past_its_bar():
    assert all(c.detected for c in canary_checks(_canary_run()))
    # 60 % of 60 images: Wilson [47 %, 71 %], whose low end is not above a 50 % majority rule
    missed = canary_checks(_canary_run(audit_hotspot_Canary_gradcam=HOTSPOT_SHARE - 0.01,
                                       pixel_probe_Canary_accuracy=0.6, probe_Canary_accuracy=math.nan))
    assert [c.check for c in missed if not c.detected] == [
        "saliency audit, Grad-CAM", "source probe on the model's features", "pixel reference (32 px) as a probe"]


def test_the_warning_says_which_check_missed_and_when_the_canary_did_not_finish():
    runs = pd.DataFrame({"run_id": ["a"], "status": ["FINISHED"], "start_time": [1]})
    seen = canary_result(runs.assign(**_canary_run()), requested=True)
    assert seen.run_id == "a" and canary_warning(seen) is None and seen.missed_methods == set()
    blind = canary_result(runs.assign(**_canary_run(audit_hotspot_Canary_inputxgrad=0.0)), requested=True)
    assert blind.missed_methods == {"inputxgrad"}
    assert canary_warning(blind).startswith("the shortcut checks could not see a planted shortcut: in the canary "
                                            "run, saliency audit, input × gradient (a hot spot in 0% of the marked")
    failed = canary_result(runs.assign(status="FAILED"), requested=True)
    assert failed.run_id is None and "did not finish" in canary_warning(failed)
    assert [canary_tag(r) for r in (seen, blind, failed)] == [
        "found by all 4 checks", "missed by: saliency audit, input × gradient", "did not finish"]
    assert canary_result(pd.DataFrame(), requested=False) is None


CANARY_SWEEP = ("-m", "dataset=masked", "image_size=64", "trainer.epochs=3", "trainer.batch_size=8",
                "trainer.lr=3e-4", "augmentation=off", "num_workers=1", "audit.images=64", "repeats=1",
                "tracking.log_checkpoint=false", "tracking.log_figures=false", "sweep.report=true",
                "audit.canary=true")


def _report(root: Path) -> str:
    return next((root / "reports").glob("*/report.md")).read_text()


@pytest.mark.slow
def test_the_canary_run_is_found_by_the_audit_and_both_probes(monkeypatch, tmp_path, fixture_root):
    """Planted truth on the real fixture: the canary's marker, with every audit method. Measured:
    Grad-CAM hot spot in 90 %, input x gradient and integrated gradients in 100 % of the marked test
    images; the feature probe reads the marker off 100 %, the pixel probe 83 %, of 59 test images
    (majority rule 47 %)."""
    assert invoke_cli(monkeypatch, tmp_path, *CANARY_SWEEP, f"dataset.root={fixture_root}",
                      "audit.methods=[gradcam,inputxgrad,intgrad]") == 0
    (trained,) = mlflow_runs(tmp_path, "xray-ablate")
    (run,) = mlflow_runs(tmp_path, "xray-ablate", kind="canary")
    assert run.data.tags["xray.config_key"] != trained.data.tags["xray.config_key"]
    assert run.data.params["dataset.canary"] == "True" and trained.data.params["dataset.canary"] == "False"
    metrics = run.data.metrics
    for method in ("gradcam", "inputxgrad", "intgrad"):
        assert metrics[f"audit_hotspot_Canary_{method}"] >= 0.5, metrics
    for probe in ("probe", "pixel_probe"):
        assert metrics[f"{probe}_Canary_accuracy"] >= metrics[f"{probe}_Canary_majority"] + 0.2, metrics
    assert "audit_hotspot_Canary_gradcam" not in trained.data.metrics  # only the canary carries a marker
    report = _report(tmp_path)
    assert "could not see a planted shortcut" not in report
    section = report.split("## Positive control (canary run)")[1].split("\n## ")[0]
    assert section.count("| found it") == 5 and "| saliency audit, integrated gradients " in section, section
    assert "1 runs of 1 configurations" in report  # the canary is in no factor table
    (parent,) = mlflow_runs(tmp_path, "xray-ablate", kind="sweep")
    assert parent.data.tags["xray.canary_verdict"] == "found by all 5 checks"
    audit = report.split("## Where the models look (saliency audit)")[1].split("\n## ")[0]
    assert "integrated gradients: informative" in audit or "integrated gradients: no intervals" in audit, audit[:800]


@pytest.mark.slow
def test_a_blind_audit_misses_the_canary_and_the_report_says_so_first(monkeypatch, tmp_path, fixture_root):
    """Forced: every attribution map constant, so no box can be a hot spot. The report's first
    warning says the checks could not see the planted shortcut, names both audit methods (the
    probes still find it), and the audit section calls both methods uninformative."""
    from xray_ablate.audit.run import METHODS

    def constant(model, layer, x, target):
        return torch.ones(x.shape[0], x.shape[-2], x.shape[-1])

    for method in METHODS:  # the audit's registry: what each of audit.methods computes
        monkeypatch.setitem(METHODS, method, constant)
    assert invoke_cli(monkeypatch, tmp_path, *CANARY_SWEEP, f"dataset.root={fixture_root}") == 0
    (run,) = mlflow_runs(tmp_path, "xray-ablate", kind="canary")
    assert run.data.metrics["audit_hotspot_Canary_gradcam"] == 0.0
    report = _report(tmp_path)
    first = report.split("## Warnings\n\n")[1].splitlines()[0]
    assert first.startswith("- **Warning:** the shortcut checks could not see a planted shortcut: in the canary "
                            "run, saliency audit, Grad-CAM (a hot spot in 0% of the marked images); saliency "
                            "audit, input × gradient (a hot spot in 0% of the marked images) did not find"), first
    assert "source probe" not in first
    (parent,) = mlflow_runs(tmp_path, "xray-ablate", kind="sweep")
    assert parent.data.tags["xray.canary_verdict"] == ("missed by: saliency audit, Grad-CAM; saliency audit, "
                                                       "input × gradient")
    audit = report.split("## Where the models look (saliency audit)")[1].split("\n## ")[0]
    assert audit.count("uninformative (it missed the canary's planted marker") == 2, audit[:600]

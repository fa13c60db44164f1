"""The real cxr-mini fixture ($XRAY_ABLATE_FIXTURE): counts against its manifest.csv, patients
and splits, masks against the JSON polygons (read here independently), a stable manifest hash,
and the summary command as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_data_helpers import config, expected_mask, output_to_image, shapes_contain

from xray_ablate.config.choices import CLASSES
from xray_ablate.data.darwin import read_darwin
from xray_ablate.data.ingest import ImageRecord
from xray_ablate.data.masks import PreprocessOptions, preprocess
from xray_ablate.data.prepare import prepare
from xray_ablate.data.summary import summarize

SIZE = 64


@pytest.fixture(scope="module")
def manifest(fixture_root) -> pd.DataFrame:
    return pd.read_csv(fixture_root / "manifest.csv", dtype={"patient_id": str})


@pytest.fixture(scope="module")
def masked(fixture_root, tmp_path_factory):
    # workers=2: the process-pool path on real data.
    return prepare(config(fixture_root, tmp_path_factory.mktemp("fx-masked"), "masked", SIZE, workers=2))


@pytest.fixture(scope="module")
def raw(fixture_root, tmp_path_factory):
    return prepare(config(fixture_root, tmp_path_factory.mktemp("fx-raw"), "raw", SIZE, workers=1))


def test_counts_match_manifest(masked, manifest):
    assert len(manifest) == 200
    lung = manifest[manifest["n_lung_polygons"] > 0]
    expected = {c: int((lung["cls"] == c).sum()) for c in CLASSES}
    assert expected == {"bacterial": 50, "viral": 48, "covid": 50, "healthy": 49}
    summary = summarize(masked)
    assert summary["classes"] == expected
    assert summary["excluded"] == {"no_lung_polygon": 3}
    no_lung = set(manifest.loc[manifest["n_lung_polygons"] == 0, "name"])
    assert set(masked.excluded["image_id"]) == no_lung
    assert len(masked.table) == 197 and masked.images.shape == (197, SIZE, SIZE)
    assert summary["unknown_tags"] == {} and summary["patient_fallbacks"] == 0


def test_classes_and_patients_per_image_match_manifest(masked, manifest):
    table = masked.table.set_index("image_id")
    ref = manifest.set_index("name").loc[table.index]
    assert (table["cls"] == ref["cls"]).all()
    assert (table["patient_id"] == ref["patient_id"]).all()
    assert table["patient_id"].nunique() == 178
    assert (masked.table["label"] == masked.table["cls"].map(CLASSES.index)).all()


def test_split_is_patient_disjoint_and_stratified(masked):
    summary = summarize(masked)
    assert summary["shared_patients"] == 0
    assert sum(summary["patients"].values()) == 178
    for cls in CLASSES:
        counts = {s: summary["splits"][s][cls] for s in ("train", "val", "test")}
        total = sum(counts.values())
        assert abs(counts["test"] / total - 0.30) <= 0.05, (cls, counts)
        assert abs(counts["val"] / (counts["val"] + counts["train"]) - 0.25) <= 0.07, (cls, counts)


def test_manifest_same_for_masked_and_raw(masked, raw):
    assert masked.manifest_hash == raw.manifest_hash
    pd.testing.assert_frame_equal(masked.manifest, raw.manifest)
    assert masked.fingerprint == raw.fingerprint and masked.cache_key != raw.cache_key
    assert list(masked.table["image_id"]) == list(raw.table["image_id"])


def test_pool_and_serial_builds_agree(fixture_root, masked, tmp_path):
    serial = prepare(config(fixture_root, tmp_path / "cache", "masked", SIZE, workers=1))
    np.testing.assert_array_equal(np.asarray(serial.images), np.asarray(masked.images))


def _shapes(doc: dict, name: str) -> list[list[np.ndarray]]:
    """Darwin 1.0 polygons and complex polygons of one class, read without the code under test."""
    shapes = []
    for ann in doc["annotations"]:
        if ann["name"] != name:
            continue
        if "polygon" in ann:
            paths = [ann["polygon"]["path"]]
        elif "complex_polygon" in ann:
            paths = ann["complex_polygon"]["path"]
        else:
            continue
        shapes.append([np.array([[p["x"], p["y"]] for p in path], float) for path in paths])
    return shapes


# The 9 images with Ignore polygons (one a complex ring) and three plain ones, one per class.
SPOT = ["cxr-1a49e0e50e57", "cxr-3b56c0a56991", "cxr-7a382b4d15af", "cxr-81dbdb1b7e68",
        "cxr-a97005c23a28", "cxr-bd84ce4fdf84", "cxr-c22e896eccac", "cxr-ccdb1a7d0cfb",
        "cxr-edb85355165b", "cxr-005edc23c77b", "cxr-01af91a4a7d5"]


@pytest.mark.parametrize("image_id", SPOT)
def test_masked_pixels_equal_polygons(fixture_root, masked, raw, image_id):
    doc = json.loads((fixture_root / "annotations" / f"{image_id}.json").read_text())
    w, h = doc["image"]["width"], doc["image"]["height"]
    inside, checkable = expected_mask(_shapes(doc, "Lung"), _shapes(doc, "Ignore"), SIZE,
                                      (0, 0, w, h), SIZE, SIZE)
    row = list(masked.table["image_id"]).index(image_id)
    m, r = masked.images[row], raw.images[row]
    ins, outs = inside & checkable, ~inside & checkable
    assert ins.sum() > 100 and outs.sum() > 100
    np.testing.assert_array_equal(m[ins], r[ins])
    assert (m[outs] == 0).all()
    assert r[outs].mean() > 5  # raw really has content outside the lungs


def test_complex_ignore_ring_at_high_resolution(fixture_root):
    """cxr-c22e896eccac: an Ignore complex polygon is a thin frame (outer + inner ring) on the
    left lung. At 1024 px the frame is 5 px wide: its pixels are 0, the lung inside it is not."""
    image_id = "cxr-c22e896eccac"
    path = fixture_root / "annotations" / f"{image_id}.json"
    doc, darwin = json.loads(path.read_text()), read_darwin(path)
    lungs, ignores = _shapes(doc, "Lung"), _shapes(doc, "Ignore")
    assert len(ignores) == 1 and len(ignores[0]) == 2
    rec = ImageRecord(image_id=image_id, source=path, image_path=fixture_root / "images" / f"{image_id}.jpg",
                      cls="covid", width=darwin.width, height=darwin.height,
                      lungs=darwin.lungs, ignores=darwin.ignores)
    size = 1024
    m = preprocess(rec, PreprocessOptions(mode="masked", image_size=size)).astype(int)
    r = preprocess(rec, PreprocessOptions(mode="raw", image_size=size)).astype(int)
    box = (0, 0, darwin.width, darwin.height)
    window = (120, 340, 480, 720)  # output pixels around the frame (x 84..224, y 184..346)
    inside, checkable = expected_mask(lungs, ignores, size, box, size, size, window=window)
    py, px = np.nonzero(checkable)
    x, y = output_to_image(px, py, box, size, size)
    in_lung = shapes_contain(lungs, x, y)
    frame = np.zeros_like(checkable)
    frame[py[in_lung], px[in_lung]] = True
    frame &= ~inside  # in a Lung, under the Ignore frame
    assert frame.sum() > 500
    assert (m[frame] == 0).all() and r[frame].mean() > 20
    ins = inside & checkable
    np.testing.assert_array_equal(m[ins], r[ins])
    assert (m[~inside & checkable] == 0).all()
    # The even-odd hole of the frame is lung again: many pixels there are kept.
    hole = np.zeros((size, size), bool)
    hole[int(190 * size / 506):int(340 * size / 506), int(90 * size / 512):int(220 * size / 512)] = True
    assert (m[hole & ins] > 0).mean() > 0.9 and (hole & ins).sum() > 10_000


@pytest.mark.slow
def test_summary_command_subprocess(fixture_root, masked, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xray_ablate.data", "summary", str(fixture_root), "--json",
         "--cache-dir", str(tmp_path / "cache"), "--image-size", "32"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    summary = json.loads(out.stdout)
    assert {"classes", "excluded", "splits", "patients", "shared_patients",
            "manifest_hash"} <= set(summary)
    assert summary["classes"] == {"bacterial": 50, "viral": 48, "covid": 50, "healthy": 49}
    assert summary["excluded"] == {"no_lung_polygon": 3}
    assert summary["shared_patients"] == 0
    # A third fresh cache, another image size and mode: the same split manifest.
    assert summary["manifest_hash"] == masked.manifest_hash
    assert "cxr-7f26646c40a5.json: no_lung_polygon" in out.stderr

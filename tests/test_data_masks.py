"""Masked pixels equal the rasterised polygons: stretch, pad, crop_to_lungs, holes, Ignore,
and Darwin 2.0 giving the same output as 1.0. Expected membership comes from matplotlib
(test_data_helpers.expected_mask), checked only at pixels more than 1.5 px from any edge."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_helpers import (
    config,
    darwin_v1,
    darwin_v2,
    expected_mask,
    output_to_image,
    ramp,
    ramp_value,
    shapes_contain,
    write_item,
)

from xray_ablate.data.prepare import prepare

W, H = 300, 240
SIZE = 64
# Lung 1: concave (an L with a notch), with a triangular Ignore inside it.
LUNG_CONCAVE = [np.array([[30, 40], [140, 40], [140, 120], [95, 120], [95, 200], [30, 200]], float)]
IGNORE = [np.array([[45, 140], [85, 140], [65, 185]], float)]
# Lung 2: a complex polygon, outer ring plus a hole (even-odd).
LUNG_HOLE = [np.array([[170, 30], [280, 30], [280, 215], [170, 215]], float),
             np.array([[195, 80], [255, 80], [255, 160], [195, 160]], float)]
LUNGS = [LUNG_CONCAVE, LUNG_HOLE]


def _build(root, version: str = "1.0"):
    tags = ["COVID-19", "Viral Pneumonia", "PatientID:p1", "X-ray", "View/PA"]
    build = darwin_v1 if version == "1.0" else darwin_v2
    doc = build("img1.png", W, H, lungs=LUNGS, ignores=[IGNORE], tags=tags)
    write_item(root, "img1", ramp(W, H), doc=doc)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("masks") / "v1")


def _prepare(root, cache, **kw):
    data = prepare(config(root, cache, size=SIZE, **kw))
    assert data.images.shape == (1, SIZE, SIZE)
    return np.asarray(data.images[0]).astype(int)


def _check(masked, raw, box, out_w, out_h, offset=(0, 0)):
    inside, checkable = expected_mask(LUNGS, [IGNORE], SIZE, box, out_w, out_h, offset)
    # Inside Lung minus Ignore: the raw pixel, which is the ramp at that point (no mask applied).
    ins = inside & checkable
    assert ins.sum() > 200
    np.testing.assert_array_equal(masked[ins], raw[ins])
    py, px = np.nonzero(ins)
    x, y = output_to_image(px, py, box, out_w, out_h, offset)
    assert np.abs(masked[ins] - ramp_value(x, y, W, H)).max() <= 2.5
    # Outside (background, the hole, the Ignore triangle): 0.
    outs = ~inside & checkable
    assert outs.sum() > 200
    assert (masked[outs] == 0).all()
    return ins, outs


def _count_in(points_ring, box, out_w, out_h, offset, where):
    """How many pixels of ``where`` fall inside ``points_ring`` (image coordinates)."""
    py, px = np.nonzero(where)
    x, y = output_to_image(px, py, box, out_w, out_h, offset)
    return int(shapes_contain([[points_ring]], x, y).sum())


def test_stretch_mask_equals_polygons(dataset, tmp_path):
    masked = _prepare(dataset, tmp_path / "c", mode="masked")
    raw = _prepare(dataset, tmp_path / "c", mode="raw")
    box = (0, 0, W, H)
    _, outs = _check(masked, raw, box, SIZE, SIZE)
    # The hole and the Ignore triangle really were tested (not only far background).
    assert _count_in(LUNG_HOLE[1], box, SIZE, SIZE, (0, 0), outs) >= 50
    assert _count_in(IGNORE[0], box, SIZE, SIZE, (0, 0), outs) >= 5
    # Raw is the whole image: the ramp everywhere, never 0.
    assert raw.min() >= 40
    py, px = np.mgrid[0:SIZE, 0:SIZE]
    x, y = output_to_image(px.ravel(), py.ravel(), box, SIZE, SIZE)
    interior = ((px > 0) & (px < SIZE - 1) & (py > 0) & (py < SIZE - 1)).ravel()
    assert np.abs(raw.ravel() - ramp_value(x, y, W, H))[interior].max() <= 2.5


def test_pad_keeps_aspect_and_pads_with_zero(dataset, tmp_path):
    masked = _prepare(dataset, tmp_path / "c", mode="masked", resize="pad")
    raw = _prepare(dataset, tmp_path / "c", mode="raw", resize="pad")
    out_w, out_h = SIZE, round(H * SIZE / W)  # 64 x 51
    offset = (0, (SIZE - out_h) // 2)
    assert out_h == 51 and offset == (0, 6)
    # Padding rows are 0 in both modes; the image rows are not.
    for img in (raw, masked):
        assert (img[:offset[1]] == 0).all() and (img[offset[1] + out_h:] == 0).all()
    assert raw[offset[1]:offset[1] + out_h].min() >= 40
    _check(masked, raw, (0, 0, W, H), out_w, out_h, offset)


def test_crop_to_lungs_fills_frame(dataset, tmp_path):
    masked = _prepare(dataset, tmp_path / "c", mode="masked", crop=True)
    box = (30, 30, 280, 215)  # the lungs' bounding box
    inside, checkable = expected_mask(LUNGS, [IGNORE], SIZE, box, SIZE, SIZE)
    ins, outs = inside & checkable, ~inside & checkable
    assert (masked[outs] == 0).all() and ins.sum() > 500
    py, px = np.nonzero(ins)
    x, y = output_to_image(px, py, box, SIZE, SIZE)
    assert np.abs(masked[ins] - ramp_value(x, y, W, H)).max() <= 2.5
    # The lungs touch all four borders of the output.
    rows, cols = np.nonzero(masked)
    assert rows.min() == 0 and cols.min() == 0 and rows.max() == SIZE - 1 and cols.max() == SIZE - 1
    # crop_to_lungs is a masked-only option: raw output ignores it.
    raw_crop = _prepare(dataset, tmp_path / "c", mode="raw", crop=True)
    raw = _prepare(dataset, tmp_path / "c", mode="raw")
    np.testing.assert_array_equal(raw_crop, raw)


def test_crop_to_lungs_with_pad(dataset, tmp_path):
    masked = _prepare(dataset, tmp_path / "c", mode="masked", crop=True, resize="pad")
    box = (30, 30, 280, 215)
    out_w, out_h = SIZE, round(185 * SIZE / 250)
    offset = (0, (SIZE - out_h) // 2)
    inside, checkable = expected_mask(LUNGS, [IGNORE], SIZE, box, out_w, out_h, offset)
    assert (masked[~inside & checkable] == 0).all()
    assert (masked[inside & checkable] > 0).all()
    assert (masked[:offset[1]] == 0).all()


def test_darwin_v2_equals_v1(tmp_path):
    v1 = _build(tmp_path / "v1", "1.0")
    v2 = _build(tmp_path / "v2", "2.0")
    for kw in ({"mode": "masked"}, {"mode": "masked", "crop": True, "resize": "pad"}):
        a = prepare(config(v1, tmp_path / "c1", size=SIZE, **kw))
        b = prepare(config(v2, tmp_path / "c2", size=SIZE, **kw))
        np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
        assert b.table["cls"].tolist() == ["covid"] and b.table["patient_id"].tolist() == ["p1"]
        assert b.table["view"].tolist() == ["PA"]
        assert a.manifest_hash == b.manifest_hash
    assert np.asarray(b.images).any()


def test_darwin_v2_hole_is_a_hole(tmp_path):
    """The 2.0 ``paths`` list is even-odd too: the hole's centre is 0, the ring around it not."""
    root = _build(tmp_path / "v2", "2.0")
    masked = _prepare(root, tmp_path / "c", mode="masked")
    # Hole centre (225, 120) and a point in the ring (182, 120), in output pixels.
    assert masked[int(120 * SIZE / H), int(225 * SIZE / W)] == 0
    assert masked[int(120 * SIZE / H), int(182 * SIZE / W)] > 0


def test_an_ignore_drawn_as_a_box_is_cut_like_its_polygon(tmp_path):
    """An Ignore region drawn with the box tool (Darwin's bounding_box: x, y, w, h) is cut from the
    masked image as its rectangle polygon would be; it was dropped, and the masked image kept it.
    A 2.0 polygon, which carries its bounding box too, is still cut as the polygon."""
    box = {"x": 45.0, "y": 140.0, "w": 40.0, "h": 45.0}
    rect = [np.array([[45, 140], [85, 140], [85, 185], [45, 185]], float)]
    tags = ["COVID-19", "Viral Pneumonia", "PatientID:p1", "X-ray", "View/PA"]
    images = {}
    for name, version, drawn in (("polygon", "1.0", "polygon"), ("box", "1.0", "box"),
                                 ("v2 with box", "2.0", "polygon and box"), ("none", "1.0", None)):
        build = darwin_v1 if version == "1.0" else darwin_v2
        doc = build("img1.png", W, H, lungs=LUNGS, ignores=[rect] if drawn else [], tags=tags)
        ignore = next((a for a in doc["annotations"] if a["name"] == "Ignore"), {})
        if drawn == "box":
            ignore.pop("polygon")
            ignore["bounding_box"] = box
        elif drawn == "polygon and box":  # as V7 exports a polygon: the box around it beside it
            ignore["bounding_box"] = {"x": 0.0, "y": 0.0, "w": float(W), "h": float(H)}
        write_item(tmp_path / name, "img1", ramp(W, H), doc=doc)
        images[name] = _prepare(tmp_path / name, tmp_path / f"c-{name}", mode="masked")
    np.testing.assert_array_equal(images["box"], images["polygon"])
    np.testing.assert_array_equal(images["v2 with box"], images["polygon"])
    assert (images["polygon"] == 0).sum() >= (images["none"] == 0).sum() + 20  # the region was cut

"""Issue 15 item 2: one hostile file never stops a dataset; it becomes a counted exclusion.

The issue's recipes (a NaN Lung coordinate, a 69-byte PNG claiming 30000x30000 pixels, JSON
nested 200,000 levels deep, an image without annotation) plus an oversized JSON and a bug in
one file's processing, added to the 40 synthetic phantoms and prepared once.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib

import numpy as np
import pytest
from test_data_helpers import config, copy_dataset, write_item

from xray_ablate.data import cache, darwin, ingest
from xray_ablate.data.decode import MAX_PIXELS
from xray_ablate.data.prepare import prepare
from xray_ablate.data.summary import summarize

N_GOOD = 40
S = 96
CASES = {
    "hostile-nan": "polygon_non_finite",
    "hostile-bomb": "image_too_large",
    "hostile-bomb-warning-zone": "image_too_large",
    "hostile-deep": "json_too_deep",
    "hostile-large": "json_too_large",
    "hostile-bug": "unexpected_error",
    "hostile-decode-bug": "unexpected_error",
    "orphan": "no_annotation",
}


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (S, S), dtype=np.uint8)


def build_hostile(root):
    nan_lung = [[np.array([[10, 10], [60, 10], [float("nan"), 60], [10, 60]])]]
    write_item(root, "hostile-nan", _pixels(1), cls="bacterial", lungs=nan_lung)
    for stem, side in (("hostile-bomb", 30_000), ("hostile-bomb-warning-zone", 15_000)):
        write_item(root, stem, None, cls="bacterial")
        doc = json.loads((root / "annotations" / f"{stem}.json").read_text())
        doc["image"].update(width=side, height=side)
        (root / "annotations" / f"{stem}.json").write_text(json.dumps(doc))
        (root / "images" / f"{stem}.png").write_bytes(png_header_only(side, side))
    (root / "annotations" / "hostile-deep.json").write_text("[" * 200_000 + "]" * 200_000)
    path = write_item(root, "hostile-large", _pixels(2), cls="viral")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "padding": "x" * 2_000_000}))
    write_item(root, "hostile-bug", _pixels(3), cls="covid", extra_tags=["Trigger/Bug"])
    write_item(root, "hostile-decode-bug", _pixels(4), cls="healthy")
    (root / "images" / "orphan.png").write_bytes((root / "images" / "hostile-bug.png").read_bytes())
    return root


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def hostile(synthetic_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root = build_hostile(copy_dataset(synthetic_root, base / "data"))
    assert len((root / "images" / "hostile-bomb.png").read_bytes()) < 70
    real_geometry, real_preprocess = ingest._check_geometry, cache.preprocess

    def buggy_geometry(rec, tolerance):  # a bug that only one file's data reaches
        if "Trigger/Bug" in rec.tags:
            raise RuntimeError("a bug\nwith a second line")
        return real_geometry(rec, tolerance)

    def buggy_preprocess(rec, opts):
        if rec.image_id == "hostile-decode-bug":
            raise ZeroDivisionError("division by zero")
        return real_preprocess(rec, opts)

    handler = _Messages()
    logging.getLogger("xray_ablate").addHandler(handler)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(darwin, "MAX_JSON_BYTES", 1_000_000, raising=False)
        mp.setattr(ingest, "_check_geometry", buggy_geometry)
        mp.setattr(cache, "preprocess", buggy_preprocess)
        try:
            data = prepare(config(root, base / "cache", "masked", 32, workers=1))
        finally:
            logging.getLogger("xray_ablate").removeHandler(handler)
    return data, handler.lines


def test_every_hostile_file_is_a_counted_exclusion_and_the_rest_is_usable(hostile):
    data, _ = hostile
    assert len(data.table) == N_GOOD
    expected = {"polygon_non_finite": 1, "image_too_large": 2, "json_too_deep": 1,
                "json_too_large": 1, "unexpected_error": 2, "no_annotation": 1}
    assert summarize(data)["excluded"] == expected
    assert len(data.excluded) == len(CASES)


@pytest.mark.parametrize("stem", sorted(CASES))
def test_reason_detail_and_warning_name_the_file(hostile, stem):
    data, lines = hostile
    rows = data.excluded[data.excluded["source"].str.contains(f"/{stem}\\.", regex=True)]
    assert len(rows) == 1, data.excluded
    row = rows.iloc[0]
    assert row["reason"] == CASES[stem] and row["detail"] and "\n" not in row["detail"]
    assert any(stem in line and CASES[stem] in line for line in lines)


def test_details_say_what_was_wrong(hostile):
    data, _ = hostile
    detail = data.excluded.set_index("image_id")["detail"]
    for stem, side in (("hostile-bomb", 30_000), ("hostile-bomb-warning-zone", 15_000)):
        assert detail[stem] == f"{stem}.png: {side}x{side} is more than the limit of {MAX_PIXELS:,} pixels"
    assert detail["hostile-bug"] == "RuntimeError: a bug"  # the first line only
    assert detail["hostile-decode-bug"] == "hostile-decode-bug.png: ZeroDivisionError: division by zero"
    assert "NaN or infinite" in detail["hostile-nan"]
    assert "more than the limit of 1,000,000" in detail["hostile-large"]


def test_an_image_named_like_a_broken_json_is_counted_once(tmp_path):
    """The image of a JSON that cannot be read is that JSON's exclusion, not no_annotation too."""
    root = tmp_path / "data"
    write_item(root, "good", _pixels(5), cls="healthy")
    write_item(root, "broken", _pixels(6), cls="healthy")
    (root / "annotations" / "broken.json").write_text("{not json")
    inventory = ingest.ingest(root)
    assert sorted((r.image_id, r.reason) for r in inventory.records) == [
        ("broken", "not_json"), ("good", None)]

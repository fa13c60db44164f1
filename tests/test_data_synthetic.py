"""The synthetic phantoms: a pure function of (n, seed, size, format), a valid Darwin 1.0
export, and a corner marker outside the lungs that raw images show and masking removes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_helpers import config

from xray_ablate.config.choices import CLASSES
from xray_ablate.data.prepare import prepare
from xray_ablate.data.synthetic import generate


def _files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_same_seed_same_bytes(tmp_path, fmt):
    a = _files(generate(tmp_path / "a", n=5, seed=3, size=48, fmt=fmt))
    b = _files(generate(tmp_path / "b", n=5, seed=3, size=48, fmt=fmt))
    assert len(a) == 12 and a == b  # 5 images, 5 JSONs, the stamp, the generated-by marker
    c = _files(generate(tmp_path / "c", n=5, seed=4, size=48, fmt=fmt))
    assert set(c) == set(a)
    assert all(c[name] != a[name] for name in a if name.startswith("images/"))


def test_prefix_of_a_larger_set(tmp_path):
    """Image i depends on (seed, i) only, so n=3 is the first three of n=6."""
    small = _files(generate(tmp_path / "s", n=3, seed=0, size=32))
    large = _files(generate(tmp_path / "l", n=6, seed=0, size=32))
    assert all(large[name] == data for name, data in small.items() if name != "synthetic.json")


def test_labels_patients_and_polygons(synthetic_root, tmp_path):
    data = prepare(config(synthetic_root, tmp_path / "c", "masked", 32))
    assert len(data.table) == 40 and data.excluded.empty
    counts = data.table["cls"].value_counts()
    assert set(counts.index) == set(CLASSES)
    assert data.unknown_tags == {} and data.patient_fallbacks == 0
    assert data.table["patient_id"].nunique() < 40  # some patients have several images
    docs = [json.loads(p.read_text()) for p in sorted((synthetic_root / "annotations").glob("*.json"))]
    for doc, cls in zip(docs, data.table.sort_values("image_id")["cls"], strict=True):
        names = [a["name"] for a in doc["annotations"]]
        assert names.count("Lung") == 2
        assert ("COVID-19" in names) == (cls == "covid")
    assert any("Ignore" in [a["name"] for a in d["annotations"]] for d in docs)


def test_masking_removes_the_corner_marker(synthetic_root, tmp_path):
    masked = prepare(config(synthetic_root, tmp_path / "c", "masked", 48))
    raw = prepare(config(synthetic_root, tmp_path / "c", "raw", 48))
    m, r = np.asarray(masked.images).astype(int), np.asarray(raw.images).astype(int)
    # The marker covers 5-12 % x 5-11 % of the image: rows 3-5, columns 3-4 at 48 px.
    corner = r[:, 3:5, 3:5].mean(axis=(1, 2))
    marked = corner > 180
    assert 5 <= marked.sum() < 40
    # each image's Marker tag (an attribute) says which images carry it
    assert "Marker" in raw.attributes and (raw.table["Marker"].to_numpy() == np.where(marked, "corner", "none")).all()
    assert (m[:, 3:5, 3:5] == 0).all()  # outside the lungs, masked is 0
    assert (r[~marked, 3:5, 3:5].mean(axis=(1, 2)) < 60).all()
    # Masked and raw differ in every image, only outside the lungs.
    inside = m > 0
    assert all((m[i] != r[i]).any() for i in range(40))
    assert (m[inside] == r[inside]).all()
    assert 0.1 < inside.mean() < 0.5  # the lungs are a sizeable part of the image

"""ImageFolder layout (raw only; masked is a clear UserError), the darwin-py layout, and the
layout/patient options."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_helpers import config, ramp

from xray_ablate.data.ingest import IngestOptions
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.prepare import DataConfig, prepare
from xray_ablate.errors import UserError

FOLDERS = {"bacteria": "bacterial", "Viral_Pneumonia": "viral", "COVID-19": "covid", "NORMAL": "healthy"}


@pytest.fixture
def imagefolder(synthetic_root, tmp_path):
    """Synthetic phantoms sorted into class folders under several accepted spellings."""
    import json
    root = tmp_path / "folder"
    counts = dict.fromkeys(FOLDERS.values(), 0)
    cls_of_tag = {"Bacterial Pneumonia": "bacterial", "No Pneumonia (healthy)": "healthy"}
    for doc_path in sorted((synthetic_root / "annotations").glob("*.json")):
        doc = json.loads(doc_path.read_text())
        tags = [a["name"] for a in doc["annotations"] if "tag" in a]
        cls = "covid" if "COVID-19" in tags else "viral" if "Viral Pneumonia" in tags else \
            next(cls_of_tag[t] for t in tags if t in cls_of_tag)
        folder = next(f for f, c in FOLDERS.items() if c == cls)
        (root / folder).mkdir(parents=True, exist_ok=True)
        name = doc["image"]["filename"]
        shutil.copy(synthetic_root / "images" / name, root / folder / f"p{doc_path.stem[-2:]}_{name}")
        counts[cls] += 1
    (root / "unknown_class").mkdir()
    Image.fromarray(ramp(20, 20)).save(root / "unknown_class" / "x.png")
    (root / "NORMAL" / "notes.txt").write_text("ignored: not an image")
    return root, counts


def test_imagefolder_raw(imagefolder, tmp_path):
    root, counts = imagefolder
    data = prepare(config(root, tmp_path / "c", "raw", 32))
    assert data.layout == "imagefolder"
    assert data.table["cls"].value_counts().to_dict() == {c: n for c, n in counts.items() if n}
    assert data.images.shape == (40, 32, 32) and np.asarray(data.images).min(axis=(1, 2)).max() >= 0
    assert (np.asarray(data.images).reshape(40, -1).max(axis=1) > 0).all()
    assert data.excluded[["reason"]].to_dict("list") == {"reason": ["no_class_tag"]}
    assert "unknown_class" in data.excluded.iloc[0]["detail"]
    # No PatientID in an ImageFolder: every image is its own patient unless a pattern says so.
    assert data.patient_fallbacks == 41
    assert data.table["patient_id"].str.startswith("image:").all()


def test_imagefolder_masked_is_user_error(imagefolder, tmp_path):
    root, _ = imagefolder
    with pytest.raises(UserError, match="no Lung polygons.*dataset=raw"):
        prepare(config(root, tmp_path / "c", "masked", 32))


def test_imagefolder_patient_pattern(imagefolder, tmp_path):
    root, _ = imagefolder
    cfg = DataConfig(root=root, cache_dir=tmp_path / "c",
                     ingest=IngestOptions(patient_pattern=r"^p(\d+)_"),
                     preprocess=PreprocessOptions(mode="raw", image_size=32), workers=1)
    data = prepare(cfg)
    assert data.patient_fallbacks == 1  # only the unknown_class file has no match
    assert data.table["patient_id"].str.fullmatch(r"\d\d").all()


def test_raw_equals_darwin_raw(imagefolder, synthetic_root, tmp_path):
    """Same files, two layouts: the same raw pixels."""
    root, _ = imagefolder
    folder = prepare(config(root, tmp_path / "c1", "raw", 32))
    darwin = prepare(config(synthetic_root, tmp_path / "c2", "raw", 32))
    by_name = {p.split("_", 1)[1].rsplit(".", 1)[0]: i
               for i, p in enumerate(folder.table["image_path"].map(lambda s: s.rsplit("/", 1)[1]))}
    rows = [by_name[i] for i in darwin.table["image_id"]]
    np.testing.assert_array_equal(np.asarray(folder.images)[rows], np.asarray(darwin.images))


def test_forced_layout(synthetic_root, tmp_path):
    """layout=imagefolder on a Darwin export finds no class folders; an unknown layout is named."""
    with pytest.raises(UserError, match="no usable image .* 40 no_class_tag"):
        prepare(config(synthetic_root, tmp_path / "c", "raw", 32, layout="imagefolder"))
    with pytest.raises(UserError, match="layout must be auto, darwin or imagefolder, not 'coco'"):
        prepare(config(synthetic_root, tmp_path / "c", "raw", 32, layout="coco"))


def _darwin_py(flat: Path, dataset: Path) -> Path:
    """``flat`` as ``darwin dataset pull --folders`` leaves it: images/ in nested remote folders,
    releases/v2/annotations/ (the JSON naming each image's folder), an older release v1 with
    the first 5 annotations, and releases/latest -> v2."""
    files = sorted((flat / "annotations").glob("*.json"))
    for i, path in enumerate(files):
        doc = json.loads(path.read_text())
        folder = ["/", "/ward_a", "/ward_b/2020/march"][i % 3]
        doc["image"]["path"] = folder
        target = dataset / "images" / folder.lstrip("/") / doc["image"]["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / "images" / doc["image"]["filename"], target)
        for release in ("v1", "v2") if i < 5 else ("v2",):
            out = dataset / "releases" / release / "annotations" / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc))
    (dataset / "releases" / "latest").symlink_to("v2")
    return dataset


def test_darwin_py_dataset_and_release_folders_ingest_like_the_flat_export(synthetic_root, tmp_path):
    dataset = _darwin_py(synthetic_root, tmp_path / "covid-19-chest-x-ray-dataset")
    flat = prepare(config(synthetic_root, tmp_path / "c", "raw", 32))
    for i, root in enumerate([dataset, dataset / "releases" / "latest", dataset / "releases" / "v2"]):
        data = prepare(config(root, tmp_path / f"c{i}", "raw", 32))
        assert data.layout == "darwin" and data.manifest_hash == flat.manifest_hash, root
        assert data.table["image_id"].tolist() == flat.table["image_id"].tolist()
        np.testing.assert_array_equal(np.asarray(data.images), np.asarray(flat.images))
        assert "ward_b/2020/march" in str(data.table["image_path"].iloc[2])  # found in its nested folder
    nested = Path(data.table["image_path"].iloc[1])  # pulled without --folders: images/ is flat
    nested.rename(dataset / "images" / nested.name)
    assert prepare(config(dataset, tmp_path / "c3", "raw", 32)).manifest_hash == flat.manifest_hash
    older = config(dataset, tmp_path / "c", "raw", 32)
    older = replace(older, ingest=replace(older.ingest, release="v1"))
    assert len(prepare(older).table) + len(prepare(older).excluded) == 5 + 35  # 35 images no v1 JSON names
    with pytest.raises(UserError, match=r"no release folder .*releases/v9 \(releases there: latest, v1, v2\)"):
        prepare(replace(older, ingest=replace(older.ingest, release="v9")))
    shutil.rmtree(dataset / "releases" / "v1" / "annotations")
    with pytest.raises(UserError, match=r"no annotation folder .*releases/v1/annotations"):
        prepare(older)

"""Every bad input is excluded with a reason that names the file, and the rest stays usable.

One dataset holds the 40 good synthetic phantoms plus one file per bad case; it is prepared
once (masked, 32 px) and each case is checked against the ``excluded`` table and the log."""

from __future__ import annotations

import io
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from test_data_helpers import config, copy_dataset, darwin_v1, darwin_v2

from xray_ablate.data.darwin import DarwinFormatError, read_darwin
from xray_ablate.data.ingest import _crosses_itself
from xray_ablate.data.prepare import prepare
from xray_ablate.data.summary import summarize
from xray_ablate.errors import UserError

N_GOOD = 40
S = 96  # image side of the bad cases, the same as the synthetic phantoms
SQUARE = [[np.array([[20, 20], [76, 20], [76, 76], [20, 76]], float)]]
BOWTIE = np.array([[20, 20], [76, 76], [76, 20], [20, 76]], float)
# Two squares that share one vertex, drawn as one ring: touches itself at a point, no crossing.
FIGURE_EIGHT = np.array([[10, 10], [40, 10], [40, 40], [70, 40], [70, 70], [40, 70], [40, 40],
                         [10, 40]], float)
TAGS = ["Bacterial Pneumonia", "X-ray", "View/PA"]


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (S, S), dtype=np.uint8)


def _encoded(fmt: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(seed)).save(buffer, "JPEG" if fmt == "jpg" else "PNG")
    return buffer.getvalue()


def _doc(stem: str, fmt: str = "png", *, tags=TAGS, lungs=SQUARE, ignores=(), size=(S, S),
         filename: str | None = None) -> dict:
    return darwin_v1(filename or f"{stem}.{fmt}", *size, lungs=lungs, ignores=ignores,
                     tags=[*tags, f"PatientID:{stem}"])


def _add(root, stem, doc=None, *, fmt="png", image: bytes | None = b"ok", text: str | None = None):
    """annotations/<stem>.json (``doc`` or raw ``text``) and, by default, a good image."""
    if image == b"ok":
        image = _encoded(fmt, len(stem))
    if image is not None:
        (root / "images" / f"{stem}.{fmt}").write_bytes(image)
    path = root / "annotations" / f"{stem}.json"
    path.write_text(text if text is not None else json.dumps(doc or _doc(stem, fmt)))


# stem -> the exclusion reason it must get
CASES = {
    "bad-corrupt-jpg": "image_unreadable",
    "bad-corrupt-png": "image_unreadable",
    "bad-truncated-jpg": "image_unreadable",
    "bad-truncated-png": "image_unreadable",
    "bad-no-image": "image_missing",
    "bad-missing-fields": "missing_fields",
    "bad-missing-annotations": "missing_fields",
    "bad-not-json": "not_json",
    "bad-json-list": "not_json",
    "bad-few-points": "polygon_too_few_points",
    "bad-out-of-bounds": "polygon_out_of_bounds",
    "bad-bowtie": "polygon_self_intersecting",
    "bad-empty-mask": "empty_mask",
    "bad-escape": "path_escapes_root",
    "zz-duplicate": "duplicate_id",
    "bad-ct": "ct",
    "bad-lateral": "lateral",
    "bad-axial": "non_frontal_view",
    "bad-fungal": "fungal",
    "bad-pneumocystis": "fungal",
    "bad-lipoid": "lipoid",
    "bad-conflict": "conflicting_classes",
    "bad-no-class": "no_class_tag",
    "bad-size": "size_mismatch",
    "bad-no-lung": "no_lung_polygon",
}
ACCEPTED = {"ok-touching-ring": "bacterial", "ok-unknown-tags": "bacterial", "ok-covid": "covid"}


def build_bad_dataset(root):
    rng = np.random.default_rng(0)
    _add(root, "bad-corrupt-jpg", fmt="jpg", image=rng.bytes(3000))
    _add(root, "bad-corrupt-png", fmt="png", image=rng.bytes(3000))
    jpg, png = _encoded("jpg", 1), _encoded("png", 2)
    _add(root, "bad-truncated-jpg", fmt="jpg", image=jpg[: len(jpg) // 2])
    _add(root, "bad-truncated-png", fmt="png", image=png[: len(png) // 2])
    _add(root, "bad-no-image", image=None)
    doc = _doc("bad-missing-fields")
    del doc["image"]["width"]
    _add(root, "bad-missing-fields", doc)
    doc = _doc("bad-missing-annotations")
    del doc["annotations"]
    _add(root, "bad-missing-annotations", doc)
    _add(root, "bad-not-json", text="{this is not json")
    _add(root, "bad-json-list", text="[1, 2, 3]")
    _add(root, "bad-few-points", _doc("bad-few-points", lungs=[[np.array([[10, 10], [50, 50]])]]))
    _add(root, "bad-out-of-bounds",
         _doc("bad-out-of-bounds", lungs=[[np.array([[10, 10], [S + 40, 10], [S + 40, 50]])]]))
    _add(root, "bad-bowtie", _doc("bad-bowtie", lungs=[[BOWTIE]]))
    _add(root, "bad-empty-mask", _doc("bad-empty-mask", ignores=[[np.array(
        [[0, 0], [S, 0], [S, S], [0, S]], float)]]))
    # The image exists, but outside images/: it must not be read.
    (root.parent / "outside.png").write_bytes(_encoded("png", 3))
    _add(root, "bad-escape", _doc("bad-escape", filename="../../outside.png"), image=None)
    # Points at an image another JSON already uses (sorted first): synth-00000 keeps it.
    first = json.loads((root / "annotations" / "synth-00000.json").read_text())
    _add(root, "zz-duplicate", first, image=None)
    _add(root, "bad-ct", _doc("bad-ct", tags=[*TAGS, "CT"]))
    _add(root, "bad-lateral", _doc("bad-lateral", tags=["Bacterial Pneumonia", "View/L"]))
    _add(root, "bad-axial", _doc("bad-axial", tags=["Bacterial Pneumonia", "View/Axial"]))
    _add(root, "bad-fungal", _doc("bad-fungal", tags=[*TAGS, "Fungal Pneumonia"]))
    _add(root, "bad-pneumocystis", _doc("bad-pneumocystis", tags=[*TAGS, "Pneumocystis"]))
    _add(root, "bad-lipoid", _doc("bad-lipoid", tags=[*TAGS, "Lipoid Pneumonia"]))
    _add(root, "bad-conflict", _doc("bad-conflict", tags=[*TAGS, "No Pneumonia (healthy)"]))
    _add(root, "bad-no-class", _doc("bad-no-class", tags=["X-ray", "View/PA"]))
    _add(root, "bad-size", _doc("bad-size", size=(S + 4, S)))
    _add(root, "bad-no-lung", _doc("bad-no-lung", lungs=()))
    _add(root, "ok-touching-ring", _doc("ok-touching-ring", lungs=[[FIGURE_EIGHT]]))
    _add(root, "ok-unknown-tags", _doc("ok-unknown-tags", tags=[*TAGS, "Mystery tag", "Scanner/XYZ"]))
    _add(root, "ok-covid", _doc("ok-covid", tags=["COVID-19", "Viral Pneumonia", "View/AP Supine"]))
    return root


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def bad(synthetic_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    root = build_bad_dataset(copy_dataset(synthetic_root, base / "data"))
    handler = _Records()
    logger = logging.getLogger("xray_ablate")
    logger.addHandler(handler)
    try:
        data = prepare(config(root, base / "cache", "masked", 32))
    finally:
        logger.removeHandler(handler)
    return data, handler.messages


def test_good_images_stay_usable(bad):
    data, _ = bad
    assert len(data.table) == N_GOOD + len(ACCEPTED)
    assert data.images.shape == (len(data.table), 32, 32)
    # Every delivered image is a decoded, masked image, not a zero left by a failed decode.
    assert (np.asarray(data.images).reshape(len(data.table), -1).max(axis=1) > 0).all()
    assert "synth-00000" in set(data.table["image_id"])
    ids = set(data.table["image_id"])
    assert not any(i.startswith("bad-") for i in ids)
    for stem, cls in ACCEPTED.items():
        assert data.table.set_index("image_id").loc[stem, "cls"] == cls


def test_exclusion_counts(bad):
    data, _ = bad
    expected: dict[str, int] = {}
    for reason in CASES.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert summarize(data)["excluded"] == expected
    assert len(data.excluded) == len(CASES)


@pytest.mark.parametrize("stem", sorted(CASES))
def test_case_is_excluded_with_reason_naming_file(bad, stem):
    data, messages = bad
    rows = data.excluded[data.excluded["source"].str.endswith(f"/{stem}.json")]
    assert len(rows) == 1, data.excluded
    row = rows.iloc[0]
    assert row["reason"] == CASES[stem]
    assert row["detail"]
    logged = [m for m in messages if f"{stem}.json" in m and CASES[stem] in m]
    assert logged, f"no warning names {stem}.json with {CASES[stem]}"


@pytest.mark.parametrize("stem, name", [
    ("bad-truncated-jpg", "bad-truncated-jpg.jpg"), ("bad-truncated-png", "bad-truncated-png.png"),
    ("bad-corrupt-jpg", "bad-corrupt-jpg.jpg"), ("bad-corrupt-png", "bad-corrupt-png.png"),
    ("bad-escape", "outside.png"), ("zz-duplicate", "synth-00000.json"),
    ("bad-no-image", "bad-no-image.png"),
])
def test_detail_names_the_image(bad, stem, name):
    data, _ = bad
    row = data.excluded[data.excluded["source"].str.endswith(f"/{stem}.json")].iloc[0]
    assert name in row["detail"]


def test_truncated_files_fail_at_decode_not_ingest(bad):
    """Their header reads, so ingest keeps them; the decode fails and drops them afterwards."""
    data, _ = bad
    for stem in ("bad-truncated-jpg", "bad-truncated-png"):
        row = data.excluded[data.excluded["source"].str.endswith(f"/{stem}.json")].iloc[0]
        assert "truncated" in row["detail"]
        assert row["cls"] == "bacterial"  # it got through the label rules


def test_unknown_tags_are_counted(bad):
    data, _ = bad
    assert data.unknown_tags == {"Mystery tag": 1, "Scanner/XYZ": 1}


def test_self_intersection_rule():
    assert _crosses_itself(BOWTIE)
    assert not _crosses_itself(FIGURE_EIGHT)
    assert not _crosses_itself(SQUARE[0][0])


def test_nothing_usable_is_a_user_error(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    _add(root, "bad-not-json", text="nope")
    _add(root, "bad-no-class", _doc("bad-no-class", tags=["X-ray"]))
    with pytest.raises(UserError, match=r"no usable image .*not_json.*|no usable image .*no_class_tag"):
        prepare(config(root, tmp_path / "cache", "raw"))


def test_all_images_failing_decode_is_a_user_error(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    jpg = _encoded("jpg", 1)
    _add(root, "bad-truncated-jpg", fmt="jpg", image=jpg[: len(jpg) // 2])
    with pytest.raises(UserError, match="1 image_unreadable"):
        prepare(config(root, tmp_path / "cache", "masked"))


def test_missing_root_and_empty_export_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare(config(tmp_path / "nowhere", tmp_path / "cache"))
    (tmp_path / "empty" / "annotations").mkdir(parents=True)
    with pytest.raises(UserError, match="no Darwin JSON"):
        prepare(config(tmp_path / "empty", tmp_path / "cache"))


def test_removing_bad_files_changes_nothing_for_the_good_ones(bad, synthetic_root, tmp_path):
    """The bad files do not disturb the good images' pixels."""
    data, _ = bad
    clean = prepare(config(copy_dataset(synthetic_root, tmp_path / "clean"), tmp_path / "c", "masked", 32))
    by_id = {i: k for k, i in enumerate(data.table["image_id"])}
    rows = [by_id[i] for i in clean.table["image_id"]]
    np.testing.assert_array_equal(np.asarray(data.images)[rows], np.asarray(clean.images))
    shutil.rmtree(tmp_path / "clean")


@pytest.mark.parametrize("breakage, reason, words", [
    (lambda d: d["item"].pop("name"), "missing_fields", "item.name"),
    (lambda d: d["item"].pop("slots"), "missing_fields", "item.slots"),
    (lambda d: d["item"]["slots"][0].pop("height"), "missing_fields", "height"),
    (lambda d: d["item"]["slots"][0].update(width="wide"), "missing_fields", "width"),
    (lambda d: d["annotations"][0]["polygon"].update(paths=[]), "missing_fields", "no path"),
    (lambda d: d["annotations"][0]["polygon"]["paths"][0][0].pop("x"), "missing_fields", "x/y"),
])
def test_darwin_v2_broken_headers(tmp_path, breakage, reason, words):
    doc = darwin_v2("a.png", S, S, lungs=SQUARE, tags=TAGS)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(doc))
    parsed = read_darwin(good)
    assert (parsed.filename, parsed.width, parsed.height, len(parsed.lungs)) == ("a.png", S, S, 1)
    breakage(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DarwinFormatError) as err:
        read_darwin(path)
    assert err.value.reason == reason and words in err.value.detail


def test_files_and_folders_this_user_cannot_read(synthetic_root, tmp_path, monkeypatch):
    """Permissions (tests run as root, who reads everything, so the refusal is simulated): an
    unreadable image or JSON is excluded with the reason, and the rest is prepared (before: the
    fingerprint's PermissionError traceback); an unreadable folder or dataset is one line."""
    import builtins
    import os
    from pathlib import Path

    root = copy_dataset(synthetic_root, tmp_path / "data")
    image, doc = sorted((root / "images").iterdir())[0], sorted((root / "annotations").iterdir())[1]
    denied = {str(image), str(doc)}
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    data = prepare(config(root, tmp_path / "cache", "raw"))
    excluded = data.excluded[["source", "reason", "detail"]].itertuples(index=False)
    reasons = {Path(source).stem: (reason, detail) for source, reason, detail in excluded}
    assert set(reasons) == {image.stem, doc.stem} and len(data.table) == 40 - 2  # synthetic_root: 40 phantoms
    assert reasons[image.stem][0] == "image_unreadable" and "Permission denied" in reasons[image.stem][1]
    assert reasons[doc.stem][0] == "not_json" and "Permission denied" in reasons[doc.stem][1]

    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if Path(path) == root / "images" else real_scandir(path))
    with pytest.raises(UserError, match=rf"^cannot list the folder {root / 'images'}: permission denied for this user"):
        prepare(config(root, tmp_path / "cache2", "raw"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != root)
    with pytest.raises(UserError, match=rf"^cannot read the dataset folder {root}: permission denied for this user$"):
        prepare(config(root, tmp_path / "cache3", "raw"))

"""The preprocessing cache: reused when nothing changed (nothing decoded, nothing ingested),
rebuilt when a source file changes, keyed by the preprocessing options, and independent of
where the dataset lives. The fingerprint is a content hash."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_data_helpers import config, copy_dataset

from xray_ablate.data import cache, decode, masks
from xray_ablate.data import prepare as prepare_module
from xray_ablate.data.fingerprint import dataset_fingerprint
from xray_ablate.data.prepare import prepare


def _forbid(monkeypatch):
    """Any decode, preprocess or ingest from here on fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("the warm cache must not decode or ingest anything")
    monkeypatch.setattr(masks, "preprocess", boom)
    monkeypatch.setattr(cache, "preprocess", boom)
    monkeypatch.setattr(masks, "decode_grayscale", boom)
    monkeypatch.setattr(decode, "decode_grayscale", boom)
    monkeypatch.setattr(prepare_module, "ingest", boom)


@pytest.fixture
def data(synthetic_root, tmp_path):
    return copy_dataset(synthetic_root, tmp_path / "data")


def test_second_load_decodes_nothing(data, tmp_path, monkeypatch):
    cfg = config(data, tmp_path / "cache", "masked", 32)
    first = prepare(cfg)
    assert first.decoded_now == 40 and first.images.shape == (40, 32, 32)
    _forbid(monkeypatch)
    second = prepare(cfg)
    assert second.decoded_now == 0
    assert isinstance(second.images, np.memmap)  # read from the cache file, not rebuilt
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))
    assert (second.fingerprint, second.cache_key, second.manifest_hash) == \
        (first.fingerprint, first.cache_key, first.manifest_hash)
    assert second.table.equals(first.table)
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 1


def test_touch_without_change_keeps_the_cache(data, tmp_path, monkeypatch):
    cfg = config(data, tmp_path / "cache", "raw", 32)
    first = prepare(cfg)
    path = data / "images" / "synth-00003.png"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _forbid(monkeypatch)
    again = prepare(cfg)  # the file is re-hashed, to the same digest
    assert again.fingerprint == first.fingerprint and again.decoded_now == 0


def test_changed_image_rebuilds(data, tmp_path):
    cfg = config(data, tmp_path / "cache", "raw", 32)
    first = prepare(cfg)
    path = data / "images" / "synth-00003.png"
    pixels = np.asarray(Image.open(path)).copy()
    pixels[:] = 255 - pixels
    Image.fromarray(pixels).save(path)
    second = prepare(cfg)
    assert second.fingerprint != first.fingerprint and second.cache_key != first.cache_key
    assert second.decoded_now == 40
    row = list(second.table["image_id"]).index("synth-00003")
    assert np.abs(second.images[row].astype(int) + first.images[row] - 255).max() <= 2
    assert second.manifest_hash == first.manifest_hash  # same images, same split


def test_a_file_edited_in_place_with_its_old_time_rebuilds(data, tmp_path):
    """An annotation relabelled to the same byte count and given its old mtime back (cp -p, tar -x,
    rsync -a): the digest memo matched it by size and mtime, and the warm cache served the old
    label. Its ctime changed, which no program can set back."""
    cfg = config(data, tmp_path / "cache", "raw", 32)
    first = prepare(cfg)
    path = data / "annotations" / "synth-00003.json"
    stat, text = path.stat(), path.read_text()
    assert first.table.set_index("image_id").loc["synth-00003", "cls"] == "viral"
    edited = text.replace('"name": "Viral Pneumonia"', '"name": "COVID-19"       ', 1)  # JSON spaces
    assert len(edited) == len(text) and edited != text
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = prepare(cfg)
    assert second.fingerprint != first.fingerprint
    assert second.table.set_index("image_id").loc["synth-00003", "cls"] == "covid"


def test_changed_json_added_and_removed_files_rebuild(data, tmp_path):
    cfg = config(data, tmp_path / "cache", "raw", 32)
    fingerprints = [prepare(cfg).fingerprint]
    doc_path = data / "annotations" / "synth-00001.json"
    doc = json.loads(doc_path.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if not a["name"].startswith("PatientID:")]
    doc["annotations"].append({"name": "PatientID:someone-else", "tag": {}})
    doc_path.write_text(json.dumps(doc))
    changed = prepare(cfg)
    fingerprints.append(changed.fingerprint)
    assert changed.decoded_now == 40
    assert changed.table.set_index("image_id").loc["synth-00001", "patient_id"] == "someone-else"
    (data / "annotations" / "synth-00002.json").unlink()
    removed = prepare(cfg)
    fingerprints.append(removed.fingerprint)
    assert len(removed.table) == 39
    (data / "images" / "extra.png").write_bytes((data / "images" / "synth-00003.png").read_bytes())
    fingerprints.append(prepare(cfg).fingerprint)  # a new source file counts, even one no JSON names
    assert len(set(fingerprints)) == 4
    (data / "NOTES.md").write_text("notes beside the data are not part of it")
    assert prepare(cfg).fingerprint == fingerprints[-1]


def test_cache_key_follows_preprocessing_options(data, tmp_path):
    keys = set()
    for kw in ({"mode": "masked"}, {"mode": "raw"}, {"mode": "masked", "size": 40},
               {"mode": "masked", "resize": "pad"}, {"mode": "masked", "crop": True}):
        kw = {"size": 32, **kw}
        out = prepare(config(data, tmp_path / "cache", **kw))
        assert out.decoded_now == 40 and out.images.shape[1:] == (kw["size"],) * 2
        keys.add(out.cache_key)
    assert len(keys) == 5
    # Only the inventory is shared: one inventory, five image arrays.
    assert len(list((tmp_path / "cache" / "inventory").glob("*.csv"))) == 1
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 5
    # The split seed is not part of the image cache.
    again = prepare(config(data, tmp_path / "cache", "masked", 32, split_seed=7))
    assert again.decoded_now == 0


def test_fingerprint_is_content_not_place(data, tmp_path):
    moved = copy_dataset(data, tmp_path / "elsewhere")
    a = dataset_fingerprint(data, tmp_path / "c1")
    assert dataset_fingerprint(moved, tmp_path / "c2") == a
    assert dataset_fingerprint(data, tmp_path / "c1") == a  # memoised
    (moved / "images" / "synth-00000.png").rename(moved / "images" / "renamed.png")
    assert dataset_fingerprint(moved, tmp_path / "c2") != a


def test_copy_elsewhere_shares_cache_but_reports_its_own_paths(data, tmp_path, monkeypatch):
    """A copy with the same content reuses the cache and still gets paths under its own root
    (quality scores read the originals through table.image_path)."""
    cache_dir = tmp_path / "cache"
    prepare(config(data, cache_dir, "masked", 32))
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    _forbid(monkeypatch)
    out = prepare(config(moved, cache_dir, "masked", 32))
    assert out.decoded_now == 0
    assert all(p.startswith(str(moved) + os.sep) for p in out.table["image_path"])
    assert all(os.path.isfile(p) for p in out.table["image_path"])


def test_symlinked_images_are_not_an_escape(synthetic_root, tmp_path):
    """images/ may be a folder of symlinks (DVC, git-annex, a dataset view)."""
    root = tmp_path / "linked"
    shutil.copytree(synthetic_root / "annotations", root / "annotations")
    (root / "images").mkdir()
    for path in sorted((synthetic_root / "images").iterdir()):
        (root / "images" / path.name).symlink_to(path)
    linked = prepare(config(root, tmp_path / "c1", "masked", 32))
    plain = prepare(config(synthetic_root, tmp_path / "c2", "masked", 32))
    assert len(linked.excluded) == 0 and len(linked.table) == 40
    np.testing.assert_array_equal(np.asarray(linked.images), np.asarray(plain.images))
    assert linked.fingerprint == plain.fingerprint


def test_partial_cache_file_is_rebuilt(data, tmp_path):
    """The .npy appears last; an index without its array is not a cache hit."""
    cfg = config(data, tmp_path / "cache", "raw", 32)
    first = prepare(cfg)
    (tmp_path / "cache" / "images" / f"{first.cache_key}.npy").unlink()
    again = prepare(cfg)
    assert again.decoded_now == 40
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(again.images))


def test_manifest_hash_same_across_fresh_caches_and_modes(synthetic_root, tmp_path):
    runs = [prepare(config(synthetic_root, tmp_path / f"c{i}", mode, size, resize=resize))
            for i, (mode, size, resize) in enumerate([
                ("masked", 32, "stretch"), ("masked", 32, "stretch"), ("raw", 48, "stretch"),
                ("masked", 40, "pad")])]
    assert all(r.decoded_now == 40 for r in runs)  # every run built its own cache
    assert len({r.manifest_hash for r in runs}) == 1
    assert len({r.cache_key for r in runs}) == 3  # runs 0 and 1 share options, not caches
    assert runs[0].manifest_path.read_text() == runs[1].manifest_path.read_text()


def test_identical_image_files_under_two_names_keep_only_the_first(synthetic_root, tmp_path, caplog):
    root = tmp_path / "dupes"
    shutil.copytree(synthetic_root, root)
    doc = json.loads((root / "annotations" / "synth-00005.json").read_text())
    doc["image"]["filename"] = "zz-copy.png"
    (root / "annotations" / "zz-copy.json").write_text(json.dumps(doc))
    shutil.copy(root / "images" / "synth-00005.png", root / "images" / "zz-copy.png")
    data = prepare(config(root, tmp_path / "cache", "masked", 32))
    assert len(data.table) == 40 and "zz-copy" not in set(data.table["image_id"])
    row = data.excluded[data.excluded["reason"] == "duplicate_image"]
    assert list(row["image_id"]) == ["zz-copy"]
    assert "synth-00005.png" in row["detail"].iloc[0]
    # named in a one-line warning, as every other excluded file (it was only counted)
    assert [r.getMessage() for r in caplog.records if "duplicate_image" in r.getMessage()] == [
        f"excluded {root / 'annotations' / 'zz-copy.json'}: duplicate_image ({row['detail'].iloc[0]})"]

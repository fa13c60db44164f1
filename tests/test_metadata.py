"""Metadata attributes: prefixed Darwin tags, the CSV join (with/without extension, unmatched
rows and images counted), the prepared table and manifest, and the summary's class x attribute
counts and Cramér's V, on synthetic data and on the real fixture (recomputed here from
manifest.csv and the JSON tags)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from test_data_helpers import config

from xray_ablate.config.choices import CLASSES
from xray_ablate.data.__main__ import main
from xray_ablate.data.metadata import MISSING, age_band, attributes_for, require_attributes, tag_attributes
from xray_ablate.data.prepare import prepare
from xray_ablate.data.splits import SPLITS
from xray_ablate.errors import UserError


@pytest.fixture(autouse=True)
def _restore_logging():
    handlers = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = handlers


# --- pure functions ------------------------------------------------------------------------

def test_tag_attributes_split_prefixes_and_bin_age():
    tags = ["View/AP_Supine", "Sex/M", "Age:65", "PatientID:342", "COVID-19", "X-ray",
            "location:Hannover Medical School, Hannover, Germany", "Survival/Y", "Survival/N"]
    assert tag_attributes(tags) == {
        "View": "AP_Supine", "Sex": "M", "Age": "60-79",
        "location": "Hannover Medical School, Hannover, Germany", "Survival": "N+Y",
    }


@pytest.mark.parametrize("value, band", [("0", "0-17"), ("17.9", "0-17"), ("18", "18-39"), ("39", "18-39"),
                                         ("40", "40-59"), ("59", "40-59"), ("60", "60-79"), ("79", "60-79"),
                                         ("80", "80+"), ("101", "80+"), ("unknown", "unknown"), ("-3", "-3")])
def test_age_bands(value, band):
    assert age_band(value) == band


def _images(names: list[str], tags: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"image_id": names, "image_path": [f"/data/images/{n}.jpg" for n in names],
                         "tags": tags or [""] * len(names)})


def test_csv_join_with_and_without_extension_counts_unmatched(tmp_path):
    table = _images(["a", "b", "c", "d"], ["View/PA", "View/AP", "View/PA", ""])
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"image": ["a.jpg", "b", "sub/c.jpg", "zz.png", "gone.jpg"],
                  "site": ["x", "y", "x", "y", "x"], "age": ["12", "70", "", "30", "5"],
                  "cls": ["viral"] * 5}).to_csv(csv, index=False)
    attrs, report = attributes_for(table, {"gone"}, csv)
    assert report.key == "image" and report.rows == 5 and report.rows_matched == 3
    assert report.rows_of_excluded == 1  # gone.jpg: an image ingest excluded
    assert (report.rows_unmatched, report.rows_unmatched_examples) == (1, ["zz.png"])
    assert (report.images_unmatched, report.images_unmatched_examples) == (1, ["d"])
    assert list(attrs["site"]) == ["x", "y", "x", MISSING]
    assert list(attrs["age"]) == ["0-17", "60-79", MISSING, MISSING]  # binned, empty -> missing
    assert list(attrs["View"]) == ["PA", "AP", "PA", MISSING]
    assert report.attributes == {"View": "tag", "site": "csv", "age": "csv"}
    assert report.skipped == {"cls": "a column of the table itself"}


def test_constant_and_identifier_columns_are_skipped_with_reason(tmp_path):
    names = [f"img{i:02d}" for i in range(14)]
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"file": names, "uid": names, "scanner": ["s1"] * 14,
                  "site": ["x", "y"] * 7}).to_csv(csv, index=False)
    attrs, report = attributes_for(_images(names, ["View/PA"] * 14), set(), csv)
    assert list(attrs.columns) == ["site"] and report.key == "file"
    assert report.skipped == {"View": "one level (PA)", "scanner": "one level (s1)",
                              "uid": "14 levels (more than 12: an identifier, not a subgroup)"}
    with pytest.raises(UserError, match="'View' is not usable: one level"):
        require_attributes(["site", "View"], report)
    with pytest.raises(UserError, match="'Sex' is not in the data"):
        require_attributes(["Sex"], report)


def test_csv_errors_name_the_file_and_key(tmp_path):
    table = _images(["a", "b"])
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"path": ["a", "b"], "site": ["x", "y"]}).to_csv(csv, index=False)
    with pytest.raises(UserError, match=r"meta.csv has none of the columns name, image, filename, file"):
        attributes_for(table, set(), csv)
    assert list(attributes_for(table, set(), csv, key="path")[0]["site"]) == ["x", "y"]
    with pytest.raises(UserError, match="dataset.metadata_key 'nope' is not a column of .*meta.csv"):
        attributes_for(table, set(), csv, key="nope")
    pd.DataFrame({"name": ["a.jpg", "x/a.jpg"], "site": ["x", "y"]}).to_csv(csv, index=False)
    with pytest.raises(UserError, match="image 'a.jpg' has more than one row"):
        attributes_for(table, set(), csv)
    with pytest.raises(UserError, match="missing.csv: cannot read it"):
        attributes_for(table, set(), tmp_path / "missing.csv")


# --- prepare and summary on synthetic data -------------------------------------------------

def test_prepare_carries_csv_attributes_into_table_and_manifest(synthetic_root, tmp_path):
    plain = prepare(config(synthetic_root, tmp_path / "c", "raw", 32))
    # the phantoms' own tag Marker/corner|none is an attribute; View has one level and is not
    assert plain.attributes == ["Marker"] and plain.metadata.skipped == {"View": "one level (PA)"}
    ids = sorted(plain.table["image_id"])
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"name": [f"{i}.png" for i in ids[1:]] + ["stranger.png"],
                  "site": ["A" if n % 3 else "B" for n in range(1, len(ids))] + ["A"]}).to_csv(csv, index=False)
    data = prepare(dataclasses.replace(config(synthetic_root, tmp_path / "c", "raw", 32), metadata=csv))
    assert data.attributes == ["Marker", "site"]
    assert data.manifest_hash == plain.manifest_hash  # the split does not depend on metadata
    site = data.table.set_index("image_id")["site"]
    assert site[ids[0]] == MISSING and site[ids[1]] == "A" and site[ids[3]] == "B"
    assert (data.metadata.rows_unmatched, data.metadata.images_unmatched) == (1, 1)
    written = pd.read_csv(data.manifest_path, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["image_id", "cls", "patient_id", "split", "Marker", "site"]
    assert written.set_index("image_id")["site"].equals(site.sort_index().rename("site"))
    assert data.manifest_path != plain.manifest_path and data.manifest_path.name.startswith(data.manifest_hash)


# --- the real fixture ----------------------------------------------------------------------

SIZE = 32


@pytest.fixture(scope="module")
def fx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fx-meta")


@pytest.fixture(scope="module")
def fx_manifest(fixture_root) -> pd.DataFrame:
    manifest = pd.read_csv(fixture_root / "manifest.csv", dtype=str, keep_default_na=False)
    return manifest[manifest["n_lung_polygons"] != "0"].set_index("name")  # ingest excludes the rest


@pytest.fixture(scope="module")
def fx_split(fixture_root, fx_cache) -> pd.Series:
    """image_id -> split (the split rule is tested in test_data_splits)."""
    return prepare(config(fixture_root, fx_cache, "raw", SIZE)).table.set_index("image_id")["split"]


def _summary(capsys, root, cache, *extra) -> dict:
    assert main(["summary", str(root), "--json", "--cache-dir", str(cache), "--image-size", str(SIZE),
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _expected_counts(cls: pd.Series, level: pd.Series, split: pd.Series) -> dict:
    parts = {"all": cls.index, **{s: split.index[split == s] for s in SPLITS}}
    levels = sorted(level.unique())
    return {part: {c: {lv: int(((cls[ids] == c) & (level[ids] == lv)).sum()) for lv in levels}
                   for c in CLASSES} for part, ids in parts.items()}


def _cramers_v(cls: pd.Series, level: pd.Series) -> float:
    table = pd.crosstab(cls, level).to_numpy()
    chi2 = chi2_contingency(table, correction=False)[0]
    return math.sqrt(chi2 / (table.sum() * (min(table.shape) - 1)))


def test_fixture_summary_flags_source_as_confound(fixture_root, fx_cache, fx_manifest, fx_split, capsys):
    summary = _summary(capsys, fixture_root, fx_cache, "--metadata", str(fixture_root / "manifest.csv"))
    source = summary["attributes"]["source"]
    assert source["origin"] == "csv" and source["levels"] == ["cohen", "cohen+v7json", "kermany"]
    assert source["counts"] == _expected_counts(fx_manifest["cls"], fx_manifest["source"], fx_split)
    assert source["counts"]["all"]["covid"] == {"cohen": 0, "cohen+v7json": 50, "kermany": 0}
    v = _cramers_v(fx_manifest["cls"], fx_manifest["source"])
    assert source["cramers_v"] == pytest.approx(v, abs=1e-9) and v > 0.5 and source["confound"] is True
    meta = summary["metadata"]
    assert (meta["rows"], meta["rows_matched"], meta["rows_of_excluded"], meta["rows_unmatched"],
            meta["images_unmatched"], meta["key"]) == (200, 197, 3, 0, 0, "name")
    assert "patient_id" in meta["skipped"] and "source_blob" in meta["skipped"]
    assert summary["attributes"]["View"]["origin"] == "tag"  # tags and CSV together

    assert main(["summary", str(fixture_root), "--cache-dir", str(fx_cache), "--image-size", str(SIZE),
                 "--metadata", str(fixture_root / "manifest.csv")]) == 0
    text = capsys.readouterr().out
    assert f"attribute source (csv): Cramér's V with the class {v:.2f}  CONFOUND (V >= 0.5)" in text
    assert "200 rows, 197 matched, 3 of excluded images, 0 naming no image" in text


def test_fixture_view_from_darwin_tags_without_csv(fixture_root, fx_cache, fx_manifest, fx_split, capsys):
    summary = _summary(capsys, fixture_root, fx_cache)
    views = {}
    for name in fx_manifest.index:  # read the tags here, not through ingest
        doc = json.loads((fixture_root / "annotations" / f"{name}.json").read_text())
        tagged = [a["name"].split("/", 1)[1] for a in doc["annotations"]
                  if "tag" in a and a["name"].startswith("View/")]
        views[name] = tagged[0] if tagged else MISSING
    views = pd.Series(views)
    view = summary["attributes"]["View"]
    assert view["origin"] == "tag" and set(view["levels"]) == {"AP", "AP_Supine", "PA", MISSING}
    assert view["counts"] == _expected_counts(fx_manifest["cls"], views, fx_split)
    assert view["cramers_v"] == pytest.approx(_cramers_v(fx_manifest["cls"], views), abs=1e-9)
    assert "source" not in summary["attributes"] and summary["metadata"]["csv"] is None
    assert "Age" in summary["attributes"] and "PatientID" not in summary["attributes"]


def test_fixture_csv_with_extensions_and_strays(fixture_root, fx_cache, fx_manifest, fx_split, tmp_path, capsys):
    manifest = pd.read_csv(fixture_root / "manifest.csv", dtype=str, keep_default_na=False)
    dropped = fx_manifest.index[0]
    edited = manifest[manifest["name"] != dropped].assign(name=lambda m: m["name"] + ".jpg")
    stray = edited.iloc[[0]].assign(name="not-in-the-data.jpg")
    csv = tmp_path / "meta.csv"
    pd.concat([edited, stray]).to_csv(csv, index=False)
    summary = _summary(capsys, fixture_root, fx_cache, "--metadata", str(csv))
    meta = summary["metadata"]
    assert (meta["rows"], meta["rows_matched"], meta["rows_of_excluded"]) == (200, 196, 3)
    assert (meta["rows_unmatched"], meta["rows_unmatched_examples"]) == (1, ["not-in-the-data.jpg"])
    assert (meta["images_unmatched"], meta["images_unmatched_examples"]) == (1, [dropped])
    expected_source = fx_manifest["source"].copy()
    expected_source[dropped] = MISSING
    counts = summary["attributes"]["source"]["counts"]
    assert counts == _expected_counts(fx_manifest["cls"], expected_source, fx_split)
    assert np.sum([n for c in CLASSES for n in counts["all"][c].values()]) == 197

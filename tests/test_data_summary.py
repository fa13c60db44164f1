"""The summary command (`python -m xray_ablate.data summary ROOT [--json]`), run in-process."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from test_data_helpers import config

from xray_ablate.config.choices import CLASSES
from xray_ablate.data.__main__ import main
from xray_ablate.data.prepare import prepare


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() calls logging.basicConfig, which may attach a handler to capsys's stream."""
    handlers = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = handlers


KEYS = {"classes", "excluded", "splits", "patients", "shared_patients", "manifest_hash"}


def test_summary_json(synthetic_root, tmp_path, capsys):
    rc = main(["summary", str(synthetic_root), "--json", "--cache-dir", str(tmp_path / "c"),
               "--image-size", "32"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert KEYS <= set(summary)
    assert sum(summary["classes"].values()) == 40 and set(summary["classes"]) == set(CLASSES)
    assert summary["excluded"] == {}
    assert summary["shared_patients"] == 0
    assert summary["layout"] == "darwin"
    split_total = sum(n for counts in summary["splits"].values() for n in counts.values())
    assert split_total == 40
    for cls in CLASSES:  # the per-split counts add up to the class counts
        assert sum(summary["splits"][s][cls] for s in summary["splits"]) == summary["classes"][cls]
    reference = prepare(config(synthetic_root, tmp_path / "other", "masked", 48))
    assert summary["manifest_hash"] == reference.manifest_hash
    assert summary["fingerprint"] == reference.fingerprint
    assert summary["patients"] == {s: reference.table.loc[reference.table["split"] == s, "patient_id"]
                                   .nunique() for s in ("train", "val", "test")}


def test_summary_text(synthetic_root, tmp_path, capsys):
    assert main(["summary", str(synthetic_root), "--cache-dir", str(tmp_path / "c"),
                 "--image-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "images per class:" in text and "patients in more than one split: 0" in text
    total = next(line for line in text.splitlines() if line.strip().startswith("total"))
    assert total.split()[-1] == "40"


def test_summary_reports_exclusions(synthetic_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    (root / "annotations" / "broken.json").write_text("not json")
    assert main(["summary", str(root), "--json", "--cache-dir", str(tmp_path / "c"),
                 "--image-size", "32"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["excluded"] == {"not_json": 1}


def test_summary_error_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["summary", str(tmp_path / "empty"), "--cache-dir", str(tmp_path / "c")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert main(["summary", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err

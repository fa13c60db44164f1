"""Issue 15 item 1: the project replaces only folders it generated (missing, empty, or marked).

Each test runs the issue's recipe on a folder of the user's and asserts that nothing in it
changed and the error names the folder; then that the project's own folders are replaced.
"""

from __future__ import annotations

import pytest
from test_report import Sweep, make_cfg

from xray_ablate.data import synthetic
from xray_ablate.data.owned import MARKER
from xray_ablate.data.settings import ensure_synthetic
from xray_ablate.errors import UserError
from xray_ablate.report import build_report


def _users_dataset(root):
    """A folder of the user's: a real-looking Darwin export and notes beside it."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "patient1.png").write_bytes(b"\x89PNG real image bytes")
    (root / "annotations" / "patient1.json").write_text('{"image": {}}')
    (root / "notes.txt").write_text("do not lose me")
    return _snapshot(root)


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_demo_config_never_replaces_a_users_folder(tmp_path, make_cfg):
    root = tmp_path / "my-data"
    before = _users_dataset(root)
    cfg = make_cfg("dataset=demo", f"dataset.root={root}", "dataset.synthetic.n=4",
                   "dataset.synthetic.size=32")
    with pytest.raises(UserError, match=str(root)) as err:
        ensure_synthetic(cfg)
    assert "\n" not in str(err.value) and MARKER in str(err.value)
    assert _snapshot(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-data"]  # no partial folder left


def test_demo_config_fills_a_missing_or_empty_folder_and_regenerates_its_own(tmp_path, make_cfg):
    root = tmp_path / "demo"
    root.mkdir()
    cfg = make_cfg("dataset=demo", f"dataset.root={root}", "dataset.synthetic.n=4",
                   "dataset.synthetic.size=32")
    ensure_synthetic(cfg)
    assert (root / MARKER).is_file() and len(list((root / "images").iterdir())) == 4
    # The generator's version changes: the marked folder is replaced whole, not mixed.
    (root / synthetic.STAMP).write_text('{"stale": true}')
    (root / "images" / "leftover.png").write_bytes(b"old")
    ensure_synthetic(make_cfg("dataset=demo", f"dataset.root={root}", "dataset.synthetic.n=3",
                              "dataset.synthetic.size=32"))
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"synth-0000{i}.png" for i in range(3)]


def test_generator_cli_refuses_an_existing_dataset(tmp_path, capsys):
    root = tmp_path / "real"
    before = _users_dataset(root)
    with pytest.raises(SystemExit) as exit_:
        synthetic.main([str(root), "--n", "12", "--size", "32"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(f"error: {root} holds files this project did not create")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(root) == before


def test_generator_replaces_its_own_output_whole(tmp_path):
    out = tmp_path / "phantoms"
    synthetic.generate(out, n=5, seed=0, size=32)
    synthetic.generate(out, n=2, seed=0, size=32)
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["synth-00000.json", "synth-00001.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantoms"]


@pytest.mark.slow
def test_report_never_deletes_unrelated_files(tmp_path):
    store = (f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts")
    Sweep(store, "owned", "sw-owned").run("only", 0, 0.9)
    reports = tmp_path / "reports"
    target = reports / "mine"
    target.mkdir(parents=True)
    (target / "thesis.tex").write_text("months of work")
    cfg = make_cfg(store, "owned", reports, "report.name=mine", "report.log_to_mlflow=false")
    with pytest.raises(UserError, match=str(target)):
        build_report(cfg)
    assert _snapshot(target) == {"thesis.tex": b"months of work"}
    assert sorted(p.name for p in reports.iterdir()) == ["mine"]  # the draft was removed

    (target / "thesis.tex").unlink()  # now empty: allowed, and marked as the project's
    assert (build_report(cfg) / MARKER).is_file()
    (target / "report.md").write_text("an older report")
    assert "an older report" not in (build_report(cfg) / "report.md").read_text()

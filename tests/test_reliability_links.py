"""Issue 28: symbolic link loops in a dataset are counted exclusions, never a traceback or an
endless walk; a dataset root that is a file says so.

The 40 synthetic phantoms plus the issue's three forms: a file linking to itself, a folder
linking to the folder it lies in, and chains of folder links (three links ending at their own
folder; two folders linking to each other), and a JSON linking to itself."""

from __future__ import annotations

import logging
import os

import mlflow
import pandas as pd
import pytest
from conftest import train_once
from mlflow.tracking import MlflowClient
from test_data_helpers import config, copy_dataset

from xray_ablate.data.__main__ import main
from xray_ablate.data.prepare import prepare
from xray_ablate.data.walk import list_files
from xray_ablate.errors import UserError

N_GOOD = 40
NEVER = "never resolves: a symbolic link loop"
INSIDE = "a folder it lies in: not followed (it loops)"
WALKED = "already walked on the way here: not followed (it loops)"
# Each loop, relative to the dataset root, and the end of its exclusion detail.
LOOPS = {
    "images/self.png": NEVER,
    "annotations/self.json": NEVER,
    "images/loopdir": INSIDE,
    "images/hop1": INSIDE, "images/hop2": INSIDE, "images/hop3": INSIDE,
    "images/c1/next/next": WALKED, "images/c2/next/next": WALKED,
}


def add_loops(root):
    (root / "images" / "self.png").symlink_to("self.png")
    (root / "annotations" / "self.json").symlink_to("self.json")
    (root / "images" / "loopdir").symlink_to(".")
    for link, target in (("hop1", "hop2"), ("hop2", "hop3"), ("hop3", ".")):
        (root / "images" / link).symlink_to(target)
    for here, there in (("c1", "c2"), ("c2", "c1")):
        (root / "images" / here).mkdir()
        (root / "images" / here / "next").symlink_to(f"../{there}")
    return root


@pytest.fixture(scope="module")
def looped(synthetic_root, tmp_path_factory):
    return add_loops(copy_dataset(synthetic_root, tmp_path_factory.mktemp("loops") / "data"))


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() calls logging.basicConfig, which may attach a handler to capsys's stream."""
    handlers = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = handlers


def test_walk_lists_each_file_once_and_reports_each_loop(looped):
    listing = list_files(looped / "images")
    assert sorted(p.name for p in listing.files) == sorted(p.name for p in (looped / "images").glob("*.png")
                                                           if p.name != "self.png")
    assert len(listing.files) == N_GOOD  # nothing through a link that loops
    found = {p.relative_to(looped).as_posix(): detail for p, detail in listing.loops.items()}
    assert set(found) == {rel for rel in LOOPS if rel.startswith("images/")}
    for rel, detail in found.items():
        assert detail.endswith(LOOPS[rel]), (rel, detail)


def test_prepare_counts_each_loop_and_uses_the_rest(looped, tmp_path):
    data = prepare(config(looped, tmp_path / "cache", "masked", 32))
    assert len(data.table) == N_GOOD
    assert data.excluded["reason"].value_counts().to_dict() == {"symlink_loop": len(LOOPS)}
    details = {os.path.relpath(s, looped): d for s, d in zip(data.excluded["source"], data.excluded["detail"],
                                                            strict=True)}
    assert set(details) == set(LOOPS)
    assert details["images/loopdir"] == f"folder link to {looped / 'images'}, {INSIDE}"
    assert details["images/self.png"] == f"link to 'self.png' {NEVER}"


def test_summary_prints_the_counts_with_the_loops_as_exclusions(looped, tmp_path, capsys, caplog):
    assert main(["summary", str(looped), "--cache-dir", str(tmp_path / "c"), "--image-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.strip().startswith("total")).split() == ["total", str(N_GOOD)]
    excluded = lines[lines.index("excluded:") + 1:lines.index("excluded:") + 3]
    assert excluded[0].split() == ["symlink_loop", str(len(LOOPS))] and excluded[1] == ""
    for rel, detail in LOOPS.items():  # one warning names each link
        assert sum(f"excluded {looped / rel}: symlink_loop" in line and detail in line
                   for line in caplog.messages) == 1, rel


@pytest.mark.slow  # a training run: about 30 s on two busy cores
def test_a_run_trains_on_the_rest_and_records_the_loops(looped, make_cfg):
    cfg = make_cfg(f"dataset.root={looped}", "tracking.log_checkpoint=false", "audit.images=4")
    run_id, result = train_once(cfg)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and 0 <= result.metrics["test_accuracy"] <= 1
    assert run.data.metrics["data_excluded"] == len(LOOPS)
    excluded = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data/excluded.csv"))
    assert sorted(os.path.relpath(s, looped) for s in excluded["source"]) == sorted(LOOPS)
    assert set(excluded["reason"]) == {"symlink_loop"}


def test_a_root_that_is_a_file_says_so(tmp_path, capsys):
    path = tmp_path / "export.zip"
    path.write_bytes(b"PK")
    message = f"dataset root {path} is a file; a folder is expected (set dataset.root)"
    with pytest.raises(UserError) as err:
        prepare(config(path, tmp_path / "cache"))
    assert str(err.value) == message
    assert main(["summary", str(path), "--cache-dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == f"error: {message.replace('dataset.root', 'ROOT')}\n"  # its argument

"""Settings that point at the wrong place: one line naming the setting, exit 2, no run left RUNNING."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import invoke_report
from mlflow.tracking import MlflowClient

from xray_ablate.errors import UserError
from xray_ablate.tracking.lifecycle import tracked_run
from xray_ablate.tracking.store import connect


@pytest.mark.parametrize("uri", ["{tmp}", "sqlite:///{tmp}/notsqlite.db", "sqlite:///{tmp}", "foo://bar"],
                         ids=["a folder", "not a database", "a folder as database", "unknown scheme"])
def test_a_tracking_uri_that_is_no_store_is_one_line(tmp_path, uri):
    """A folder (MLflow's retired file store), a file that is no database, a folder given as the
    database, an unknown scheme: MLflow's exceptions came out as tracebacks, after the data loaded."""
    (tmp_path / "notsqlite.db").write_text("not a database")
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(UserError, match=rf"^tracking\.uri={uri}: no MLflow store there \(.+\); use sqlite:///"):
        connect(uri, "e", tmp_path / "artifacts")


def test_a_run_whose_error_cannot_be_written_still_ends_failed(tmp_path):
    """The artifact folder is a file: writing the traceback beside the error raised in the error
    handler, and the run stayed RUNNING; now it ends FAILED with the error tag, and the job's own
    error is what the caller sees."""
    (tmp_path / "artifacts").write_text("a file, not a folder")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = SimpleNamespace(uri=uri, experiment="e", artifact_root=str(tmp_path / "artifacts"))
    with pytest.raises(ValueError, match="the job's own error"):
        with tracked_run(tracking, "run", {}) as recorder:
            raise ValueError("the job's own error")
    run = MlflowClient(uri).get_run(recorder.run_id)
    assert run.info.status == "FAILED" and run.data.tags["xray.error"] == "ValueError: the job's own error"


def test_a_report_against_a_server_that_does_not_answer_is_one_line(monkeypatch, tmp_path, capsys):
    """`python -m xray_ablate.report tracking.uri=http://127.0.0.1:1` retried for four minutes, then
    printed a traceback."""
    with pytest.raises(SystemExit) as done:
        invoke_report(monkeypatch, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}",
                      "tracking.uri=http://127.0.0.1:1")
    assert done.value.code == 2 and "127.0.0.1:1" in capsys.readouterr().err


def test_an_external_set_that_is_not_a_dataset_names_its_own_setting(make_cfg, tmp_path):
    """An eval.sets root that is a file was reported as "... (set dataset.root)", the main set's key."""
    from xray_ablate.sweep.job import load_data
    from xray_ablate.train.external import prepare_external
    from xray_ablate.train.inputs import prepare_inputs

    (tmp_path / "afile").write_text("x")
    config = make_cfg(f"eval.sets=[{{name: other, root: '{tmp_path / 'afile'}'}}]")
    data = load_data(config)
    with pytest.raises(UserError, match=rf"^eval\.sets other \(root {tmp_path / 'afile'}\): "):
        prepare_external(config, data, prepare_inputs(config, data).train)

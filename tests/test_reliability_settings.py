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
    with pytest.raises(UserError) as err:
        prepare_external(config, data, prepare_inputs(config, data).train)
    assert str(err.value) == (f"eval.sets other (root {tmp_path / 'afile'}): dataset root {tmp_path / 'afile'} is "
                              "a file; a folder is expected (set eval.sets[other].root)")


def test_a_report_folder_that_is_a_file_is_one_line_before_any_work(monkeypatch, tmp_path, capsys, migrated_store):
    """Before: FileExistsError's traceback, after the runs had been read and analysed."""
    db = migrated_store(tmp_path / "mlruns" / "mlflow.db")
    (tmp_path / "reports").write_text("my notes")
    with pytest.raises(SystemExit) as exit_info:
        invoke_report(monkeypatch, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra")
    assert exit_info.value.code == 2 and db.is_file()
    assert capsys.readouterr().err.strip() == (f"error: cannot create the reports folder {tmp_path}/reports: "
                                               f"{tmp_path}/reports is a file (set paths.reports_dir to a folder)")
    assert (tmp_path / "reports").read_text() == "my notes"


def test_a_quality_report_folder_that_is_a_file_is_one_line_before_scoring(monkeypatch, tmp_path, capsys):
    import sys

    from xray_ablate.quality import __main__ as quality_cli

    (tmp_path / "q").write_text("my notes")
    monkeypatch.setattr(sys, "argv", ["xray_ablate.quality", "dataset=demo", "dataset.synthetic.n=40",
                                      f"paths.root_dir={tmp_path}", f"quality.report_dir={tmp_path}/q",
                                      f"hydra.run.dir={tmp_path}/hydra"])
    with pytest.raises(SystemExit) as exit_info:
        quality_cli.cli()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: cannot create the quality report folder {tmp_path}/q: "
                                               f"{tmp_path}/q is a file (set quality.report_dir to a folder)")
    assert not (tmp_path / ".cache").exists()  # stopped before the phantoms were made or scored


@pytest.mark.parametrize("args, message", [
    (["--image-size", "0"], "error: --image-size must be at least 8, not 0"),  # was a ValueError traceback
    (["--patient-pattern", "abc"],  # was an IndexError at the first image without a PatientID tag
     "error: --patient-pattern must be a regular expression with a group (the patient ID), not 'abc'"),
    (["--patient-pattern", "(x"], "error: --patient-pattern='(x' is not a regular expression: missing ), "),
    (["--metadata-key", "path"],  # was ignored without a word
     "error: --metadata-key names a column of the --metadata CSV: give --metadata too"),
])
def test_data_summary_bad_options_are_one_line(tmp_path, capsys, args, message):
    from xray_ablate.data.__main__ import main

    try:
        code = main(["summary", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), *args])
    except SystemExit as stop:  # argparse's parser.error
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "cache").exists()


def test_dataset_patient_pattern_is_checked_with_the_config(make_cfg):
    with pytest.raises(UserError, match=r"^dataset.patient_pattern must be a regular expression with a group"):
        make_cfg("dataset.patient_pattern=abc")


def test_a_metadata_key_without_metadata_is_refused(make_cfg):
    """Before: dataset.metadata_key without dataset.metadata was ignored, so a sweep ran without the
    subgroups the user meant to read from the CSV."""
    with pytest.raises(UserError) as err:
        make_cfg("dataset.metadata_key=path")
    assert str(err.value) == ("dataset.metadata_key='path' names a column of dataset.metadata, which is not set: "
                              "set dataset.metadata to the CSV, or leave metadata_key out")
    assert make_cfg("dataset.metadata=/tmp/meta.csv", "dataset.metadata_key=path").dataset.metadata_key == "path"


def test_bench_out_that_is_a_folder_is_refused_before_any_suite(tmp_path, capsys):
    from xray_ablate.bench.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["verdicts", "--smoke", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--out {tmp_path} is a folder: give the file to rewrite the rows in" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["split.test_fraction=0.9"], "split.test_fraction=0.9, split.val_fraction=0.25 leave the val split empty"),
    (["split.val_fraction=0.99"], "split.test_fraction=0.3, split.val_fraction=0.99 leave the train split empty"),
])
def test_a_split_left_empty_is_one_line_naming_the_settings(make_cfg, overrides, message):
    """Before: torch.cat of no validation batch, or a division by zero in the normalisation of no
    training image. Only training needs the three splits: an external set has none."""
    from xray_ablate.sweep.job import load_data
    from xray_ablate.train.inputs import prepare_inputs

    config = make_cfg(*overrides)
    data = load_data(config)
    with pytest.raises(UserError) as err:
        prepare_inputs(config, data)
    assert str(err.value).startswith(f"{data.root}: {message} (train ")
    assert str(err.value).endswith(f" of 40 images, {data.table['patient_id'].nunique()} patients)")


def test_what_a_finished_run_evaluated_is_read_from_its_tag_else_its_metrics_and_params(tmp_path):
    """A resumed sweep retrains a finished job only for an evaluation its run lacks (an external
    set, a subgroup attribute, the audit or other audit settings). Params cannot say (a run resumed
    from a checkpoint keeps its first eval.sets, '[]'; 6,000 characters cut a long list), so a run
    tags what it evaluated; runs from before that tag are read from their ext_<name>_n metrics and
    their params."""
    import json

    from xray_ablate.tracking import schema
    from xray_ablate.tracking.resume import unevaluated

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))

    def run(tags=None, params=None, metrics=None) -> str:
        run_id = client.create_run(experiment, tags=tags or {}).info.run_id
        for key, value in (params or {}).items():
            client.log_param(run_id, key, value)
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value)
        return run_id

    def asked(sets=(), subgroups=(), images=None):
        audit = None if images is None else {"images": images, "seed": 0, "border": 0.08, "layer": None,
                                             "methods": ["gradcam", "inputxgrad"]}
        return {"sets": list(sets), "subgroups": list(subgroups), "audit": audit}

    tracking = SimpleNamespace(uri=uri)
    resumed = run(tags={schema.EVALUATED: json.dumps(asked(["ext"], ["Marker"], 60))},
                  params={"eval.sets": "[]", "eval.subgroups": "[]", "audit.images": "20"})
    cut = '[{"name": "a", "root": "/data/' + "x" * 5960 + '...[truncated]'
    older = run(params={"eval.sets": cut, "eval.subgroups": '["Marker"]', "audit.enabled": "True",
                        "audit.images": "60", "audit.seed": "0", "audit.border": "0.08", "audit.layer": "None",
                        "audit.methods": '["gradcam", "inputxgrad"]'},
                metrics={"ext_ext_n": 12, "ext_a_n": 9})
    neither = run(params={"eval.sets": "[]", "eval.subgroups": "[]", "audit.enabled": "False"},
                  metrics={"ext_extra_accuracy_n": 1})
    assert unevaluated(tracking, resumed, asked(["ext"], ["Marker"], 60)) == []
    assert unevaluated(tracking, resumed, asked(images=200)) == ["the audit with audit.images=200 (it had 60)"]
    assert unevaluated(tracking, older, asked(["ext", "a"], ["Marker"], 60)) == []
    assert unevaluated(tracking, older, asked(["b"], ["View"])) == ["eval.sets b", "eval.subgroups View"]
    assert unevaluated(tracking, older, asked(images=200)) == ["the audit with audit.images=200 (it had '60')"]
    assert unevaluated(tracking, neither, asked(["ext", "extra"], ["Marker"], 60)) == [
        "eval.sets ext", "eval.sets extra", "eval.subgroups Marker", "the audit"]
    assert unevaluated(tracking, neither, asked()) == []  # no audit asked: a run without one is fine


@pytest.mark.parametrize("device", ["cpu:0", "mps:0", "cuda:1"])
def test_devices_torch_accepts_pass_the_schema(make_cfg, device):
    assert make_cfg(f"device={device}").device == device

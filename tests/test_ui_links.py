"""Links into the MLflow UI: the ablation view they open, the runs' datasets, the hint `make ui` prints."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import chromium, invoke_cli
from mlflow import MlflowClient
from test_sweep import base_overrides, mlflow_server, train_runs  # noqa: F401

from xray_ablate.tracking import links, schema, ui, view
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.tracking.run_info import record_dataset
from xray_ablate.tracking.store import connect

VIEW_LINK = "http://127.0.0.1:5000/#/experiments/{}/runs?viewStateShareKey=xray-ablate"


@pytest.fixture
def ui_check_again():
    """ui_opens_saved_views() looks at the UI bundle once per process: again in this test and after it."""
    view.ui_opens_saved_views.cache_clear()
    yield
    view.ui_opens_saved_views.cache_clear()


def test_links_use_the_tracking_server_or_the_local_ui():
    assert links.runs_page("sqlite:////x/mlflow.db", "3") == "http://127.0.0.1:5000/#/experiments/3/runs"
    assert links.view_page("sqlite:////x/mlflow.db", "3", "v") == VIEW_LINK.format(3).replace("xray-ablate", "v")
    assert (links.artifact_page("https://mlflow.lab.org/", "3", "abc", "report.html")
            == "https://mlflow.lab.org/#/experiments/3/runs/abc/artifacts/report.html")


def test_the_view_groups_runs_by_their_varied_factors_and_sorts_by_the_metric():
    state = view.view_state(view.AblationView("demo: dataset x class_weights", view.sweep_filter("ab12"),
                                              "test_macro_f1", ("dataset", "class_weights")))
    assert state["searchFilter"] == "tags.`xray.in_sweep.ab12` = '1'"
    assert state["selectedColumns"] == state["columnOrder"] == [
        "attributes.`Dataset`", "metrics.`test_accuracy`", "metrics.`test_macro_f1`",
        "tags.`factor.dataset`", "tags.`factor.class_weights`", "tags.`xray.seed`"]
    assert state["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [
        {"mode": "tag", "groupByData": "factor.dataset"}, {"mode": "tag", "groupByData": "factor.class_weights"}]}
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test_macro_f1`", False)
    # The runs outside every group (the sweep's parent) open under MLflow's id for that group.
    assert state["groupsExpanded"] == {"tag.factor.dataset,tag.factor.class_weights": True}


def test_the_parent_runs_verdict_tags_are_columns_of_the_view():
    from xray_ablate.tracking.verdicts import verdict_tag

    tag = verdict_tag("dataset: raw − masked (main effect)")
    assert tag == "verdict.dataset_ raw _ masked _main effect_"  # MLflow-safe, as it is stored
    state = view.view_state(view.AblationView("demo", view.sweep_filter("ab12"), "test_accuracy", ("dataset",),
                                              verdict_tags=(tag,)))
    assert state["selectedColumns"][-2:] == ["tags.`xray.seed`", f"tags.`{tag}`"]


@pytest.mark.parametrize("metric, factors, by_key, columns, groups, ascending", [
    ("test_accuracy", ("backbone",), False, ["test_accuracy"], ["factor.backbone"], False),
    ("test_loss", ("backbone",), False, ["test_accuracy", "test_loss"], ["factor.backbone"], True),
    ("test_accuracy", (), False, ["test_accuracy"], ["xray.config_key"], False),  # seeds only
    ("test_accuracy", ("backbone",), True, ["test_accuracy"], ["factor.backbone", "xray.config_key"], False),
])
def test_the_view_of_one_metric_a_loss_no_factor_or_settings_beyond_the_factors(
        metric, factors, by_key, columns, groups, ascending):
    state = view.view_state(view.AblationView("x", view.experiment_filter("demo"), metric, factors, by_key))
    assert state["searchFilter"] == "tags.`xray.experiment` = 'demo'"
    assert [c for c in state["selectedColumns"] if c.startswith("metrics.")] == [f"metrics.`{m}`" for m in columns]
    assert [k["groupByData"] for k in state["groupBy"]["groupByKeys"]] == groups
    assert state["orderByAsc"] is ascending


def test_the_saved_view_is_the_experiment_tag_the_ui_reads_and_the_link_opens_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = connect(uri, "demo", tmp_path / "artifacts")
    assert view.ui_opens_saved_views()  # the installed MLflow's bundle has the mechanism
    first = view.AblationView("demo: dataset", view.sweep_filter("s1"), "test_accuracy", ("dataset",))
    again = view.AblationView("demo: backbone", view.sweep_filter("s2"), "test_macro_f1", ("backbone",))
    assert view.save_view(uri, experiment_id, first) == VIEW_LINK.format(experiment_id)
    assert view.save_view(uri, experiment_id, again) == VIEW_LINK.format(experiment_id)
    experiment = MlflowClient(uri).get_experiment(experiment_id)
    saved = {k: v for k, v in experiment.tags.items() if k.startswith("mlflow.sharedViewState.")}
    assert list(saved) == ["mlflow.sharedViewState.xray-ablate"]  # one view per experiment, the latest
    envelope = json.loads(saved["mlflow.sharedViewState.xray-ablate"])
    assert envelope["name"] == "demo: backbone" and envelope["createdAt"] <= envelope["updatedAt"]
    assert json.loads(envelope["state"]) == view.view_state(again)
    assert view.experiment_link("http://127.0.0.1:5001", experiment) == (
        f"http://127.0.0.1:5001/#/experiments/{experiment_id}/runs?viewStateShareKey=xray-ablate")


def test_a_ui_without_saved_views_gets_the_runs_page_and_one_warning(tmp_path, monkeypatch, caplog, ui_check_again):
    monkeypatch.setattr(view, "UI_MARKERS", (*view.UI_MARKERS, "a marker no bundle has"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = connect(uri, "demo", tmp_path / "artifacts")
    shown = view.AblationView("demo: dataset", view.sweep_filter("s1"), "test_accuracy", ("dataset",))
    with caplog.at_level(logging.WARNING, logger=view.__name__):
        links_given = {view.save_view(uri, experiment_id, shown) for _ in range(2)}
    assert links_given == {f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.endswith("(its bundle lacks a marker no bundle has): the links open the plain runs page")
    assert not any(k.startswith(view.VIEW_TAG) for k in MlflowClient(uri).get_experiment(experiment_id).tags)


def test_each_run_logs_its_split_as_an_mlflow_dataset(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = connect(uri, "demo", tmp_path / "artifacts")
    root = tmp_path / "cxr"
    manifest = pd.DataFrame({"image_id": ["a", "b", "c"], "cls": ["covid", "viral", "healthy"],
                             "patient_id": ["p1", "p2", "p3"], "split": ["train", "val", "test"]})
    inputs = {}
    for split_hash in ("0123456789abcdef", "fedcba9876543210"):  # one dataset, two splits
        run_id = client.create_run(experiment_id).info.run_id
        data = SimpleNamespace(fingerprint="3f9a2c1b7e4d5a60", manifest_hash=split_hash, manifest=manifest)
        record_dataset(Recorder(client, run_id), data, root)
        (entry,) = client.get_run(run_id).inputs.dataset_inputs
        inputs[split_hash] = entry
        tags = client.get_run(run_id).data.tags
        assert (tags[schema.FINGERPRINT], tags[schema.SPLIT_HASH]) == ("3f9a2c1b7e4d5a60", split_hash)
    for split_hash, entry in inputs.items():
        assert (entry.dataset.name, entry.dataset.digest) == ("cxr@3f9a2c1b7e4d5a60", split_hash)
        assert json.loads(entry.dataset.source) == {"uri": str(root.resolve())}
        assert json.loads(entry.dataset.profile)["num_rows"] == 3
        assert [c["name"] for c in json.loads(entry.dataset.schema)["mlflow_colspec"]] == list(manifest.columns)
        assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": "train/val/test"}


@pytest.mark.slow
def test_make_ui_hint_says_what_the_links_open_and_lists_each_experiment(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ui.main([uri, "http://127.0.0.1:5001"])  # a store not created yet: the hint alone
    assert "Experiments:" not in capsys.readouterr().out
    with_view = connect(uri, "demo", tmp_path / "artifacts")
    without = connect(uri, "plain", tmp_path / "artifacts")
    connect(uri, "empty", tmp_path / "artifacts")
    for experiment_id in (with_view, without):
        MlflowClient(uri).create_run(experiment_id, tags={schema.KIND: "train"})
    view.save_view(uri, with_view, view.AblationView("demo: dataset", view.sweep_filter("s"), "test_accuracy",
                                                     ("dataset",)))
    ui.main([uri, "http://127.0.0.1:5001"])
    out = capsys.readouterr().out
    assert "Views > xray-ablate" in out and "test_accuracy and report.metric" in out and "report.html" in out
    assert f"  demo: http://127.0.0.1:5001/#/experiments/{with_view}/runs?viewStateShareKey=xray-ablate\n" in out
    assert f"  plain: http://127.0.0.1:5001/#/experiments/{without}/runs\n" in out
    assert "empty:" not in out and out.rstrip().endswith("UI: http://127.0.0.1:5001")


class _Grid(HTMLParser):
    """MLflow's runs grid as rendered: {row id: {column id: text}} (a group's row id: tag.<tag>.<level>,
    a run's: <its group's>.<run id>) and the header column ids."""

    def __init__(self, dom: str):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = defaultdict(dict)
        self.headers: set[str] = set()
        self._row = ""
        self._cell: tuple[str, list[str]] | None = None
        self._depth = 0  # divs open inside the current cell
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("role") == "columnheader":
            self.headers.add(attrs.get("col-id"))
        if self._cell is not None:
            self._depth += tag == "div"
        elif attrs.get("role") == "row" and "row-id" in attrs:  # one per pinned and scrolled part
            self._row = attrs["row-id"]
        elif attrs.get("role") == "gridcell":
            self._cell = (attrs["col-id"], [])

    def handle_endtag(self, tag):
        if self._cell is None or tag != "div":
            return
        if self._depth:
            self._depth -= 1
            return
        column, text = self._cell
        self.rows[self._row][column] = " ".join(" ".join(text).split())
        self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1].append(data)


@pytest.mark.slow
def test_the_printed_link_opens_the_ablation_view_in_a_browser(monkeypatch, tmp_path, synthetic_root,
                                                               mlflow_server, capsys):  # noqa: F811
    """A sweep of 2 configurations x 2 seeds through `mlflow server`; Chromium loads the link it printed."""
    code = invoke_cli(monkeypatch, tmp_path, "-m", *base_overrides(tmp_path, synthetic_root),
                      "class_weights=on,off", "seed=0,1", f"tracking.uri={mlflow_server}")
    assert code == 0
    (link,) = re.findall(r"runs in the MLflow UI: (\S+)", capsys.readouterr().out)
    runs = train_runs(mlflow_server, "FINISHED")
    assert len(runs) == 4
    assert link == f"{mlflow_server}/#/experiments/{runs[0].info.experiment_id}/runs?viewStateShareKey=xray-ablate"
    # A wide window: the grid renders only the columns in view.
    grid = _Grid(chromium("--window-size=2560,1200", "--virtual-time-budget=30000", "--dump-dom", link,
                          tmp_path=tmp_path))
    assert {"metrics.`test_accuracy`", "tags.`factor.class_weights`", "attributes.`Dataset`"} <= grid.headers
    assert "tags.`factor.dataset`" not in grid.headers  # a factor the sweep did not vary
    for run in runs:  # every training run in its configuration's group: accuracy, level, dataset
        cells = grid.rows[f"tag.factor.class_weights.{run.data.tags['factor.class_weights']}.{run.info.run_id}"]
        assert cells["attributes.`Run Name`"] == run.info.run_name
        assert float(cells["metrics.`test_accuracy`"]) == pytest.approx(run.data.metrics["test_accuracy"])
        assert cells["tags.`factor.class_weights`"] == run.data.tags["factor.class_weights"]
        name = f"{Path(synthetic_root).name}@{run.data.tags[schema.FINGERPRINT]}"
        assert cells["attributes.`Dataset`"].startswith(f"{name} ({run.data.tags[schema.SPLIT_HASH]}) train/val/test")
    for level in ("on", "off"):  # one group per configuration, its mean accuracy
        mean = sum(r.data.metrics["test_accuracy"] for r in runs
                   if r.data.tags["factor.class_weights"] == level) / 2
        cells = grid.rows[f"tag.factor.class_weights.{level}"]
        assert cells["attributes.`Run Name`"].endswith(f"Group: {level} 2")  # after its colour's name
        assert cells["metrics.`test_accuracy`"].endswith("(average)")
        assert float(cells["metrics.`test_accuracy`"].split()[0]) == pytest.approx(mean)


def test_two_jobs_logging_one_dataset_at_once_both_log_it(tmp_path, monkeypatch):
    """MLflow's store looks a dataset up, then inserts it: of two jobs logging the same split at once
    (a SLURM sweep did), the second insert broke the unique key and failed its job. The loser
    retries, finds the winner's row and logs it; any other error still surfaces."""
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = connect(uri, "demo", tmp_path / "artifacts")
    manifest = pd.DataFrame({"image_id": ["a"], "cls": ["covid"], "patient_id": ["p1"], "split": ["train"]})
    data = SimpleNamespace(fingerprint="3f9a2c1b7e4d5a60", manifest_hash="0123456789abcdef", manifest=manifest)
    winner, loser = (client.create_run(experiment_id).info.run_id for _ in range(2))
    real = MlflowClient.log_inputs
    raced = []

    def lose_the_race_once(self, run_id, datasets=None, models=None):
        if run_id == loser and not raced:
            raced.append(run_id)
            record_dataset(Recorder(client, winner), data, tmp_path)  # the winner inserts meanwhile
            raise MlflowException("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", lose_the_race_once)
    record_dataset(Recorder(client, loser), data, tmp_path)
    assert raced == [loser]
    digests = {r: [d.dataset.digest for d in client.get_run(r).inputs.dataset_inputs] for r in (winner, loser)}
    assert digests == {winner: ["0123456789abcdef"], loser: ["0123456789abcdef"]}

    def refuse(self, run_id, datasets=None, models=None):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run gone")

    monkeypatch.setattr(MlflowClient, "log_inputs", refuse)
    with pytest.raises(MlflowException, match="run gone"):
        record_dataset(Recorder(client, loser), data, tmp_path)

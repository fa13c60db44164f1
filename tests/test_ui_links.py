"""Links into the MLflow UI and the ablation-view hint `make ui` prints."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from xray_ablate.config.factors import factor_names
from xray_ablate.tracking import links, schema, ui
from xray_ablate.tracking.store import connect


def test_links_use_the_tracking_server_or_the_local_ui():
    assert links.runs_page("sqlite:////x/mlflow.db", "3") == "http://127.0.0.1:5000/#/experiments/3/runs"
    assert (links.artifact_page("https://mlflow.lab.org/", "3", "abc", "report.html")
            == "https://mlflow.lab.org/#/experiments/3/runs/abc/artifacts/report.html")


@pytest.mark.slow
def test_make_ui_hint_names_the_columns_and_each_experiments_runs_page(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ui.main([uri, "http://127.0.0.1:5001"])  # a store not created yet: the hint alone
    assert "Experiments:" not in capsys.readouterr().out
    with_runs = connect(uri, "demo", tmp_path / "artifacts")
    connect(uri, "empty", tmp_path / "artifacts")
    MlflowClient(uri).create_run(with_runs, tags={schema.KIND: "train"})
    ui.main([uri, "http://127.0.0.1:5001"])
    out = capsys.readouterr().out
    assert "test_accuracy" in out and all(f"factor.{f}" in out for f in factor_names())
    assert f"tags.`{schema.KIND}` = 'train'" in out and "report.html" in out
    assert f"  demo: http://127.0.0.1:5001/#/experiments/{with_runs}/runs\n" in out
    assert "empty:" not in out and out.rstrip().endswith("UI: http://127.0.0.1:5001")

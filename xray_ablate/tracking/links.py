"""Links into the MLflow UI (3.x hash routes): an experiment's runs page, a saved view of it, a run's artifact."""

from __future__ import annotations

LOCAL_UI = "http://127.0.0.1:5000"  # `make ui` / `make server` (the Makefile's PORT)
VIEW_PARAM = "viewStateShareKey"  # the runs page's query key naming a saved view (see tracking/view.py)


def ui_base(uri: str) -> str:
    """The UI's address: the tracking server itself, else where `make ui` serves a local store."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def runs_page(uri: str, experiment_id: str) -> str:
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs"


def view_page(uri: str, experiment_id: str, view_id: str) -> str:
    """The runs page opened on the experiment's saved view ``view_id``."""
    return f"{runs_page(uri, experiment_id)}?{VIEW_PARAM}={view_id}"


def artifact_page(uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """The run page's artifacts tab opened on ``path`` (the UI shows HTML and images inline)."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"

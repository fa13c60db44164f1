"""python -m xray_ablate.tracking.ui [TRACKING_URI [UI_ADDRESS]]: each experiment's link into the MLflow
UI, which opens its ablation view (printed by `make ui` before the UI starts)."""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from xray_ablate.tracking import links, schema, view
from xray_ablate.tracking.store import sqlite_path


def ablation_view() -> str:
    """What an experiment's link opens, and where the report is."""
    metrics = f"{view.BASE_METRIC} and report.metric"
    return "\n".join([
        "Open an experiment's link below: its runs page on the ablation view the last sweep or report saved",
        f"(Views > {view.VIEW_ID}): one group per configuration with its seeds inside (mean of {metrics}),",
        "the factor.* tags that vary, the Dataset column (data and split), sorted by the report's metric.",
        f"The report: the run report-<name> (tags.`{schema.KIND}` = 'report'), Artifacts > report.html.",
    ])


def experiment_pages(uri: str, ui: str) -> list[str]:
    """"name: link" (on the UI at ``ui``) of every experiment holding a training run; none when the
    store is new."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return []
    client = MlflowClient(uri)
    pages = []
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], f"tags.`{schema.KIND}` = 'train'", max_results=1):
            pages.append(f"  {experiment.name}: {view.experiment_link(ui, experiment)}")
    return pages


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    uri = args[0] if args else f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"
    ui = links.ui_base(args[1] if len(args) > 1 else uri)
    print(ablation_view())
    pages = experiment_pages(uri, ui)
    if pages:
        print("Experiments:\n" + "\n".join(pages))
    print(f"UI: {ui}", flush=True)


if __name__ == "__main__":
    main()

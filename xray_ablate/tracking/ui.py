"""python -m xray_ablate.tracking.ui [TRACKING_URI [UI_ADDRESS]]: what to click in the MLflow UI for an
ablation view (printed by `make ui` before the UI starts), with each experiment's runs page."""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from xray_ablate.config.factors import factor_names
from xray_ablate.tracking import links, schema
from xray_ablate.tracking.store import sqlite_path

# The report's primary and secondary metrics: the columns worth adding first.
KEY_METRICS = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_roc_auc_ovr")


def ablation_view() -> str:
    """The columns, grouping, filter and chart that turn the runs table into an ablation view."""
    factors = ", ".join(schema.FACTOR_TAG.format(f) for f in factor_names())
    return "\n".join([
        "Ablation view in the MLflow UI (an experiment's Runs tab):",
        f"  filter     tags.`{schema.KIND}` = 'train'   (only training runs: no sweep parents, no report run)",
        f"  columns    metrics {', '.join(KEY_METRICS)}; tags {schema.SEED} and the factors you varied",
        f"             (factor tags: {factors})",
        "  group by   the varied factor tags (Group by > tags > factor.dataset, ...): one row per",
        "             configuration with its seeds inside",
        "  chart      Chart view > bar chart of test_accuracy, grouped as above: one bar per configuration",
        f"  report     the run named report-<name> (tags.`{schema.KIND}` = 'report'): Artifacts > report.html",
    ])


def experiment_pages(uri: str, ui: str) -> list[str]:
    """"name: runs page" (on the UI at ``ui``) of every experiment holding a training run; none
    when the store is new."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return []
    client = MlflowClient(uri)
    pages = []
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], f"tags.`{schema.KIND}` = 'train'", max_results=1):
            pages.append(f"  {experiment.name}: {links.runs_page(ui, experiment.experiment_id)}")
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

"""The ablation view of an experiment's runs page, saved where the MLflow UI reads it; its link.

MLflow's runs page keeps named views ("Views" menu, MLflow 3.17) as experiment tags
``mlflow.sharedViewState.<id>``, each a JSON envelope ``{name, createdAt, updatedAt, state}``
whose ``state`` is the JSON of the page's search facets (filter, sort) and UI state (columns,
group-by, open groups); ``#/experiments/<id>/runs?viewStateShareKey=<id>`` opens one. (Read in
the installed UI bundle, mlflow/server/js/build: the tag prefix and URL key, the envelope check
"Invalid saved-view envelope", and the keys it applies; it drops runsExpanded, so child runs are
shown through the grouping, which lists every run of a group whatever its parent.)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from xray_ablate.tracking import links, schema

log = logging.getLogger(__name__)

VIEW_TAG = "mlflow.sharedViewState."  # + view id
VIEW_ID = "xray-ablate"  # one view per experiment, rewritten by each sweep and report (the UI keeps 40 at most)
BASE_METRIC = "test_accuracy"  # always shown, beside the report's metric
DATASET_COLUMN = "attributes.`Dataset`"  # the grid's column ids: <kind>.`<name>`
# What the UI bundle must contain to open a saved view from a link.
UI_MARKERS = (links.VIEW_PARAM, VIEW_TAG, "Invalid saved-view envelope")


@dataclass(frozen=True)
class AblationView:
    """What the link shows: the runs of one sweep or experiment, one group per configuration."""

    name: str  # in the UI's Views menu
    run_filter: str  # MLflow search filter: the runs the report reads, their parent and report runs
    metric: str  # the report's metric: a column, the sort key
    factors: tuple[str, ...]  # the factors that vary: their tag columns and the grouping
    by_config_key: bool = False  # the configurations differ in more than those factors
    verdict_tags: tuple[str, ...] = ()  # the parent run's verdict tags: the parent row reads as the answer


def sweep_filter(sweep_id: str) -> str:
    return f"tags.`{schema.SWEEP_MEMBER.format(sweep_id)}` = '1'"


def experiment_filter(experiment_name: str) -> str:
    return f"tags.`{schema.EXPERIMENT}` = '{experiment_name}'"


def group_tags(view: AblationView) -> list[str]:
    """The tags whose values make one group per configuration (the config key when no factor varies)."""
    tags = [schema.FACTOR_TAG.format(f) for f in view.factors]
    return tags + [schema.CONFIG_KEY] if view.by_config_key or not tags else tags


def view_state(view: AblationView) -> dict:
    """The runs page's state: filter, sort, columns, grouping (mean over a group's runs)."""
    groups = group_tags(view)
    metrics = dict.fromkeys([BASE_METRIC, view.metric])
    columns = [DATASET_COLUMN, *(f"metrics.`{m}`" for m in metrics),
               *(f"tags.`{t}`" for t in [*groups, schema.SEED, *view.verdict_tags])]
    return {
        "searchFilter": view.run_filter,
        "orderByKey": f"metrics.`{view.metric}`",
        "orderByAsc": view.metric.endswith("loss"),  # the logged metrics where lower is better
        "selectedColumns": columns,
        "columnOrder": columns,  # the factors before the seed (the grid's own order: as tags arrive)
        "columnWidths": {DATASET_COLUMN: 400},  # name and digest unclipped
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": t} for t in groups]},
        # Runs outside every group (the sweep's parent, the report run) form the UI's "Unassigned"
        # group, closed unless opened under this id.
        "groupsExpanded": {",".join(f"tag.{t}" for t in groups): True},
        "runsHiddenMode": "SHOW_ALL",  # in the charts, every configuration (the UI's default: 10)
    }


@lru_cache(maxsize=1)
def ui_opens_saved_views() -> bool:
    """Whether the installed MLflow's UI opens a saved view from a link; says so once when not."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    wanted, found = {m.encode() for m in UI_MARKERS}, set()
    for script in sorted(bundle.glob("*.js")):
        text = script.read_bytes()
        found |= {m for m in wanted if m in text}
    if found != wanted:
        log.warning("MLflow %s's UI cannot open a saved view from a link (its bundle lacks %s): "
                    "the links open the plain runs page", mlflow.__version__,
                    ", ".join(sorted(m.decode() for m in wanted - found)))
    return found == wanted


def save_view(uri: str, experiment_id: str, view: AblationView) -> str:
    """Write ``view`` as the experiment's saved view; the link that opens it (the plain runs page
    where the installed UI cannot)."""
    if not ui_opens_saved_views():
        return links.runs_page(uri, experiment_id)
    now = int(time.time() * 1000)
    envelope = {"name": view.name, "createdAt": now, "updatedAt": now, "state": json.dumps(view_state(view))}
    MlflowClient(uri).set_experiment_tag(experiment_id, VIEW_TAG + VIEW_ID, json.dumps(envelope))
    return links.view_page(uri, experiment_id, VIEW_ID)


def experiment_link(ui: str, experiment) -> str:
    """The link to an experiment (an MLflow Experiment) on the UI at ``ui``: its ablation view once
    a sweep or report saved one, else its runs page."""
    if VIEW_TAG + VIEW_ID in experiment.tags and ui_opens_saved_views():
        return links.view_page(ui, experiment.experiment_id, VIEW_ID)
    return links.runs_page(ui, experiment.experiment_id)

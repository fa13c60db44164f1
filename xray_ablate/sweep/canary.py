"""audit.canary=true: the sweep's positive control. Once the sweep's own jobs (and adaptive rounds)
are done, one more job: the baseline configuration (report.baseline; its first seed) on the data
with the canary's planted marker (data/canary.py). Its run is tagged xray.kind=canary, so no factor
table, verdict or round reads it; the report reads it to say whether the shortcut checks saw it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from xray_ablate.config.load import Plan, expand_sweep
from xray_ablate.sweep.adaptive import baseline_cell, sweep_cells
from xray_ablate.sweep.lifecycle import Sweep

log = logging.getLogger(__name__)

CANARY_OVERRIDE = "dataset.canary=true"


def canary_job(plan: Plan) -> list[str]:
    """The overrides of the canary job: the baseline configuration's, its first seed, the marker."""
    cells = sweep_cells(plan)
    cell = cells[baseline_cell(cells, plan.configs[0])]
    # through the sweep's own expansion: a job's overrides as its outcome file will spell them
    return expand_sweep([*cell.overrides, f"seed={cell.seeds[0]}", CANARY_OVERRIDE])[0]


def run_canary(plan: Plan, sweep: Sweep, launch: Callable[[list[str]], None]) -> None:
    """Launch the canary job (``launch(overrides)``: one basic sweep, as the adaptive rounds do)."""
    job = canary_job(plan)
    log.info("canary run: %s", " ".join(job))
    sweep.next_launch([job])
    launch(job)

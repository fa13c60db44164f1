"""sweep.until=resolved: after the first seeds, rounds that add seeds only to the configurations
an unresolved claim needs, until every claim has a verdict or sweep.max_seeds is reached.

Each round reads what the sweep's runs predicted (through tracking/), judges every claim with
stats.claims.verdicts (the same verdicts the report shows), logs the round on the parent run and
launches the next seeds through Hydra's launcher, one launch per configuration (the next look's
seeds of one configuration are one basic sweep). A rerun of the same command redoes the rounds:
the finished jobs are skipped, so it resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from xray_ablate.config.factors import FACTORS, level, varied_factors
from xray_ablate.config.load import Plan
from xray_ablate.config.metrics import LOWER_IS_BETTER
from xray_ablate.config.schema import Config
from xray_ablate.errors import UserError
from xray_ablate.evaluation import PROB_COLUMNS
from xray_ablate.stats.claims import ablation_claims, unique_labels, verdicts
from xray_ablate.stats.intervals import image_scores
from xray_ablate.stats.verdicts import UNRESOLVED, SequentialDesign, Verdict, cells_to_extend, planned_looks
from xray_ablate.sweep.lifecycle import Sweep
from xray_ablate.tracking.keys import config_key
from xray_ablate.tracking.reader import sweep_predictions
from xray_ablate.tracking.recorder import Recorder
from xray_ablate.tracking.verdicts import record_round
from xray_ablate.train.device import select_device

log = logging.getLogger(__name__)


DEVICE_TYPES = ("cpu", "cuda", "mps")  # a config key holds the device type its jobs ran on


@dataclass
class Cell:
    """One configuration of the sweep: the overrides that select it (seed left out), its levels."""

    key: str  # its config key on this process's device
    overrides: list[str]
    levels: dict[str, str]
    seeds: list[int]
    keys: tuple[str, ...] = ()  # its config key on each device type, this process's first


def sweep_cells(plan: Plan) -> dict[str, Cell]:
    """The plan's configurations by config key, with the seeds the plan gives each."""
    varied = varied_factors(plan.configs)
    cells: dict[str, Cell] = {}
    for job, config in zip(plan.jobs, plan.configs, strict=True):
        here = select_device(config.device).type
        keys = tuple(dict.fromkeys(config_key(config, d) for d in (here, *DEVICE_TYPES)))
        key = keys[0]
        cell = cells.setdefault(key, Cell(key, [o for o in job if not o.startswith("seed=")],
                                          {f.name: level(config, f) for f in FACTORS if f.name in varied}, [], keys))
        cell.seeds.append(config.seed)
    return cells


def cell_scores(scores: dict[str, pd.DataFrame], cells: dict[str, Cell]) -> tuple[dict[str, pd.DataFrame],
                                                                                   dict[str, str]]:
    """``scores`` (by the runs' config keys) by cell, and the run key each cell's come from. The
    jobs may run on another device than this process (device=auto: a SLURM sweep submitted from a
    node without a GPU to GPU nodes), and their runs then carry the key for that device; a cell
    with runs on two device types counts those with the most seeds (they are not seeds of one
    configuration)."""
    found, used = {}, {}
    for key, cell in cells.items():
        present = [k for k in cell.keys if k in scores]
        if present:
            used[key] = max(present, key=lambda k: len(scores[k]))  # ties: this process's device first
            found[key] = scores[used[key]]
    return found, used


def baseline_cell(cells: dict[str, Cell], config: Config) -> str:
    """The cell at report.baseline's levels (null: any); the first cell when none is."""
    wanted = {k: str(v) for k, v in config.report.baseline.items() if v is not None}
    for key, cell in cells.items():
        if all(cell.levels.get(f, v) == v for f, v in wanted.items()):
            return key
    first = next(iter(cells))
    log.warning("no configuration of the sweep has report.baseline's levels %s: claims are against %s",
                wanted, cells[first].levels)
    return first


def scores_by_cell(predictions: dict[tuple[str, int], pd.DataFrame], metric: str) -> dict[str, pd.DataFrame]:
    """Cell -> seeds x image ids of per-image scores of report.metric (accuracy: correctness)."""
    rows: dict[str, dict[int, pd.Series]] = {}
    for (key, seed), p in predictions.items():
        probs = p[PROB_COLUMNS].to_numpy()
        rows.setdefault(key, {})[seed] = pd.Series(image_scores(p["label"].to_numpy(), probs, metric),
                                                  index=p["image_id"].to_numpy())
    return {key: pd.DataFrame(by_seed).T.sort_index() for key, by_seed in rows.items()}


def design_of(config: Config, first: int) -> SequentialDesign:
    return SequentialDesign(delta=config.sweep.delta / 100, alpha=config.report.alpha,
                            looks=planned_looks(first, config.sweep.max_seeds))


def keep_design(recorder: Recorder, design: SequentialDesign, delta: float) -> None:
    """Record the design's looks on the sweep's parent run, or, when a resumed sweep's parent holds
    other looks or another sweep.delta, refuse: a group-sequential design is fixed before its first
    look (its error rates assume it), and the report judges with the parent's. The sweep id hashes
    the command line, so a sweep.max_seeds or sweep.delta changed in an experiment file reopens the
    same parent."""
    recorded = recorder.client.get_run(recorder.run_id).data.params
    looks = ",".join(map(str, design.looks))
    changed = ([f"looks at {recorded['sweep.looks']} seeds (now {looks})"]
               if recorded.get("sweep.looks", looks) != looks else []) + \
              ([f"sweep.delta={recorded['sweep.delta']} (now {delta:g})"]
               if "sweep.delta" in recorded and float(recorded["sweep.delta"]) != delta else [])
    if changed:
        raise UserError(f"this sweep (parent run {recorder.run_id}) was designed with {' and '.join(changed)}: a "
                        "sequential design is fixed before its first look; rerun with its sweep.max_seeds and "
                        "sweep.delta, or start a new sweep (another tracking.experiment)")
    recorder.params({"sweep.looks": looks})


def run_rounds(plan: Plan, sweep: Sweep, launch: Callable[[list[str]], None]) -> list[Verdict]:
    """The rounds after the first launch; ``launch(overrides)`` runs one basic sweep of jobs."""
    config = plan.configs[0]
    metric = config.report.metric.removeprefix("test_")
    cells = sweep_cells(plan)
    first = min(len(c.seeds) for c in cells.values())
    design = design_of(config, first)
    base = baseline_cell(cells, config)
    levels = pd.DataFrame({k: c.levels for k, c in cells.items()}).T
    claims = ablation_claims(levels, base)
    names = unique_labels({k: ", ".join(f"{f}={v}" for f, v in c.levels.items()) or "no factor varied"
                           for k, c in cells.items()})
    keep_design(sweep.recorder, design, config.sweep.delta)
    log.info("adaptive sweep: %d claims, looks at %s seeds, δ = %g pp", len(claims),
             ", ".join(map(str, design.looks)), config.sweep.delta)
    for look in range(len(design.looks)):
        scores, used = cell_scores(scores_by_cell(sweep_predictions(
            config.tracking.uri, config.tracking.experiment, sweep.info.sweep_id), metric), cells)
        missing = [names[k] for k in cells if k not in scores]
        if missing:
            log.warning("no finished run of %s: the rounds stop here", "; ".join(missing))
            return []
        if look == 0:  # the report judges against the same configuration (its runs' key)
            sweep.recorder.params({"sweep.baseline": used[base]})
        judged = verdicts(claims, scores, design, higher_is_better=metric not in LOWER_IS_BETTER)
        last = look + 1 == len(design.looks)
        extend = [] if last else sorted(cells_to_extend(claims, {v.claim: v for v in judged}, scores,
                                                        seeds_left=design.looks[-1] - design.looks[look]))
        record_round(sweep.recorder, look + 1, judged, {names[k]: len(scores[k]) for k in cells})
        open_claims = sum(v.verdict == UNRESOLVED for v in judged)
        if extend:
            plan_note = f"; adding seeds to {len(extend)} configuration(s): {'; '.join(names[k] for k in extend)}"
        elif open_claims and not last:  # say why the rounds stop with claims open
            plan_note = (f"; the {open_claims} open claim(s) need more seeds than the "
                         f"{design.looks[-1] - design.looks[look]} per configuration that sweep.max_seeds="
                         f"{config.sweep.max_seeds} leaves: no further round")
        else:
            plan_note = ""
        print(f"round {look + 1}: {len(judged) - open_claims} of {len(judged)} claims resolved{plan_note}")
        if not extend:
            return judged
        for key in extend:
            have = sorted(scores[key].index)
            new = [have[-1] + 1 + i for i in range(design.looks[look + 1] - len(have))]
            if new:
                jobs = [[*cells[key].overrides, f"seed={s}"] for s in new]
                sweep.next_launch(jobs)
                launch([*cells[key].overrides, "seed=" + ",".join(map(str, new))])
    return judged

"""Each job writes one outcome file; the sweep summary is built from them, not from Hydra."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from xray_ablate.data.atomic import write_text_atomic

FINISHED, SKIPPED, FAILED = "finished", "skipped", "failed"
INTERRUPTED, NOT_STARTED = "interrupted", "not_started"  # by Ctrl-C: while running, before starting


@dataclass
class Outcome:
    job: int
    overrides: list[str]
    status: str
    run_id: str = ""
    error: str = ""
    train_seconds: float = 0.0

    def write(self, folder: Path) -> None:
        write_text_atomic(Path(folder) / f"{self.job:05d}.json", json.dumps(asdict(self)))


def read_outcomes(folder: Path) -> list[Outcome]:
    """Every outcome under ``folder``, in the folders of all its launches, in launch order (a job
    launched again: its last outcome comes last)."""
    def launch_order(path: Path) -> tuple:
        return tuple(int(part) if part.isdigit() else part
                     for part in re.split(r"(\d+)", path.relative_to(folder).as_posix()))

    return [Outcome(**json.loads(p.read_text())) for p in sorted(Path(folder).rglob("*.json"), key=launch_order)]


def summarize(planned: list[list[str]], outcomes: list[Outcome],
              interrupted: bool = False) -> tuple[dict[str, int], list[str]]:
    """Counts per status and one line per job that failed or left no outcome. Jobs are matched by
    their overrides, so the count holds whatever order a launcher ran them in. After Ctrl-C, a
    job without an outcome never started; otherwise its process died."""
    by_job = {tuple(sorted(o.overrides)): o for o in outcomes}
    counts = {FINISHED: 0, SKIPPED: 0, FAILED: 0, INTERRUPTED: 0, NOT_STARTED: 0}
    problems = []
    for overrides in planned:
        outcome = by_job.get(tuple(sorted(overrides)))
        if outcome is None:
            if interrupted:
                counts[NOT_STARTED] += 1
                continue
            counts[FAILED] += 1
            problems.append(f"  {' '.join(overrides)}: no outcome (the job process died or never ran)")
            continue
        counts[outcome.status] += 1
        if outcome.status == FAILED:
            problems.append(f"  {' '.join(overrides)}: {outcome.error}")
    return counts, problems

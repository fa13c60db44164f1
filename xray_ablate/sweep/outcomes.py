"""Each job writes one outcome file; the sweep summary is built from them, not from Hydra."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from xray_ablate.data.atomic import write_text_atomic

FINISHED, SKIPPED, FAILED = "finished", "skipped", "failed"


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
    return [Outcome(**json.loads(p.read_text())) for p in sorted(Path(folder).glob("*.json"))]


def summarize(planned: list[list[str]], outcomes: list[Outcome]) -> tuple[dict[str, int], list[str]]:
    """Counts per status and one line per job that failed or left no outcome."""
    by_job = {o.job: o for o in outcomes}
    counts = {FINISHED: 0, SKIPPED: 0, FAILED: 0}
    problems = []
    for job, overrides in enumerate(planned):
        outcome = by_job.get(job)
        if outcome is None:
            counts[FAILED] += 1
            problems.append(f"  {' '.join(overrides)}: no outcome (the job process died or never ran)")
            continue
        counts[outcome.status] += 1
        if outcome.status == FAILED:
            problems.append(f"  {' '.join(overrides)}: {outcome.error}")
    return counts, problems

"""The verdicts of a sweep's claims on its parent run: a tag per claim, per-round counts, a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

from xray_ablate.stats.claims import verdict_line
from xray_ablate.stats.verdicts import BETTER, EQUIVALENT, UNRESOLVED, WORSE, Verdict, verdict_table
from xray_ablate.tracking import schema
from xray_ablate.tracking.names import safe_name
from xray_ablate.tracking.recorder import Recorder

VERDICT_TAG = "verdict.{}"  # one per claim: "better: +13.2 pp [...] (...)"


def verdict_tag(claim: str) -> str:
    """The tag a claim's verdict is logged under, as MLflow stores it."""
    return safe_name(VERDICT_TAG.format(claim))


def record_verdicts(recorder: Recorder, verdicts: Sequence[Verdict]) -> None:
    """The current verdict of each claim as a tag of the parent run, and the table as an artifact;
    a verdict tag of a claim no longer judged is removed, so the tags are the table's claims."""
    tags = {verdict_tag(v.claim): verdict_line(v) for v in verdicts}
    for stale in set(recorder.client.get_run(recorder.run_id).data.tags) - set(tags):
        if stale.startswith(VERDICT_TAG.format("")):
            recorder.client.delete_tag(recorder.run_id, stale)
    recorder.tags(tags)
    recorder.table(verdict_table(verdicts), "sweep/verdicts.csv")


def tag_parent(uri: str, run_id: str, verdicts: Sequence[Verdict]) -> None:
    """The report's verdicts on the sweep's parent run (it has ended: no lifecycle around it)."""
    record_verdicts(Recorder(MlflowClient(uri), run_id), verdicts)


def tag_canary(uri: str, run_id: str, verdict: str) -> None:
    """The positive control's outcome, in words, as a tag of the sweep's parent run."""
    MlflowClient(uri).set_tag(run_id, schema.CANARY_VERDICT, verdict)


def record_round(recorder: Recorder, round_number: int, verdicts: Sequence[Verdict],
                 seeds: Mapping[str, int]) -> None:
    """One adaptive round: counts as metrics at step = round, its table and the seeds per configuration."""
    counts = pd.Series([v.verdict for v in verdicts]).value_counts()
    recorder.metrics({"round_runs": float(sum(seeds.values())),
                      **{f"round_{name}": float(counts.get(name, 0))
                         for name in (BETTER, WORSE, EQUIVALENT, UNRESOLVED)}}, step=round_number)
    recorder.table(verdict_table(verdicts), f"sweep/rounds/round-{round_number}.csv")
    recorder.json(dict(seeds), f"sweep/rounds/round-{round_number}-seeds.json")
    record_verdicts(recorder, verdicts)

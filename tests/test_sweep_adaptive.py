"""sweep.until=resolved on the real fixture: rounds that add seeds only where a claim is unresolved,
each round on the parent run, the final verdicts in the report and on the parent, and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import invoke_cli, mlflow_runs
from mlflow import MlflowClient

from xray_ablate.stats.claims import ablation_claims

ARGS = ("-m", "dataset=masked,raw", "class_weights=on,off", "sweep.until=resolved", "sweep.max_seeds=8",
        "image_size=32", "backbone=cnn16_gap", "trainer.epochs=2", "trainer.batch_size=8", "audit.enabled=false",
        "sweep.report=true", "tracking.experiment=adaptive")


@pytest.mark.slow
def test_adaptive_sweep_adds_seeds_only_where_a_claim_is_unresolved_and_resumes(monkeypatch, tmp_path, fixture_root,
                                                                              capsys):
    assert invoke_cli(monkeypatch, tmp_path, *ARGS, f"dataset.root={fixture_root}") == 0
    out = capsys.readouterr().out
    runs = mlflow_runs(tmp_path, "adaptive")
    assert {r.info.status for r in runs} == {"FINISHED"}
    (sweep,) = mlflow_runs(tmp_path, "adaptive", kind="sweep")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    looks = [int(n) for n in sweep.data.params["sweep.looks"].split(",")]
    assert looks[0] == 3 and looks[-1] == 8
    rounds = sorted(m.step for m in client.get_metric_history(sweep.info.run_id, "round_unresolved"))
    assert rounds == list(range(1, len(rounds) + 1)) and 1 <= len(rounds) <= len(looks)
    printed = [line for line in out.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in printed] == [f"round {r}" for r in rounds]

    seeds_by_round, tables = [], []
    for r in rounds:
        seeds_by_round.append(json.loads(Path(client.download_artifacts(
            sweep.info.run_id, f"sweep/rounds/round-{r}-seeds.json", str(tmp_path))).read_text()))
        tables.append(pd.read_csv(client.download_artifacts(sweep.info.run_id, f"sweep/rounds/round-{r}.csv",
                                                            str(tmp_path))))
    assert set(seeds_by_round[0].values()) == {3}
    # the configurations given seeds after a round are exactly those of its unresolved claims that
    # the seeds left in the budget can resolve
    names = sorted(seeds_by_round[0])
    levels = pd.DataFrame([dict(part.split("=") for part in name.split(", ")) for name in names], index=names)
    baseline = "dataset=masked, class_weights=off"
    cells = {c.name: set(c.weights) for c in ablation_claims(levels, baseline)}
    for look, (before, after, table) in enumerate(zip(seeds_by_round, seeds_by_round[1:], tables, strict=False)):
        seeds_left = looks[-1] - looks[look]
        open_claims = table[(table["verdict"] == "unresolved") & ~(table["more_seeds"] > seeds_left)]
        wanted = set().union(*(cells[c] for c in open_claims["claim"]))
        assert {k for k in names if after[k] > before[k]} == wanted
        assert all(after[k] in looks for k in wanted)
    last = tables[-1]
    print(last.to_string())  # the verdicts, for the log
    assert len(last) == 5 and set(last["verdict"]) <= {"better", "worse", "equivalent", "unresolved"}
    assert len(runs) == sum(seeds_by_round[-1].values())

    # the final verdicts: the report's first table and the parent's tags
    assert "## Verdicts" in out and out.index("## Verdicts") < out.index("## Summary")
    tags = client.get_run(sweep.info.run_id).data.tags
    verdict_tags = {k: v for k, v in tags.items() if k.startswith("verdict.")}
    assert len(verdict_tags) == 5
    assert all(v.split(":")[0] in {"better", "worse", "equivalent", "unresolved"} for v in verdict_tags.values())

    # the same command again: every job is found finished, the rounds end where they ended
    assert invoke_cli(monkeypatch, tmp_path, *ARGS, f"dataset.root={fixture_root}") == 0
    again = capsys.readouterr().out
    assert len(mlflow_runs(tmp_path, "adaptive")) == len(runs)
    assert f"{len(runs)} jobs: 0 finished, {len(runs)} skipped" in again


def test_a_resumed_sweep_keeps_its_sequential_design(tmp_path):
    """The parent run of an adaptive sweep records its looks; a rerun that plans others (or another
    sweep.delta), as a sweep.max_seeds changed in the experiment file does under the same sweep id,
    is refused before any round: the rounds would judge under one design and the report under the
    parent's (worse at 8 seeds against unresolved at 5 on the same runs)."""
    from xray_ablate.errors import UserError
    from xray_ablate.stats.verdicts import SequentialDesign
    from xray_ablate.sweep.adaptive import keep_design
    from xray_ablate.tracking.recorder import Recorder
    from xray_ablate.tracking.store import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(connect(uri, "adaptive", str(tmp_path / "artifacts"))).info.run_id
    Recorder(client, run_id).params({"sweep.delta": 2.0})
    keep_design(Recorder(client, run_id), SequentialDesign(0.02, (3, 5)), 2.0)
    keep_design(Recorder(client, run_id, reopened=True), SequentialDesign(0.02, (3, 5)), 2.0)  # the same: fine
    assert client.get_run(run_id).data.params["sweep.looks"] == "3,5"
    for looks, delta, said in (((3, 4, 5, 8), 2.0, "looks at 3,5 seeds (now 3,4,5,8)"),
                               ((3, 5), 1.0, "sweep.delta=2.0 (now 1)")):
        with pytest.raises(UserError, match=r"designed with " + said.replace("(", r"\(").replace(")", r"\)")):
            keep_design(Recorder(client, run_id, reopened=True), SequentialDesign(delta / 100, looks), delta)
    assert client.get_run(run_id).data.params["sweep.looks"] == "3,5"


def test_the_rounds_read_the_runs_of_the_current_data_only(tmp_path):
    """The same adaptive command after the dataset changed keeps its sweep id and retrains the
    planned seeds 0-2; seeds 3-4, which a round added before, are still on the old data. The rounds
    judged each configuration on runs of both datasets; they read those of the newest run's data."""
    from xray_ablate.tracking import schema
    from xray_ablate.tracking.reader import sweep_predictions
    from xray_ablate.tracking.store import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = connect(uri, "adaptive", str(tmp_path / "artifacts"))
    client = MlflowClient(uri)
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 60_000))
    for fingerprint, seeds in (("old", range(5)), ("new", range(3))):
        for key in ("masked", "raw"):
            for seed in seeds:
                tags = {schema.KIND: "train", schema.SWEEP_MEMBER.format("sw"): "1", schema.CONFIG_KEY: key,
                        schema.SEED: str(seed), schema.FINGERPRINT: fingerprint, schema.SPLIT_MODE: "fixed",
                        schema.SPLIT_HASH: f"split-{fingerprint}"}
                run_id = client.create_run(exp, start_time=next(clock), tags=tags).info.run_id
                client.log_text(run_id, f"image_id,label\nimg-{fingerprint},0\n", schema.PREDICTIONS)
                client.set_terminated(run_id, "FINISHED")
    found = sweep_predictions(uri, "adaptive", "sw")
    assert sorted(found) == [(k, s) for k in ("masked", "raw") for s in range(3)]
    assert {frame["image_id"].iloc[0] for frame in found.values()} == {"img-new"}


def test_the_rounds_find_runs_that_ran_on_another_device():
    """device=auto: a SLURM sweep submitted from a node without a GPU runs its jobs on GPU nodes,
    whose runs carry the config key for cuda. The rounds looked them up under this process's
    (cpu) keys, found none and stopped before the first look; they now take each configuration's
    runs under any device's key, those with the most seeds where two devices ran it."""
    import numpy as np

    from xray_ablate.config.load import plan
    from xray_ablate.sweep.adaptive import cell_scores, sweep_cells

    cells = sweep_cells(plan(["dataset=demo", "dataset.mode=masked,raw", "sweep.until=resolved", "device=cpu"],
                             multirun=True))
    cuda = {key: next(k for k in cell.keys if k != key) for key, cell in cells.items()}  # (cpu, cuda, mps)
    scores = {cuda[key]: pd.DataFrame(np.ones((3, 4))) for key in cells}
    masked = next(iter(cells))
    scores[masked] = pd.DataFrame(np.zeros((2, 4)))  # two seeds on the cpu too: not pooled with the 3
    found, used = cell_scores(scores, cells)
    assert used == cuda and all(len(found[key]) == 3 and found[key].eq(1).all().all() for key in cells)


def test_a_seed_launched_again_counts_once_with_its_last_outcome(tmp_path, monkeypatch):
    """Seed 2 of the plan failed; a round asks for seeds 2 and 3 (after the highest finished one),
    so seed 2 is launched again and finishes. The summary counted 5 jobs with 5 finished for 4
    runs, and hid the failure's retry; outcome folders also sorted as text (launch-10 before
    launch-2), so a later launch's outcome could lose to an earlier one's."""
    from xray_ablate.sweep.lifecycle import Sweep
    from xray_ablate.sweep.outcomes import Outcome, read_outcomes, summarize
    from xray_ablate.sweep.state import SweepInfo

    monkeypatch.setattr(SweepInfo, "export", lambda self: None)  # no environment for a sweep that is not running
    plan = [["dataset.mode=masked", f"seed={s}"] for s in range(3)]
    sweep = Sweep(SweepInfo("sw", "parent", str(tmp_path / "launch-0"), "1"), None, [list(j) for j in plan])
    for s in range(3):
        Outcome(s, plan[s], "failed" if s == 2 else "finished").write(tmp_path / "launch-0")
    round_jobs = [["dataset.mode=masked", f"seed={s}"] for s in (2, 3)]
    sweep.next_launch(round_jobs)
    for i, job in enumerate(round_jobs):
        Outcome(i, job, "finished").write(tmp_path / "launch-1")
    for launch in range(2, 11):  # seed 3 again in launches 2-10: failed in 2-9, finished in 10
        Outcome(0, round_jobs[1], "finished" if launch == 10 else "failed").write(tmp_path / f"launch-{launch}")
    counts, problems = summarize(sweep.jobs, read_outcomes(tmp_path))
    assert len(sweep.jobs) == 4 and counts["finished"] == 4 and counts["failed"] == 0 and not problems

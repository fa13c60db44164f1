"""Sweeps through hydra/launcher=slurm_local on a real SLURM (CI starts a single-node one with
.ci/slurm-single-node.sh) and a tracking server on 127.0.0.1: the command the README shows, resume,
`scancel` and a preemption with requeue."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_sweep import mlflow_server, train_runs  # noqa: F401

from xray_ablate.errors import UserError
from xray_ablate.paths import project_root
from xray_ablate.tracking import schema
from xray_ablate.tracking.resume import PID_TAG, SLURM_TAG


@pytest.fixture(scope="module")
def slurm() -> None:
    """A SLURM that answers; under CI=true its absence fails the test instead of skipping it."""
    answers = shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    if not answers:
        message = "no SLURM here (sinfo missing or not answering): start one with .ci/slurm-single-node.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if os.environ.get("CI") == "true":  # CI's SLURM talks over 127.0.0.1 only (so does the tracking server)
        show = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
        show += subprocess.run(["scontrol", "show", "nodes", "-o"], capture_output=True, text=True).stdout
        hosts = re.findall(r"SlurmctldHost\[\d+\]\s*=\s*(\S+)", show) + re.findall(r"NodeAddr=(\S+)", show)
        hosts = [h.split("(")[-1].rstrip(")") for h in hosts]  # name(address) or name
        assert hosts and all(ipaddress.ip_address(socket.gethostbyname(h)).is_loopback for h in hosts), hosts


def sweep(root: Path, synthetic: Path, server: str, *args: str, wait: bool = True):
    """`python -m xray_ablate -m hydra/launcher=slurm_local ...` as a user types it; the SLURM jobs
    run this checkout (PYTHONPATH) with this environment (sbatch passes it on). Job states are
    polled every 2 s at most (sweep.slurm_poll_s), so a job that died is noticed in seconds."""
    command = [sys.executable, "-m", "xray_ablate", "-m", "hydra/launcher=slurm_local", f"paths.root_dir={root}",
               "dataset=masked", f"dataset.root={synthetic}", "image_size=32", "backbone=cnn16_gap",
               "trainer.batch_size=8", "tracking.system_metrics=false", "tracking.log_checkpoint=false",
               "tracking.log_figures=false",
               f"tracking.uri={server}", "sweep.slurm_poll_s=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XRAY_ABLATE_CACHE": str(root / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    return process.communicate(timeout=600)[0] if wait else process


def test_the_job_state_poll_is_configurable_and_checked(make_cfg):
    from submitit.slurm.slurm import SlurmJob

    from xray_ablate.sweep.launchers.slurm import StateWatcher, _quiet_jobs

    default = SlurmJob.watcher
    with _quiet_jobs(make_cfg("sweep.slurm_poll_s=2").sweep.slurm_poll_s):
        assert isinstance(SlurmJob.watcher, StateWatcher) and SlurmJob.watcher._delay_s == 2
    assert SlurmJob.watcher is default
    assert make_cfg().sweep.slurm_poll_s == 60
    with pytest.raises(UserError, match=r"sweep.slurm_poll_s must be >= 1, not 0"):
        make_cfg("sweep.slurm_poll_s=0")


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")  # one SLURM node: its two sweeps one after the other
def test_a_slurm_sweep_finishes_and_a_rerun_skips_every_job(tmp_path, synthetic_root, mlflow_server, slurm):  # noqa: F811
    assert mlflow_server.startswith("http://127.0.0.1:")
    out = sweep(tmp_path, synthetic_root, mlflow_server, "seed=0,1", "trainer.epochs=1")
    assert "2 jobs: 2 finished, 0 skipped (already finished), 0 failed" in out, out[-3000:]
    runs = train_runs(mlflow_server, "FINISHED")
    assert sorted(r.data.tags[schema.SEED] for r in runs) == ["0", "1"]
    assert len({r.data.tags[SLURM_TAG] for r in runs}) == 2  # two SLURM array tasks ran them
    assert "Bypassing" not in out  # submitit's sacct warnings (accounting is off here)
    states = [line.split("SLURM jobs: ")[1] for line in out.splitlines() if "SLURM jobs: " in line]
    assert states and all(a != b for a, b in zip(states, states[1:], strict=False))  # one line per change
    assert any("running" in s for s in states)

    again = sweep(tmp_path, synthetic_root, mlflow_server, "seed=0,1", "trainer.epochs=1")
    assert "2 jobs: 0 finished, 2 skipped (already finished), 0 failed" in again, again[-3000:]
    assert len(train_runs(mlflow_server)) == 2


EPOCHS = 30  # still training when signalled: each signal goes out once its job has logged an epoch


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_scancel_and_preemption_on_slurm(tmp_path, synthetic_root, mlflow_server, slurm):  # noqa: F811
    """seed 0 is cancelled while it trains (SIGTERM): its run ends KILLED with the reason and the
    sweep counts it failed. seed 1 gets submitit's SIGUSR2 (a preemption): it writes its checkpoint,
    submitit requeues it, and the requeued job finishes the same MLflow run from that epoch. seed 2
    is killed hard (SIGKILL: no result, no outcome); trainer.checkpoint_every=1 kept its last epoch.
    (The job's process is on this machine: the single-node SLURM.)
    The rerun trains only seeds 0 and 2, each from its checkpoint, in its run."""
    args = ("seed=0,1,2", f"trainer.epochs={EPOCHS}", "trainer.checkpoint_every=1")
    process = sweep(tmp_path, synthetic_root, mlflow_server, *args, wait=False)
    try:
        # each signalled as soon as it trains: the jobs may start seconds apart
        subprocess.run(["scancel", training_jobs(mlflow_server, {"0"})["0"]], check=True)
        job_1 = training_jobs(mlflow_server, {"1"})["1"]
        subprocess.run(["scancel", "--signal=USR2", job_1], check=True)
        start_when_requeued(job_1)
        # the job's python killed as by the OOM killer (scancel --signal=KILL cancels: SIGTERM first)
        os.kill(int(training_jobs(mlflow_server, {"2"}, epochs=2, tag=PID_TAG)["2"]), signal.SIGKILL)
        out = process.communicate(timeout=600)[0]
    finally:
        if process.poll() is None:  # the test failed half-way: stop the sweep and its SLURM jobs
            process.kill()
            jobs = {p.name.split("_")[0] for p in tmp_path.glob("multirun/*/*/.submitit/*") if p.name[0].isdigit()}
            subprocess.run(["scancel", *jobs], check=False)
    assert "3 jobs: 1 finished, 0 skipped (already finished), 2 failed" in out, out[-3000:]
    assert "SIGTERM (cancelled, timed out or preempted): checkpoint after epoch" in out
    assert re.search(r"SLURM job \d+_2 ended without a result", out)
    assert "seed=2 " in out.split("failed jobs:")[1] and "no outcome (the job process died or never ran)" in out
    runs = {r.data.tags[schema.SEED]: r for r in train_runs(mlflow_server)}
    assert len(runs) == 3  # the requeued job went on in its run
    assert runs["0"].info.status == "KILLED"
    assert runs["0"].data.tags["xray.error"].startswith("Stopped: SIGTERM (cancelled, timed out or preempted)")
    assert runs["1"].info.status == "FINISHED"
    assert epochs_logged(mlflow_server, runs["1"].info.run_id) == list(range(1, EPOCHS + 1))  # each once
    assert runs["2"].info.status == "RUNNING"  # SIGKILL: nothing could end it

    again = sweep(tmp_path, synthetic_root, mlflow_server, *args)
    assert "3 jobs: 2 finished, 1 skipped (already finished), 0 failed" in again, again[-3000:]
    rerun = {r.data.tags[schema.SEED]: r for r in train_runs(mlflow_server)}
    assert {seed: r.info.run_id for seed, r in rerun.items()} == {seed: r.info.run_id for seed, r in runs.items()}
    assert all(r.info.status == "FINISHED" for r in rerun.values())
    assert epochs_logged(mlflow_server, runs["0"].info.run_id) == list(range(1, EPOCHS + 1))
    # a hard kill between recording an epoch and writing its checkpoint redoes that one epoch
    assert sorted(set(epochs_logged(mlflow_server, runs["2"].info.run_id))) == list(range(1, EPOCHS + 1))


def training_jobs(server: str, seeds: set[str], epochs: int = 1, tag: str = SLURM_TAG,
                  timeout: float = 300) -> dict[str, str]:
    """seed -> SLURM job (or ``tag``) of the runs of ``seeds``, once each has logged ``epochs`` epochs (with
    trainer.checkpoint_every=1, epoch n logged means epoch n - 1 is on disk)."""
    client, deadline = MlflowClient(server), time.time() + timeout
    while time.time() < deadline:
        found = client.get_experiment_by_name("xray-ablate")  # the sweep creates it
        runs = [r for r in train_runs(server, "RUNNING") if r.data.tags[schema.SEED] in seeds] if found else []
        if len(runs) == len(seeds) and all(len(client.get_metric_history(r.info.run_id, "val_loss")) >= epochs
                                            for r in runs):
            return {r.data.tags[schema.SEED]: r.data.tags[tag] for r in runs}
        time.sleep(0.5)
    raise AssertionError(f"seeds {seeds} not training after {timeout} s")


def start_when_requeued(job: str, timeout: float = 120) -> None:
    """SLURM holds a requeued job for AuthInfo's cred_expire (120 s by default): start it now."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if state.strip() == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            return
        time.sleep(0.5)
    raise AssertionError(f"SLURM job {job} not requeued after {timeout} s")


def epochs_logged(server: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(server).get_metric_history(run_id, "val_loss"))

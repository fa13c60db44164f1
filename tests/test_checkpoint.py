"""A stopped run resumes from its checkpoint and ends with the numbers of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import sys

import pandas as pd
import pytest
import torch
from conftest import invoke_cli, mlflow_runs
from mlflow.tracking import MlflowClient

from xray_ablate.errors import Stopped
from xray_ablate.sweep.job import load_data
from xray_ablate.sweep.signals import hand_over, raise_pending, remember_ctrl_c, stop_on_signals
from xray_ablate.train.checkpoint import Checkpointer, _numpy_state_from_tensors
from xray_ablate.train.fit import fit
from xray_ablate.train.inputs import prepare_inputs

TIMINGS = ("train_seconds", "train_images_per_second")
# the cosine schedule, augmentation (the generator, on by default) and Adam's state all have to come back
TRAINING = ("trainer.epochs=3", "trainer.lr_schedule=cosine")


def _same_result(a, b) -> None:
    pd.testing.assert_frame_equal(a.history, b.history)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    assert {k: v for k, v in a.metrics.items() if k not in TIMINGS} == \
        {k: v for k, v in b.metrics.items() if k not in TIMINGS}
    assert a.best_epoch == b.best_epoch


@pytest.mark.parametrize("how", ["signal", "periodic"])
def test_stopped_run_resumes_with_the_same_numbers(make_cfg, tmp_path, how):
    """signal: SIGTERM at epoch 2 writes the checkpoint (checkpoint_every=0). periodic: a crash at
    epoch 3 that writes nothing; checkpoint_every=2 left epoch 2 on disk."""
    config = make_cfg(*TRAINING)
    data = load_data(config)
    inputs = prepare_inputs(config, data)
    cpu = torch.device("cpu")
    uninterrupted = fit(config, data, inputs, cpu)

    path, key = tmp_path / "run.pt", {"config_key": "abc", "seed": 0}
    every, stop_at = (0, 2) if how == "signal" else (2, 3)
    first = Checkpointer(path, every, key)
    assert first.resume is None

    def stop(row: dict) -> None:
        if row["epoch"] == stop_at:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises Stopped here
            raise RuntimeError("hard kill")

    with pytest.raises(Stopped if how == "signal" else RuntimeError) as stopped, stop_on_signals(first.save):
        fit(config, data, inputs, cpu, on_epoch=stop, checkpoint=first)
    if how == "signal":
        assert str(stopped.value) == "SIGTERM (cancelled, timed out or preempted): checkpoint after epoch 2"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    again = Checkpointer(path, every, key)
    assert again.resume.epoch == 2 and len(again.resume.progress["history"]) == 2
    epochs_seen = []
    resumed = fit(config, data, inputs, cpu, on_epoch=lambda row: epochs_seen.append(row["epoch"]), checkpoint=again)
    assert epochs_seen == [3]  # only the epoch that was lost
    _same_result(resumed, uninterrupted)

    assert Checkpointer(path, every, {**key, "seed": 1}).resume is None  # another run's file is not used


def test_submitits_signal_goes_on_to_submitit_after_the_run_has_ended():
    """SIGUSR2 (submitit's): Stopped first, then the handler from before (submitit's requeue), whose
    refusal is the reason returned; SIGTERM is not handed on."""
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(Stopped) as stopped, stop_on_signals(lambda: None):
            os.kill(os.getpid(), signal.SIGUSR2)
        assert str(stopped.value) == "SIGUSR2 (time limit or preemption ahead): no epoch finished, nothing to keep"
        assert calls == []  # nothing requeued while the run was still open
        assert hand_over(stopped.value) == "Job not requeued because: timed-out too many times."
        assert calls == [signal.SIGUSR2]
        assert hand_over(Stopped(signal.SIGTERM, "x")) == "" and calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


class _SignalInFinalizer:
    """Its __del__ runs the handler of ``signum``, as a signal landing in a garbage-collection
    callback does; Python drops what __del__ raises."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        signal.getsignal(self.signum)(self.signum, None)


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Stopped)])
def test_a_stop_dropped_in_a_finalizer_is_raised_at_the_next_check(signum, stop, monkeypatch, python_ctrl_c):
    """The CI failure this guards: Ctrl-C landed in SQLAlchemy's weakref callback ("Exception ignored
    in ... KeyboardInterrupt") and the sweep ran on to exit 0."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)  # where "Exception ignored" is printed
    context = remember_ctrl_c() if signum == signal.SIGINT else stop_on_signals(lambda: 2)
    with context:
        _SignalInFinalizer(signum)  # garbage at once: its exception goes to the hook, not up here
        assert [type(d.exc_value) for d in dropped] == [stop]
        with pytest.raises(stop):
            raise_pending()
    raise_pending()  # the context has ended: nothing is pending any more
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
@pytest.mark.parametrize("logged", [True, False], ids=["after-logging", "while-logging"])
def test_sweep_job_stopped_by_sigterm_resumes_in_its_run(monkeypatch, tmp_path, capsys, synthetic_root, cache_dir,
                                                         logged):
    """A SIGTERM to a sweep whose job trains in its process (the basic launcher): the run ends
    KILLED with the reason and the sweep stops as on Ctrl-C; the rerun continues the same MLflow
    run from the checkpoint and finishes it with the metrics of an uninterrupted run (another
    experiment, same config and seed), every epoch logged once, also when the signal landed
    before epoch 2's metrics reached MLflow. The rerun adds trainer.checkpoint_every=1 (the README's
    advice after a hard kill; outside the config key) and runs newer code: the run keeps its
    first params and says what changed, where MLflow's refusal to change a param failed every
    retry, and its code version names both, where the newer one overwrote the older. Jobs in their
    own processes: tests/test_slurm.py."""
    import xray_ablate.sweep.job as job
    import xray_ablate.tracking.run_info as run_info

    args = ("-m", f"dataset.root={synthetic_root}", "image_size=32", "backbone=cnn16_gap", "trainer.batch_size=8",
            "seed=0", *TRAINING)
    record_epoch = job.record_epoch

    def term_at_2(recorder, row):
        if logged or row["epoch"] != 2:
            record_epoch(recorder, row)
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(job, "record_epoch", term_at_2)
    monkeypatch.setattr(run_info, "code_version", lambda: "commit-old")
    assert invoke_cli(monkeypatch, tmp_path, *args, "tracking.experiment=stopped") == 130
    assert "1 jobs: 0 finished, 0 skipped (already finished), 0 failed, 1 interrupted, 0 not started" in \
        capsys.readouterr().out
    (killed,) = mlflow_runs(tmp_path, "stopped")
    assert killed.info.status == "KILLED"
    assert killed.data.tags["xray.error"] == \
        "Stopped: SIGTERM (cancelled, timed out or preempted): checkpoint after epoch 2"
    assert list((cache_dir / "checkpoints").glob("stopped-*-0.pt"))

    monkeypatch.setattr(job, "record_epoch", record_epoch)
    monkeypatch.setattr(run_info, "code_version", lambda: "commit-new")
    assert invoke_cli(monkeypatch, tmp_path, *args, "tracking.experiment=stopped", "trainer.checkpoint_every=1") == 0
    assert "1 jobs: 1 finished, 0 skipped (already finished), 0 failed" in capsys.readouterr().out
    assert invoke_cli(monkeypatch, tmp_path, *args, "tracking.experiment=straight") == 0
    (resumed,) = mlflow_runs(tmp_path, "stopped")
    (straight,) = mlflow_runs(tmp_path, "straight")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert "xray.error" not in resumed.data.tags
    assert resumed.data.params["trainer.checkpoint_every"] == "0"
    assert resumed.data.tags["xray.resumed_params"] == "trainer.checkpoint_every: 0 -> 1"
    assert resumed.data.tags["xray.code_version"] == "commit-old then commit-new"
    assert not list((cache_dir / "checkpoints").glob("*.pt"))  # removed once finished
    final = [k for k in straight.data.metrics if k.startswith(("test_", "best_", "val_"))]
    assert final and {k: resumed.data.metrics[k] for k in final} == {k: straight.data.metrics[k] for k in final}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    curves = [sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train_loss"))
              for r in (resumed, straight)]
    assert curves[0] == curves[1] and [step for step, _ in curves[0]] == list(range(1, len(curves[0]) + 1))


def test_checkpoint_every_is_checked_and_does_not_change_the_config_key(make_cfg):
    from xray_ablate.errors import UserError
    from xray_ablate.tracking.keys import config_key

    assert config_key(make_cfg("trainer.checkpoint_every=2"), "cpu") == config_key(make_cfg(), "cpu")
    with pytest.raises(UserError, match=r"trainer.checkpoint_every must be >= 0, not -1"):
        make_cfg("trainer.checkpoint_every=-1")


class _WritesMarker:
    """Unpickling this creates the marker file: a crafted resume checkpoint (issue 30)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _job_checkpoint_path(make_cfg, cache_dir, experiment: str, *overrides: str):
    from xray_ablate.tracking.keys import config_key

    return cache_dir / "checkpoints" / f"{experiment}-{config_key(make_cfg(*overrides), 'cpu')}-0.pt"


@pytest.mark.parametrize("planted", ["crafted", "older-format"])
def test_a_planted_checkpoint_is_never_unpickled_and_the_job_trains_from_the_start(
        monkeypatch, tmp_path, capsys, make_cfg, synthetic_root, cache_dir, planted):
    """A pickle that runs code, or a state in the format before plain tensors (NumPy arrays in it),
    at a job's checkpoint path: neither is unpickled, one warning names the file, the run finishes."""
    import numpy as np

    overrides = ("image_size=32", "backbone=cnn16_gap", "trainer.batch_size=8", "trainer.epochs=1", "seed=0")
    path = _job_checkpoint_path(make_cfg, cache_dir, "planted", *overrides)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    payload = _WritesMarker(marker) if planted == "crafted" else {"epoch": 1, "rng": {"numpy": np.random.get_state()}}
    torch.save(payload, path)
    assert invoke_cli(monkeypatch, tmp_path, "-m", f"dataset.root={synthetic_root}", *overrides,
                      "tracking.experiment=planted") == 0
    assert not marker.exists()
    printed = capsys.readouterr()
    warnings = [line.split(" - ", 1)[1] for line in (printed.out + printed.err).splitlines() if str(path) in line]
    assert warnings == [f"checkpoint {path} holds objects other than tensors and plain values (an older format or "
                        "a crafted file); not unpickled: training from the start"]
    (run,) = mlflow_runs(tmp_path, "planted")
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_run"] == 1


def test_a_written_checkpoint_holds_tensors_and_plain_values_only(make_cfg, tmp_path):
    """What fit() keeps loads with weights_only=True, NumPy's generator state included."""
    import numpy as np

    config = make_cfg(*TRAINING)
    data = load_data(config)
    first = Checkpointer(tmp_path / "run.pt", 1, {"config_key": "abc", "seed": 0})
    fit(config, data, prepare_inputs(config, data), torch.device("cpu"), checkpoint=first)
    first.save()
    expected = np.random.rand(3)
    stored = torch.load(tmp_path / "run.pt", weights_only=True)
    assert stored["format"] == "xray-ablate-train-state/2" and stored["epoch"] == 3
    resume = Checkpointer(tmp_path / "run.pt", 1, {"config_key": "abc", "seed": 0}).resume
    assert resume is not None and resume.epoch == 3
    np.random.set_state(_numpy_state_from_tensors(resume.rng["numpy"]))
    assert np.array_equal(np.random.rand(3), expected)

"""Sweeps: default seeds, resume, failure isolation, a killed sweep, parallel launchers."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from conftest import invoke_cli
from mlflow.tracking import MlflowClient

from xray_ablate.config import load
from xray_ablate.tracking import schema


def base_overrides(root: Path, synthetic: Path) -> list[str]:
    """Tiny jobs; no saliency audit (these tests are about the sweep: tests/test_audit*.py and the
    experiments' sweeps audit) and no per-run figures (tests/test_train.py checks them)."""
    return ["dataset=masked", f"dataset.root={synthetic}", "image_size=32", "backbone=cnn16_gap",
            "trainer.epochs=1", "trainer.batch_size=8", "num_workers=1", "tracking.log_checkpoint=false",
            "tracking.log_figures=false", "audit.enabled=false"]


def run_sweep(monkeypatch, root: Path, synthetic: Path, *args: str) -> int:
    return invoke_cli(monkeypatch, root, "-m", *base_overrides(root, synthetic), *args)


def train_runs(uri: str, status: str | None = None):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("xray-ablate")
    query = f"tags.`{schema.KIND}` = 'train'" + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([experiment.experiment_id], query, max_results=1000)


def sqlite_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def keys(runs) -> Counter:
    return Counter((r.data.tags[schema.CONFIG_KEY], r.data.tags[schema.SEED]) for r in runs)


@pytest.mark.parametrize("overrides, expected", [
    ([], 12), (["repeats=2"], 8), (["seed=0,1"], 8), (["seed=range(5)"], 20), (["repeats=1"], 4),
])
@pytest.mark.slow
def test_seeds_are_repeated_by_default(overrides, expected):
    jobs = load.plan(["dataset=masked,raw", "class_weights=on,off", *overrides], multirun=True).jobs
    assert len(jobs) == expected
    assert len({tuple(sorted(j)) for j in jobs}) == expected


@pytest.mark.slow
def test_sweep_runs_every_config_and_seed_once_and_resumes(monkeypatch, tmp_path, synthetic_root, capsys):
    args = ["dataset.mode=masked,raw", "class_weights=on,off", "repeats=2"]
    assert run_sweep(monkeypatch, tmp_path, synthetic_root, *args) == 0
    runs = train_runs(sqlite_uri(tmp_path), "FINISHED")
    assert len(runs) == 8 and len(keys(runs)) == 8
    assert set(keys(runs).values()) == {1}
    parents = {r.data.tags[schema.PARENT_RUN] for r in runs}
    assert len(parents) == 1
    parent = MlflowClient(sqlite_uri(tmp_path)).get_run(parents.pop())
    assert parent.data.tags[schema.KIND] == "sweep" and parent.info.status == "FINISHED"
    assert "8 finished, 0 skipped" in capsys.readouterr().out

    # The same sweep again, seeds now explicit: nothing new runs.
    assert run_sweep(monkeypatch, tmp_path, synthetic_root, "dataset.mode=masked,raw",
                     "class_weights=on,off", "seed=0,1") == 0
    assert len(train_runs(sqlite_uri(tmp_path))) == 8
    assert "0 finished, 8 skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_an_evaluation_added_to_a_finished_sweep_is_done_not_skipped(monkeypatch, tmp_path, synthetic_root, capsys):
    """eval.* is not in the config key: a rerun that adds an external set or subgroup attribute
    found the finished runs and skipped them, so the evaluation asked for was silently not done."""
    from xray_ablate.data.synthetic import generate

    assert run_sweep(monkeypatch, tmp_path, synthetic_root, "repeats=2") == 0
    first = {r.info.run_id for r in train_runs(sqlite_uri(tmp_path), "FINISHED")}
    external = generate(tmp_path / "ext", n=12, seed=5, size=96)
    evaluate = [f"eval.sets=[{{name: ext, root: '{external}'}}]", "eval.subgroups=[Marker]"]
    capsys.readouterr()
    assert run_sweep(monkeypatch, tmp_path, synthetic_root, "repeats=2", *evaluate) == 0
    out = capsys.readouterr().out
    assert "2 finished, 0 skipped" in out
    assert out.count("finished without eval.sets ext, eval.subgroups Marker (asked for since): this job trains "
                     "again to evaluate it") == 2
    new = [r for r in train_runs(sqlite_uri(tmp_path), "FINISHED") if r.info.run_id not in first]
    assert len(new) == 2 and all("ext_ext_accuracy" in r.data.metrics and "probe_Marker_accuracy" in r.data.metrics
                                 for r in new)
    assert run_sweep(monkeypatch, tmp_path, synthetic_root, "repeats=2", *evaluate) == 0  # now evaluated: skipped
    assert "0 finished, 2 skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(monkeypatch, tmp_path, synthetic_root, capsys):
    from xray_ablate.sweep import job

    real_fit = job.fit

    def fit_failing_at_lr_2e3(config, *args, **kwargs):  # a bug that only one configuration meets
        if config.trainer.lr == 0.002:
            raise ValueError("injected failure")
        return real_fit(config, *args, **kwargs)

    monkeypatch.setattr(job, "fit", fit_failing_at_lr_2e3)
    code = run_sweep(monkeypatch, tmp_path, synthetic_root, "trainer.lr=0.002,0.001", "seed=0,1")
    out = capsys.readouterr().out
    assert code == 1
    assert "2 finished, 0 skipped (already finished), 2 failed" in out
    assert "trainer.lr=0.002" in out and "ValueError: injected failure" in out
    runs = train_runs(sqlite_uri(tmp_path))
    assert Counter(r.info.status for r in runs) == {"FINISHED": 2, "FAILED": 2}
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert all(r.data.params["trainer.lr"] == "0.002" for r in failed)
    client = MlflowClient(sqlite_uri(tmp_path))
    assert {a.path for a in client.list_artifacts(failed[0].info.run_id, "error")} == {"error/traceback.txt"}


@pytest.mark.slow
def test_a_killed_sweep_completes_on_rerun_without_duplicates(monkeypatch, tmp_path, synthetic_root,
                                                              migrated_store):
    args = ["dataset.mode=masked,raw", "seed=0,1", "trainer.epochs=2"]
    migrated_store(tmp_path / "mlruns" / "mlflow.db")
    sweep_dir = tmp_path / "multirun" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xray_ablate", "-m", *base_overrides(tmp_path, synthetic_root),
         f"paths.root_dir={tmp_path}", "tracking.system_metrics=false", f"hydra.sweep.dir={sweep_dir}", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((sweep_dir / "outcomes").rglob("*.json")) and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    time.sleep(1.0)  # let the second job start its run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = train_runs(sqlite_uri(tmp_path))
    assert 1 <= len([r for r in before if r.info.status == "FINISHED"]) < 4

    assert run_sweep(monkeypatch, tmp_path, synthetic_root, *args) == 0
    runs = train_runs(sqlite_uri(tmp_path))
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 4 and set(keys(finished).values()) == {1}
    assert all(r.info.status != "RUNNING" for r in runs)  # a dead process's run is marked FAILED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, migrated_store):
    port = _free_port()
    migrated_store(tmp_path / "server.db")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts"), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as make server starts it
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.mark.slow
def test_joblib_workers_log_through_a_tracking_server(monkeypatch, tmp_path, synthetic_root, mlflow_server):
    code = run_sweep(monkeypatch, tmp_path, synthetic_root, "dataset.mode=masked,raw", "seed=0,1",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"tracking.uri={mlflow_server}")
    assert code == 0
    runs = train_runs(mlflow_server, "FINISHED")
    assert len(runs) == 4 and len(keys(runs)) == 4
    assert len({r.data.tags["xray.pid"] for r in runs}) == 2  # two worker processes
    mlflow.set_tracking_uri(sqlite_uri(tmp_path))


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(monkeypatch, tmp_path, synthetic_root):
    code = run_sweep(monkeypatch, tmp_path, synthetic_root, "dataset.mode=masked,raw", "seed=0",
                     "hydra/launcher=submitit_local")
    assert code == 0
    runs = train_runs(sqlite_uri(tmp_path), "FINISHED")
    assert sorted(r.data.tags["factor.dataset"] for r in runs) == ["masked", "raw"]


def run_single(monkeypatch, root: Path, synthetic: Path, *args: str) -> int:
    return invoke_cli(monkeypatch, root, *base_overrides(root, synthetic), f"hydra.run.dir={root / 'run'}", *args)


@pytest.mark.slow
def test_a_single_run_without_multirun_trains_seed_zero_once(monkeypatch, tmp_path, synthetic_root):
    assert run_single(monkeypatch, tmp_path, synthetic_root) == 0
    runs = train_runs(sqlite_uri(tmp_path), "FINISHED")
    assert [r.data.tags[schema.SEED] for r in runs] == ["0"]
    assert schema.PARENT_RUN not in runs[0].data.tags


@pytest.mark.parametrize("override, message", [
    ("dataset.root=null", "dataset.root is not set"),
    ("trainer.optimizer=rmsprop", "trainer.optimizer must be one of adam, adamw, sgd, not 'rmsprop'"),
    ("trainer.lr_schedule=linear", "trainer.lr_schedule must be one of none, cosine, step, not 'linear'"),
    ("trainer.lr=abc", "trainer.lr=abc; Value 'abc' of type 'str' could not be converted to Float"),
    ("trainer.batch_size=0", "trainer.batch_size must be at least 1, not 0"),
    ("image_size=4", "image_size must be >= 8 for backbone cnn16_gap, not 4"),  # data/masks' smallest
    ("trainer.lrr=1", "Key 'lrr' not in 'TrainerConfig'"),
    # a mistyped choice: the choices as a list, without Hydra's config search path
    ("backbone=resnet", "Could not find 'backbone/resnet'; Available options in 'backbone': cnn16, cnn16_gap, "
                        "inception_v3, resnet50, resnet50_ft, vgg16, vgg19, xception\n"),
    ("+trainer.epochz=5", "trainer.epochz is not a setting; did you mean trainer.epochs?"),  # trained 1 epoch
    ("+eval.sets=[{name:ext,root:x}] +eval.sets.0.rot=y", "eval.sets[0].rot is not a setting; did you mean "),
    ("device=cuda:x", "device must be auto, cpu, cuda, cuda:N or mps, not 'cuda:x'"),
    ("quality.device=gpu", "quality.device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    ("seed=-1", "seed must be an integer in [0, 2**32), not -1"),  # numpy's ValueError at the first job
    ("split.seed=-5", "split.seed must be an integer in [0, 2**32), not -5"),
    ("tracking.experiment=", "tracking.experiment must be a name, not ''"),  # MLflow's AttributeError
    # OmegaConf's AssertionError / AttributeError merging into a null typed node
    ("+dataset.synthetic.n=40", "+dataset.synthetic.n=40: cannot be applied (AssertionError: "),
    ("dataset.synthetic={n:40}", "dataset.synthetic={n:40}: cannot be applied (AttributeError: "),
    # found by building the model before anything trains (the audit itself runs after training)
    ("audit.enabled=true audit.layer=head.1",
     "audit.layer='head.1' is not a module of this model with a 2-D map; the deepest"),
])
def test_a_user_mistake_in_a_single_run_is_one_clear_line(monkeypatch, tmp_path, synthetic_root, capsys,
                                                           override, message):
    code = run_single(monkeypatch, tmp_path, synthetic_root, *override.split())
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert len((captured.out + captured.err).strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()  # stopped before any MLflow store or run

"""Every command the README shows runs, at a tiny size, through the Makefile a user types."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import invoke_report, mlflow_runs
from filelock import FileLock

from xray_ablate.data.synthetic import generate
from xray_ablate.paths import project_root
from xray_ablate.tracking import schema

ROOT = project_root()
# README command (its first words) -> the test that runs it. A new command in the README fails
# test_every_readme_command_is_run_by_a_test until it is added here with its test.
COVERED = {
    "make run": "test_make_run_and_report",
    "make test": ".ci/run",  # CI itself
    "make ui": "test_make_ui_and_server_answer_on_localhost",
    "make server": "test_make_ui_and_server_answer_on_localhost",
    "make report": "test_make_run_and_report",
    "make quality": "test_make_quality",
    "make bench": "test_make_bench_smoke",
    "make weights": "test_fetch_downloads_with_a_progress_bar_and_prints_where_the_file_is",
    "make install": "test_make_run_and_report",  # the prerequisite of every target
    "python -m xray_ablate": "test_a_single_run_without_multirun_trains_seed_zero_once",
    "python -m xray_ablate -m": "test_sweep_runs_every_config_and_seed_once_and_resumes",
    "python -m xray_ablate.report": "test_make_run_and_report",
    "python -m xray_ablate.data": "test_summary_command_subprocess",
    "python -m xray_ablate.quality": "test_make_quality",
    "python -m xray_ablate.models": "test_fetch_downloads_with_a_progress_bar_and_prints_where_the_file_is",
    "mlflow server": "test_joblib_workers_log_through_a_tracking_server",
}


def readme_commands() -> set[str]:
    """The first words of every `make ...` / `python -m ...` / `mlflow ...` line in README code blocks."""
    text = (ROOT / "README.md").read_text()
    found = set()
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("make "):
                found.add(" ".join(line.split()[:2]))
            elif line.startswith("python -m "):
                words = line.split()
                found.add(" ".join(words[:4] if len(words) > 3 and words[3] == "-m" else words[:3]))
            elif line.startswith("mlflow "):
                found.add(" ".join(line.split()[:2]))
    return found


def test_every_readme_command_is_run_by_a_test():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for command in sorted(readme_commands()):
        assert command in COVERED, f"README shows `{command}` but no test runs it"
        test = COVERED[command]
        if test.startswith("test_"):
            assert f"def {test}(" in tests, f"{test} (for `{command}`) does not exist"


def install() -> None:
    """`make install` once at a time: pytest-xdist workers run the make tests side by side, and two
    pip installs into one .venv (after pyproject.toml changed) would collide."""
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"xray-ablate-install-{checkout}.lock"
    with FileLock(str(lock)):
        subprocess.run(["make", "-s", "-C", str(ROOT), "install"], check=True, capture_output=True, timeout=1800)


def make(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    install()
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_make_run_and_report(tmp_path, brisque_weights, migrated_store, monkeypatch):
    # `make run` at its real size (the demo a newcomer sees), only its files moved under tmp_path.
    migrated_store(tmp_path / "mlruns" / "mlflow.db")
    done = make("run", f"ARGS=paths.root_dir={tmp_path}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    check_demo(tmp_path, done.stdout + done.stderr, monkeypatch)
    report = tmp_path / "reports" / "demo" / "report.md"
    first = report.stat().st_mtime_ns
    verdicts = pd.read_csv(tmp_path / "reports" / "demo" / "verdicts.csv")

    done = make("report", f"ARGS=paths.root_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert report.stat().st_mtime_ns > first  # written again from MLflow alone
    # the same verdicts: the report reads the adaptive design (its looks) from the parent run
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "reports" / "demo" / "verdicts.csv"), verdicts)


# make quality and make bench are tests of their own: under pytest-xdist they run beside make run.
@pytest.mark.slow
def test_make_quality(tmp_path, brisque_weights):
    phantoms = generate(tmp_path / "phantoms", n=12, seed=0, size=64)
    done = make("quality", f"ARGS=dataset.root={phantoms} paths.root_dir={tmp_path} num_workers=1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "reports" / "quality").rglob("quality.md"))


@pytest.mark.slow
def test_make_bench_smoke(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    done = make("bench", f"ARGS=--smoke --out {out}")
    assert done.returncode == 0, done.stderr[-2000:]
    from xray_ablate.bench.__main__ import SUITES

    text = out.read_text()
    for suite in SUITES:
        assert f"<!-- {suite}:start -->" in text and f"`python -m xray_ablate.bench {suite}`" in text


DEMO_CLAIM = "dataset: raw − masked (main effect)"  # the verdict experiments/demo.md promises


def check_demo(root, out: str, monkeypatch) -> None:
    """What the demo must show (experiments/demo.md): 12 to 20 runs (3 seeds, then 2 more where a
    claim needs them), every masked one learned and any raw one that did not named at the top, the
    verdict table first in the printed report, and masked beating raw: raw − masked "worse", its
    interval over seeds and test images below 0."""
    jobs = re.search(r"(\d+) jobs: (\d+) finished, 0 skipped \(already finished\), 0 failed", out)
    assert jobs and jobs[1] == jobs[2] and 12 <= int(jobs[1]) <= 20, out[-3000:]
    round_1 = re.search(r"^round 1: (\d) of 5 claims resolved(.*)$", out, re.M)
    assert round_1, out[-3000:]
    if round_1[1] != "5" and "adding seeds" not in round_1[2]:  # the rounds stop with claims open: say why
        assert "no further round" in round_1[2], round_1[0]
    assert "Downloading artifacts" not in out  # MLflow's per-artifact progress bars are off
    runs = mlflow_runs(root, "demo")
    assert len(runs) == int(jobs[1]) and {r.info.status for r in runs} == {"FINISHED"}
    # Every masked run learns; a raw run may still be near chance after 3 epochs (the slow start the
    # verdict is about), and then the report says so before anything else.
    stalled = [r for r in runs if r.data.tags[schema.LEARNED] != "true"]
    assert {r.data.tags[schema.FACTOR_TAG.format("dataset")] for r in stalled} <= {"raw"}, [
        r.data.tags.get(schema.LEARNED_REASON) for r in stalled]
    verdicts = pd.read_csv(root / "reports" / "demo" / "verdicts.csv").set_index("claim")
    dataset = verdicts.loc[DEMO_CLAIM]
    assert dataset["verdict"] == "worse" and dataset["low"] < dataset["estimate"] < dataset["high"] < 0, dataset
    assert out.index("## Verdicts") < out.index("## Summary")
    line = next(x for x in out.splitlines() if x.startswith(f"| {DEMO_CLAIM}"))
    assert "**worse**" in line and f"{100 * dataset['estimate']:.1f}" in line
    text = (root / "reports" / "demo" / "report.md").read_text()
    # the run table's first columns: configuration, runs, accuracy, its interval, its verdict
    header = next(x for x in text.splitlines() if x.startswith("| config ") and "verdict vs baseline" in x)
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names[:6] == ["config", "n", "runs not learned", "test accuracy (%)", "95% CI over seeds + test images",
                         "verdict vs baseline"], names
    lines = text.split(header, 1)[1].splitlines()[2:]
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in lines[:lines.index("")]]
    claims = {c.removesuffix(" − baseline"): v for c, v in verdicts["verdict"].items() if c.endswith(" − baseline")}
    assert {r[0]: r[5] for r in rows if r[0] in claims} == claims
    page = (root / "reports" / "demo" / "report.html").read_text()
    assert "<strong>worse</strong>" in page and "**" not in page  # the verdicts bold in HTML, not asterisks
    warned = f"{len(stalled)} of {len(runs)} runs did not learn"
    assert (warned in text.split("## Verdicts", 1)[0]) == bool(stalled)
    check_demo_shortcut(root, text, monkeypatch)


MONTAGE_NOTE = re.compile(r"### Montage: (.*?) \(seed \d+\)\n.*?The planted marker \(Marker=corner\) is a hot spot of "
                          r"Grad-CAM in (\d+)% and of input × gradient in (\d+)%", re.S)


def check_demo_shortcut(root: Path, text: str, monkeypatch) -> None:
    """The shortcut the demo plants, seen (README, "Where the model looks"): raw − masked of input ×
    gradient's outside-lung share resolved "worse" (report.metric=audit_outside_lung_inputxgrad), the
    2 x 2's main effects and interaction of that share with intervals over seeds + audited images,
    and the raw montage lighting the phantoms' corner marker in at least half of its run's audited
    images that carry it (by a method it shows), the masked one in none. Not Grad-CAM's share (the
    method the audit leads with): its raw − masked was unresolved at two threads on machine B."""
    # in this process: a subprocess would import torch, MLflow and the rest again (some 5 s)
    invoke_report(monkeypatch, f"paths.root_dir={root}", "report.metric=audit_outside_lung_inputxgrad",
                  "report.name=shortcuts", "report.log_to_mlflow=false", f"hydra.run.dir={root}/hydra")
    folder = root / "reports" / "shortcuts"
    share = pd.read_csv(folder / "verdicts.csv").set_index("claim").loc[DEMO_CLAIM]
    assert share["verdict"] == "worse" and 0 < share["low"] < share["estimate"] < share["high"], share
    main_effects = pd.read_csv(folder / "main_effects.csv").set_index("factor")
    interactions = pd.read_csv(folder / "interactions.csv")
    assert set(main_effects.index) == {"dataset", "class_weights"} and len(interactions) == 1
    for frame in (main_effects, interactions):
        assert frame[["total_low", "total_high"]].notna().all().all(), frame
    dataset = main_effects.loc["dataset"]
    assert (dataset["level"], dataset["reference"]) == ("masked", "raw") and dataset["total_high"] < 0, dataset
    assert "## Run table (audit outside lung inputxgrad)" in (folder / "report.md").read_text()
    montages = {title: (int(gradcam), int(inputxgrad)) for title, gradcam, inputxgrad in MONTAGE_NOTE.findall(text)}
    raw = [rates for title, rates in montages.items() if "dataset=raw" in title]
    assert raw and max(raw[0]) >= 50, montages
    assert montages["baseline"][1] == 0, montages  # a masked image has no marker: nothing to light


@pytest.mark.slow
def test_demo_verdict_holds_at_two_threads(tmp_path, migrated_store, monkeypatch):
    """The demo's verdict under the other numerics: `make run` above trains at one thread (the
    tests' OMP_NUM_THREADS), this at two, which rounds differently and moves every number.
    OMP_WAIT_POLICY=PASSIVE: beside the other pytest-xdist worker, two OpenMP threads that spin
    while they wait made a training step 182 ms instead of 99 (the numbers are the same either way:
    the policy changes how a thread waits, not how the work is split)."""
    install()
    migrated_store(tmp_path / "mlruns" / "mlflow.db")
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "xray_ablate", "-m", "experiment=demo",
                           "threads=2", f"paths.root_dir={tmp_path}"], capture_output=True, text=True, timeout=1800,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    check_demo(tmp_path, done.stdout + done.stderr, monkeypatch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ui", "server"])
def test_make_ui_and_server_answer_on_localhost(tmp_path, target):
    port = free_port()
    install()
    (tmp_path / "mlruns").mkdir()
    proc = subprocess.Popen(["make", "-s", "-C", str(ROOT), target, f"PORT={port}", f"MLRUNS={tmp_path / 'mlruns'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, answer = time.time() + 180, None
        while answer is None and time.time() < deadline:
            assert proc.poll() is None, f"make {target} exited with {proc.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    answer = response.read().decode()
            except OSError:
                time.sleep(1)
        assert answer == "OK", f"make {target} did not answer on 127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_bench_without_suites_runs_every_suite(monkeypatch, tmp_path):
    from xray_ablate.bench import __main__ as bench
    from xray_ablate.bench.rows import Row

    ran = []

    class Suite:
        def __init__(self, name):
            self.name = name

        def run(self, smoke=False):
            ran.append((self.name, smoke))
            return [Row(self.name, "x", 1.0, "s", command=f"python -m xray_ablate.bench {self.name}")]

    monkeypatch.setattr(bench.importlib, "import_module", lambda name: Suite(name.rsplit(".", 1)[1]))
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "B.md"
    bench.main(["--out", str(out)])
    assert ran == [(s, False) for s in bench.SUITES]
    with pytest.raises(SystemExit) as exit_:
        bench.main(["nosuch"])
    assert exit_.value.code == 2

    # a GPU machine writes its own section beside the CPU one
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "machine", lambda: "a GPU machine")
    ran.clear()
    bench.main(["train", "--out", str(out)])
    assert ran == [("train", False)]
    text = out.read_text()
    assert "<!-- train:start -->\n## train\n" in text
    assert "<!-- train-cuda:start -->\n## train on a GPU\n" in text and "a GPU machine" in text

    # --smoke without --out prints its meaningless figures and writes no file: it rewrote the real
    # rows of BENCHMARKS.md
    monkeypatch.setattr(bench, "project_root", lambda: tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("real rows\n")
    bench.main(["train", "--smoke"])
    assert ran[-1] == ("train", True) and (tmp_path / "BENCHMARKS.md").read_text() == "real rows\n"
    bench.main(["train"])  # without --smoke the default file gets the rows
    assert "<!-- train-cuda:start -->" in (tmp_path / "BENCHMARKS.md").read_text()  # still "on a GPU" here

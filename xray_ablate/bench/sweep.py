"""Sweep overhead per job, and 2 parallel jobs (joblib) against 2 sequential ones on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from xray_ablate.bench.rows import Row
from xray_ablate.data.synthetic import generate
from xray_ablate.sweep.outcomes import read_outcomes
from xray_ablate.tracking import schema
from xray_ablate.tracking.reader import open_store, search_runs

COMMAND = "python -m xray_ablate.bench sweep"


def _sweep(root: Path, data: Path, *args: str) -> tuple[float, list]:
    """Run a sweep in a fresh process; return its wall time (MLflow) and its job outcomes."""
    sweep_dir = root / "multirun" / uuid.uuid4().hex
    subprocess.run(
        [sys.executable, "-m", "xray_ablate", "-m", "dataset=demo", f"dataset.root={data}",
         f"paths.root_dir={root}", f"hydra.sweep.dir={sweep_dir}", "tracking.system_metrics=false",
         "tracking.log_checkpoint=false", "resume=false", *args],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    experiments = open_store(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment_id = next(i for i, name in experiments.items() if name == "xray-ablate")
    newest = search_runs([experiment_id], **{schema.KIND: "sweep"}).iloc[0]  # newest first
    outcomes = read_outcomes(next((sweep_dir / "outcomes").iterdir()))
    return float(newest["metrics.sweep_seconds"]), outcomes


def run(smoke: bool = False) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="xray-bench-sweep-") as tmp:
        root = Path(tmp)
        n_images = 40 if smoke else 200
        data = generate(root / "data", n=n_images, seed=0, size=128)
        tiny = ["image_size=32", "backbone=cnn16_gap", "trainer.epochs=1", f"seed=range({2 if smoke else 8})"]
        wall, outcomes = _sweep(root, data, *tiny)
        overhead = (wall - sum(o.train_seconds for o in outcomes)) / len(outcomes)

        work = tiny if smoke else ["image_size=96", "backbone=cnn16", "trainer.epochs=4", "seed=0,1"]
        # the smoke only proves the suite runs: its tiny sweep stands for the sequential one, and the
        # joblib sweep (two more processes importing torch; tests/test_sweep.py runs that launcher) is left out
        sequential = wall if smoke else _sweep(root, data, *work)[0]
        parallel = None if smoke else _sweep(root, data, *work, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")[0]
    cores = os.cpu_count()
    rows = [
        Row("sweep", "per-job overhead (wall - training time) / jobs", overhead, "s", "< 1 s",
            overhead < 1.0, COMMAND, f"{len(outcomes)} tiny jobs, basic launcher, after the shared pre-steps"),
        Row("sweep", "2 jobs sequential (basic launcher)", sequential, "s", command=COMMAND,
            notes=f"{' '.join(work)}, {n_images} synthetic images; {cores} cores"),
    ]
    if parallel is not None:
        rows.append(Row("sweep", "2 jobs parallel (joblib, n_jobs=2)", parallel, "s", command=COMMAND,
                        notes=f"speed-up {sequential / parallel:.2f}x; each job gets cores / n_jobs threads; "
                              "includes starting the joblib worker processes (torch + mlflow imports)"))
    return rows

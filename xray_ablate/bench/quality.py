"""BRISQUE scoring speed on the real fixture: cold (one process, all cores, GPU) and warm (cache)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from xray_ablate.bench.rows import Row
from xray_ablate.config.schema import QualityConfig
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.prepare import DataConfig, prepare
from xray_ablate.data.synthetic import generate
from xray_ablate.errors import UserError
from xray_ablate.paths import project_root
from xray_ablate.quality import weights
from xray_ablate.quality.scores import brisque_scores

COMMAND = "python -m xray_ablate.bench quality"


def run(smoke: bool = False) -> list[Row]:
    """Scores the real fixture; ``smoke`` scores 8 small synthetic phantoms instead."""
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp, _weights_available(Path(tmp)):
        root = generate(Path(tmp) / "phantoms", n=8, seed=0, size=96) if smoke else _fixture()
        cache_dir = Path(tmp) / "cache"
        # Scores use the raw source files; the small preprocessed size only makes prepare() cheap.
        data = prepare(DataConfig(root=root, cache_dir=cache_dir,
                                  preprocess=PreprocessOptions(mode="raw", image_size=64)))
        n = len(data.table)
        cpu = QualityConfig(device="cpu")
        cold = [("cold, 1 process x 1 thread", cpu, 1), (f"cold, {cores} processes", cpu, cores)]
        if torch.cuda.is_available():
            cold.append((f"cold, GPU ({torch.cuda.get_device_name(0)})",
                         replace(cpu, device="cuda"), cores))
        rows = []
        for what, settings, workers in cold:
            shutil.rmtree(cache_dir / "brisque", ignore_errors=True)
            load = os.getloadavg()[0]  # other jobs on the machine skew these figures
            seconds = _timed(lambda s=settings, w=workers: brisque_scores(data, s, cache_dir, w))
            start_up = ", incl. worker start-up" if workers > 1 else ""
            rows.append(Row("quality", f"BRISQUE {what}", n / seconds, "images/s", command=COMMAND,
                            notes=f"{n} cxr-mini images at {cpu.analysis_size}px, {seconds:.1f} s"
                                  f"{start_up}; load average {load:.1f} before"))
        seconds = _timed(lambda: brisque_scores(data, cpu, cache_dir, cores))
        rows.append(Row("quality", "BRISQUE warm (from the cache)", n / seconds, "images/s",
                        target="> 1,000 images/s", met=n / seconds > 1000, command=COMMAND,
                        notes=f"{n} images, {seconds * 1000:.0f} ms, piq not called"))
    return rows


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _fixture() -> Path:
    value = os.environ.get("XRAY_ABLATE_FIXTURE")
    root = Path(value) if value else project_root().parent / "shared" / "data" / "cxr-mini"
    if not (root / "annotations").is_dir():
        raise UserError(f"real fixture not found at {root}; set XRAY_ABLATE_FIXTURE")
    return root


@contextmanager
def _weights_available(tmp: Path):
    """Use the installed BRISQUE weights, else a temporary TORCH_HOME holding the shared copy."""
    before = os.environ.get("TORCH_HOME")
    shared = project_root().parent / "shared" / "models" / weights.WEIGHTS_NAME
    try:
        if not weights.weights_path().is_file() and shared.is_file():
            os.environ["TORCH_HOME"] = str(tmp / "torch")  # inherited by worker processes
            weights.weights_path().parent.mkdir(parents=True)
            shutil.copy(shared, weights.weights_path())
        weights.require_weights()
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = before

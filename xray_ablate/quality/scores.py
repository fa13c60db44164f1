"""BRISQUE score of every usable image, computed once per (dataset, analysis settings).

Layout under ``cache_dir``: brisque/<key>.csv with columns image_id, score, status, where
status is "ok" or why the image could not be scored (score NaN). The table is extended when a
call needs images it does not hold yet, written atomically under a file lock, so parallel jobs of
a sweep never see a partial table and never score an image twice.

Scoring runs BRISQUE (piq's, with verified weights: quality/brisque.py) in float32 (within
~0.1 of float64, 3x faster) on the raw decoded grayscale image resized to the analysis size: in
a pool of single-threaded CPU processes, or in batches of equal-shaped images on the GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from xray_ablate.config.schema import QualityConfig
from xray_ablate.data.atomic import write_text_atomic
from xray_ablate.data.cache import lock
from xray_ablate.data.decode import decode_grayscale
from xray_ablate.data.pool import pool_map
from xray_ablate.data.prepare import PreparedData
from xray_ablate.errors import UserError
from xray_ablate.quality.brisque import brisque
from xray_ablate.quality.weights import require_weights

# Bump when a score for the same image and settings would change.
SCORES_VERSION = 1
COLUMNS = ["image_id", "score", "status"]
# Below this many images a process pool costs more than it saves: a spawned worker needs ~3 s
# to import torch and piq, an image ~50 ms.
_POOL_MIN_IMAGES = 128
# Images decoded at once on the GPU path, to bound memory on large datasets.
_GPU_CHUNK = 1024


def scores_key(fingerprint: str, settings: QualityConfig) -> str:
    payload = {"fingerprint": fingerprint, "analysis": settings.analysis(), "v": SCORES_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def scores_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "brisque" / f"{key}.csv"


def brisque_scores(data: PreparedData, settings: QualityConfig, cache_dir: Path,
                   workers: int) -> pd.DataFrame:
    """image_id, score, status for every row of ``data.table``, in its order."""
    key = scores_key(data.fingerprint, settings)
    path = scores_path(cache_dir, key)
    wanted = data.table[["image_id", "image_path"]]
    with lock(cache_dir, f"brisque-{key}"):
        table = _load(path)
        todo = wanted[~wanted["image_id"].isin(table["image_id"])]
        if len(todo):
            fresh = score_files(list(todo["image_path"]), settings, workers)
            fresh.insert(0, "image_id", todo["image_id"].to_numpy())
            table = pd.concat([table, fresh], ignore_index=True).sort_values("image_id")
            write_text_atomic(path, table.to_csv(index=False))
    return wanted[["image_id"]].merge(table, on="image_id", how="left", validate="1:1")


def _load(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"image_id": str, "score": float, "status": str},
                           keep_default_na=False, na_values={"score": [""]})
    except (OSError, ValueError):
        return pd.DataFrame({c: pd.Series(dtype=float if c == "score" else str) for c in COLUMNS})


def score_files(paths: list[str | Path], settings: QualityConfig, workers: int) -> pd.DataFrame:
    """score and status of each image file, in order (no cache)."""
    require_weights()
    device = resolve_device(settings.device)
    workers = max(1, min(workers, os.cpu_count() or 1))
    desc = f"BRISQUE {len(paths)} images ({settings.analysis_size}px, {device})"
    if device.type == "cuda":
        results = _score_on_device(paths, settings, device, workers, desc)
    elif workers > 1 and len(paths) >= _POOL_MIN_IMAGES:
        jobs = [(str(p), settings) for p in paths]
        results = pool_map(_score_job, jobs, workers, desc, torch.set_num_threads, (1,))
    else:
        with _one_thread():
            bar = tqdm(paths, desc=desc, leave=False, disable=None)
            results = [_score_job((str(p), settings)) for p in bar]
    return pd.DataFrame(results, columns=["score", "status"])


@contextmanager
def _one_thread():
    """piq's per-image ops are too small for intra-op threads: on 2 busy cores, 2 threads were
    9x slower than 1. Parallelism comes from processes instead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # the schema accepts auto, cpu, cuda and cuda:N only
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"quality.device={name} but CUDA is not available; use quality.device=auto")
    return device


def load_analysis_image(path: Path, size: int) -> np.ndarray:
    """The raw image as 8-bit grayscale, resized so that its longer side is ``size`` px."""
    # A big JPEG is decoded at a reduced DCT scale that is still at least size x size.
    image, _ = decode_grayscale(Path(path), min_size=(size, size))
    height, width = image.shape
    scale = size / max(height, width)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != (width, height):
        # Pillow widens the bicubic kernel when shrinking, so this is antialiased.
        image = np.asarray(Image.fromarray(image).resize(target, Image.Resampling.BICUBIC))
    return image


def _score_job(job: tuple[str, QualityConfig]) -> tuple[float, str]:
    path, settings = job
    image = _load_or_reason(path, settings.analysis_size)
    if isinstance(image, str):
        return math.nan, image
    return score_images([image], settings, torch.device("cpu"))[0]


def _load_or_reason(path: str, size: int) -> np.ndarray | str:
    try:
        return load_analysis_image(Path(path), size)
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises these for broken files
        return f"unreadable: {err}"


def score_images(images: list[np.ndarray], settings: QualityConfig,
                 device: torch.device) -> list[tuple[float, str]]:
    """(score, status) of images that all have one shape, scored as one batch.

    piq asserts on images whose local statistics are degenerate (constant or blank images, two
    flat regions); the batch is then scored image by image to find the one(s) to blame.
    """
    batch = torch.from_numpy(np.stack(images)).to(device=device, dtype=torch.float32)
    try:
        with torch.no_grad():
            values = brisque(batch.unsqueeze(1), kernel_size=settings.kernel_size,
                             kernel_sigma=settings.kernel_sigma, data_range=255.0)
    except AssertionError as err:
        if len(images) > 1:
            return [r for image in images for r in score_images([image], settings, device)]
        return [(math.nan, f"unscorable: {err}")]
    return [(v, "ok") if math.isfinite(v) else (math.nan, "unscorable: non-finite score")
            for v in values.double().cpu().tolist()]


def _score_on_device(paths: list, settings: QualityConfig, device: torch.device, workers: int,
                     desc: str) -> list[tuple[float, str]]:
    """Decode with threads (Pillow releases the GIL), score equal shapes in batches on ``device``."""
    results: list[tuple[float, str]] = [(math.nan, "")] * len(paths)
    size = settings.analysis_size
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(paths), desc=desc, disable=None,
                                                           leave=False) as bar:
        for start in range(0, len(paths), _GPU_CHUNK):
            loaded = list(pool.map(lambda p: _load_or_reason(str(p), size),
                                   paths[start:start + _GPU_CHUNK]))
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, image in enumerate(loaded, start):
                if isinstance(image, str):
                    results[i] = (math.nan, image)
                else:
                    by_shape.setdefault(image.shape, []).append(i)
            for rows in by_shape.values():
                for b in range(0, len(rows), settings.batch_size):
                    batch = rows[b:b + settings.batch_size]
                    scored = score_images([loaded[i - start] for i in batch], settings, device)
                    for i, result in zip(batch, scored, strict=False):
                        results[i] = result
            bar.update(len(loaded))
    return results

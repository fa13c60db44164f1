"""The preprocessing cache: one uint8 array per (dataset, preprocessing) shared by every run.

Layout under ``cache_dir``:
  inventory/<key>.csv + .json  the ingest result (one row per source file), no polygons
  images/<key>.npy + .csv      all usable images, preprocessed, opened with memmap; the CSV
                               index says which rows decoded and why the others did not
  lungs/<key>.npy              their lung masks at the same placement (masked and raw alike),
                               bit-packed along rows; only when the dataset has Lung polygons
Both are written to a temporary file and renamed, and built under a file lock, so parallel
jobs of a sweep never see a partial cache and never build the same one twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from xray_ablate.data.atomic import temp_path_beside, write_text_atomic
from xray_ablate.data.ingest import ImageRecord, IngestOptions, Inventory
from xray_ablate.data.masks import PreprocessOptions, lung_region, preprocess

log = logging.getLogger(__name__)

# Bump when ingest or preprocess() would give different output for the same input.
INGEST_VERSION = 3
PREPROCESS_VERSION = 3  # 3: lung masks cached beside the images
# Below this many images a process pool costs more than it saves.
_POOL_MIN_IMAGES = 64


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inventory_key(fingerprint: str, ingest_opts: IngestOptions) -> str:
    return _digest({"fingerprint": fingerprint, "ingest": asdict(ingest_opts), "v": INGEST_VERSION})


def cache_key(fingerprint: str, ingest_opts: IngestOptions, prep: PreprocessOptions) -> str:
    """The cache key: dataset content, ingest options and preprocessing options."""
    return _digest({
        "inventory": inventory_key(fingerprint, ingest_opts),
        "preprocess": prep.as_dict(), "v": PREPROCESS_VERSION,
    })


def lock(cache_dir: Path, key: str) -> FileLock:
    path = Path(cache_dir) / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


# --- inventory -----------------------------------------------------------------------------

INVENTORY_COLUMNS = [
    "image_id", "source", "image_path", "cls", "patient_id", "view", "modality",
    "width", "height", "n_lung", "n_ignore", "reason", "detail", "tags",
]


def inventory_table(inv: Inventory, root: Path) -> pd.DataFrame:
    """One row per record; paths relative to ``root`` (the key is the content, not the place)."""
    root = os.path.abspath(root)

    def rel(path) -> str:
        return os.path.relpath(os.path.abspath(path), root) if path else ""

    rows = [{
        "image_id": r.image_id, "source": rel(r.source), "image_path": rel(r.image_path),
        "cls": r.cls or "", "patient_id": r.patient_id, "view": r.view, "modality": r.modality,
        "width": r.width, "height": r.height, "n_lung": len(r.lungs), "n_ignore": len(r.ignores),
        "reason": r.reason or "", "detail": r.detail, "tags": "|".join(r.tags),
    } for r in inv.records]
    return pd.DataFrame(rows, columns=INVENTORY_COLUMNS)


def save_inventory(cache_dir: Path, key: str, inv: Inventory, root: Path) -> pd.DataFrame:
    table = inventory_table(inv, root)
    base = Path(cache_dir) / "inventory" / key
    write_text_atomic(base.with_suffix(".json"), json.dumps({
        "layout": inv.layout, "maskable": inv.maskable, "unknown_tags": inv.unknown_tags,
        "patient_fallbacks": inv.patient_fallbacks,
    }))
    write_text_atomic(base.with_suffix(".csv"), table.to_csv(index=False))
    return _absolute_paths(table, root)


def load_inventory(cache_dir: Path, key: str, root: Path) -> tuple[pd.DataFrame, dict] | None:
    """The cached table, its paths under ``root``: a copy of the data at another place has
    the same fingerprint and shares the cache, and must still get its own paths."""
    base = Path(cache_dir) / "inventory" / key
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
        table = pd.read_csv(base.with_suffix(".csv"), dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return None
    return _absolute_paths(table, root), meta


def _absolute_paths(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    root = os.path.abspath(root)
    table = table.copy()
    for column in ("source", "image_path"):
        table[column] = [os.path.normpath(os.path.join(root, p)) if p else ""
                         for p in table[column]]
    return table


# --- image arrays --------------------------------------------------------------------------

@dataclass
class CachedImages:
    images: np.ndarray  # (N, size, size) uint8, memmap
    lungs: np.ndarray | None  # (N, size, ceil(size / 8)) uint8, bit-packed lung masks, memmap
    index: pd.DataFrame  # image_id, decoded, error


def load_images(cache_dir: Path, key: str) -> CachedImages | None:
    base = Path(cache_dir) / "images" / key
    try:
        index = pd.read_csv(base.with_suffix(".csv"), dtype={"image_id": str, "error": str},
                            keep_default_na=False)
        images = np.load(base.with_suffix(".npy"), mmap_mode="r")
    except (OSError, ValueError):
        return None
    lungs_path = _lungs_path(base)
    lungs = np.load(lungs_path, mmap_mode="r") if lungs_path.exists() else None
    return CachedImages(images, lungs, index)


def unpack_lungs(packed: np.ndarray, size: int) -> np.ndarray:
    """Bit-packed lung masks (n, size, ceil(size / 8)) -> bool (n, size, size)."""
    return np.unpackbits(np.asarray(packed), axis=-1, count=size).astype(bool)


def _lungs_path(base: Path) -> Path:
    """lungs/<key>.npy beside images/<key>.npy."""
    return base.parent.parent / "lungs" / f"{base.name}.npy"


def build_images(
    cache_dir: Path, key: str, records: list[ImageRecord], prep: PreprocessOptions, workers: int
) -> CachedImages:
    """Preprocess every record into one array, and its lung mask into another when the dataset
    has polygons; an image that fails to decode stays zero."""
    base = Path(cache_dir) / "images" / key
    size = prep.image_size
    tmp = temp_path_beside(base.with_suffix(".npy"))
    tmp_lungs = temp_path_beside(_lungs_path(base)) if any(r.lungs for r in records) else None
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records), size, size))
        del out  # workers write through their own maps
        if tmp_lungs is not None:
            lungs = np.lib.format.open_memmap(tmp_lungs, mode="w+", dtype=np.uint8,
                                              shape=(len(records), size, (size + 7) // 8))
            del lungs
        jobs = [(i, rec) for i, rec in enumerate(records)]
        paths = (str(tmp), None if tmp_lungs is None else str(tmp_lungs))
        workers = max(1, min(workers, os.cpu_count() or 1))
        desc = f"preprocessing {len(records)} images ({prep.mode}, {size}px)"
        if workers == 1 or len(records) < _POOL_MIN_IMAGES:
            _init_worker(*paths, prep)
            errors = [_work(job) for job in tqdm(jobs, desc=desc, leave=False, disable=None)]
            _worker_state.clear()
        else:
            chunk = max(1, len(jobs) // (workers * 8))
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker, initargs=(*paths, prep)) as pool:
                errors = list(tqdm(pool.map(_work, jobs, chunksize=chunk), total=len(jobs),
                                   desc=desc, leave=False, disable=None))
        index = pd.DataFrame({
            "image_id": [r.image_id for r in records],
            "decoded": [e == "" for e in errors],
            "error": errors,
        })
        for rec, err in zip(records, errors, strict=True):
            if err:
                log.warning("excluded %s: image_unreadable (%s)", rec.source, err)
        write_text_atomic(base.with_suffix(".csv"), index.to_csv(index=False))
        if tmp_lungs is not None:
            os.replace(tmp_lungs, _lungs_path(base))
        os.replace(tmp, base.with_suffix(".npy"))  # the .npy appearing commits the cache
    finally:
        tmp.unlink(missing_ok=True)
        if tmp_lungs is not None:
            tmp_lungs.unlink(missing_ok=True)
    return load_images(cache_dir, key)


_worker_state: dict = {}


def _init_worker(path: str, lungs_path: str | None, prep: PreprocessOptions) -> None:
    _worker_state["out"] = np.load(path, mmap_mode="r+")
    _worker_state["lungs"] = None if lungs_path is None else np.load(lungs_path, mmap_mode="r+")
    _worker_state["prep"] = prep


def _work(job: tuple[int, ImageRecord]) -> str:
    i, rec = job
    lungs = _worker_state["lungs"]
    if lungs is not None and rec.lungs:  # polygons only: no decoding needed
        lungs[i] = np.packbits(lung_region(rec, _worker_state["prep"]), axis=-1)
    try:
        _worker_state["out"][i] = preprocess(rec, _worker_state["prep"])
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises these for broken files
        return f"{Path(rec.image_path).name}: {err}"
    return ""

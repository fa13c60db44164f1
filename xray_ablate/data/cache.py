"""The preprocessing cache: one uint8 array per (dataset, preprocessing) shared by every run.

Layout under ``cache_dir``:
  inventory/<key>.csv + .json  the ingest result (one row per source file), no polygons
  images/<key>.npy + .csv      all usable images, preprocessed, opened with memmap; the CSV
                               index says which rows decoded and why the others did not
  lungs/<key>.npy              their lung masks at the same placement (masked and raw alike),
                               bit-packed along rows; only when the dataset has Lung polygons
  images/<key>.json            size and checksums of the CSV and of each .npy
Every file is written to a temporary file and renamed, and built under a file lock, so parallel
jobs of a sweep never see a partial cache and never build the same one twice. Each entry's JSON
is written last and records the checksums of its other files: a damaged or incomplete entry is
rebuilt with a one-line warning (integrity.py), and temporary files a killed build left behind
are removed when the key's lock is next taken.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from xray_ablate.config.choices import VERIFY_MODES
from xray_ablate.data import integrity
from xray_ablate.data.atomic import temp_path_beside, write_text_atomic
from xray_ablate.data.ingest import ImageRecord, IngestOptions, Inventory, one_line
from xray_ablate.data.masks import PreprocessOptions, lung_region, preprocess
from xray_ablate.data.pool import pool_map
from xray_ablate.errors import UserError

log = logging.getLogger(__name__)

# Bump when ingest or preprocess() would give different output for the same input.
INGEST_VERSION = 4
# 3: lung masks cached beside the images (#13); exclusion reasons in the index and a checksum
# JSON per entry (#15). Both changes rebuild every cache, so one bump covers them.
PREPROCESS_VERSION = 3
# Below this many images a process pool costs more than it saves.
_POOL_MIN_IMAGES = 64


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inventory_key(fingerprint: str, ingest_opts: IngestOptions) -> str:
    # A located darwin-py release is already in annotations_dir (ingest.locate); leaving the
    # release name out keeps the keys of every other layout as they were.
    opts = {k: v for k, v in asdict(ingest_opts).items() if k != "release"}
    return _digest({"fingerprint": fingerprint, "ingest": opts, "v": INGEST_VERSION})


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
    csv = table.to_csv(index=False)
    write_text_atomic(base.with_suffix(".csv"), csv)
    write_text_atomic(base.with_suffix(".json"), json.dumps({  # last: commits the entry
        "layout": inv.layout, "maskable": inv.maskable, "unknown_tags": inv.unknown_tags,
        "patient_fallbacks": inv.patient_fallbacks, "csv": integrity.bytes_checksums(csv.encode()),
    }))
    return _absolute_paths(table, root)


def load_inventory(cache_dir: Path, key: str, root: Path) -> tuple[pd.DataFrame, dict] | None:
    """The cached table, its paths under ``root``: a copy of the data at another place has
    the same fingerprint and shares the cache, and must still get its own paths. None when
    the entry is missing or damaged (then with a warning)."""
    base = Path(cache_dir) / "inventory" / key
    integrity.remove_stale_temps(base.parent, key)
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return _damaged("inventory", base.with_suffix(".json"), err)
    try:
        data = integrity.verify_bytes(base.with_suffix(".csv").read_bytes(), base.name + ".csv", meta["csv"])
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        missing = set(INVENTORY_COLUMNS) - set(table.columns)
        if missing or {"layout", "maskable", "unknown_tags", "patient_fallbacks"} - set(meta):
            raise integrity.CacheDamaged(f"columns or fields missing: {sorted(missing)}")
    except (integrity.CacheDamaged, OSError, ValueError, KeyError, TypeError) as err:
        return _damaged("inventory", base.with_suffix(".csv"), err)
    return _absolute_paths(table, root), meta


def _damaged(what: str, path: Path, err: Exception) -> None:
    log.warning("%s cache %s is damaged (%s): rebuilding it", what, path, one_line(err))


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
    index: pd.DataFrame  # image_id, reason, error


def load_images(cache_dir: Path, key: str, verify: str = "auto") -> CachedImages | None:
    """The cached arrays (memmap) and their index; None when missing or damaged (then with a
    warning). ``verify``: how much of each array to hash (config.choices.VERIFY_MODES)."""
    if verify not in VERIFY_MODES:
        raise UserError(f"cache_verify must be one of {VERIFY_MODES}, not {verify!r}")
    base = Path(cache_dir) / "images" / key
    lungs_path = _lungs_path(base)
    integrity.remove_stale_temps(base.parent, key)
    integrity.remove_stale_temps(lungs_path.parent, key)
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return _damaged("image", base.with_suffix(".json"), err)
    path = base.with_suffix(".npy")
    try:
        data = integrity.verify_bytes(base.with_suffix(".csv").read_bytes(), base.name + ".csv", meta["index"])
        index = pd.read_csv(io.BytesIO(data), dtype={"image_id": str, "reason": str, "error": str},
                            keep_default_na=False)
        integrity.verify_file(path, meta["npy"], verify)
        images = np.load(path, mmap_mode="r")
        if images.shape[0] != len(index) or list(index.columns) != INDEX_COLUMNS:
            raise integrity.CacheDamaged(f"{images.shape[0]} images but {len(index)} index rows")
        lungs = None
        if meta["lungs"] is not None:
            path = lungs_path
            integrity.verify_file(path, meta["lungs"], verify)
            lungs = np.load(path, mmap_mode="r")
            if lungs.shape[0] != len(index):
                raise integrity.CacheDamaged(f"{lungs.shape[0]} lung masks but {len(index)} index rows")
    except (integrity.CacheDamaged, OSError, ValueError, KeyError, TypeError) as err:
        return _damaged("image", path, err)
    return CachedImages(images, lungs, index)


def unpack_lungs(packed: np.ndarray, size: int) -> np.ndarray:
    """Bit-packed lung masks (n, size, ceil(size / 8)) -> bool (n, size, size)."""
    return np.unpackbits(np.asarray(packed), axis=-1, count=size).astype(bool)


def _lungs_path(base: Path) -> Path:
    """lungs/<key>.npy beside images/<key>.npy."""
    return base.parent.parent / "lungs" / f"{base.name}.npy"


INDEX_COLUMNS = ["image_id", "reason", "error"]  # reason "": decoded


def build_images(
    cache_dir: Path, key: str, records: list[ImageRecord], prep: PreprocessOptions, workers: int
) -> CachedImages:
    """Preprocess every record into one array, and its lung mask into another when the dataset
    has polygons; an image that fails to decode stays zero and is excluded with its reason."""
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
        initargs = (str(tmp), None if tmp_lungs is None else str(tmp_lungs), prep)
        workers = max(1, min(workers, os.cpu_count() or 1))
        desc = f"preprocessing {len(records)} images ({prep.mode}, {size}px)"
        if workers == 1 or len(records) < _POOL_MIN_IMAGES:
            _init_worker(*initargs)
            results = [_work(job) for job in tqdm(jobs, desc=desc, leave=False, disable=None)]
            _worker_state.clear()
        else:
            results = pool_map(_work, jobs, workers, desc, _init_worker, initargs)
        reasons, errors = [r for r, _ in results], [e for _, e in results]
        index = pd.DataFrame({
            "image_id": [r.image_id for r in records],
            "reason": reasons, "error": errors,
        }, columns=INDEX_COLUMNS)
        for rec, reason, err in zip(records, reasons, errors, strict=True):
            if reason:
                log.warning("excluded %s: %s (%s)", rec.source, reason, err)
        csv = index.to_csv(index=False)
        write_text_atomic(base.with_suffix(".csv"), csv)
        lung_sums = None
        if tmp_lungs is not None:
            lung_sums = integrity.file_checksums(tmp_lungs)
            os.replace(tmp_lungs, _lungs_path(base))
        checksums = integrity.file_checksums(tmp)
        os.replace(tmp, base.with_suffix(".npy"))
        write_text_atomic(base.with_suffix(".json"), json.dumps({  # last: commits the entry
            "npy": checksums, "lungs": lung_sums, "index": integrity.bytes_checksums(csv.encode())}))
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


def _work(job: tuple[int, ImageRecord]) -> tuple[str, str]:
    """(exclusion reason, detail) of one image, ("", "") when it decoded."""
    i, rec = job
    name = Path(rec.image_path).name
    lungs, prep = _worker_state["lungs"], _worker_state["prep"]
    try:
        _worker_state["out"][i] = preprocess(rec, prep)
        if lungs is not None and rec.lungs:
            lungs[i] = np.packbits(lung_region(rec, prep), axis=-1)
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises these for broken files
        return "image_unreadable", f"{name}: {err}"
    except Exception as err:  # the per-file boundary: a bug in one image stays in that image
        return "unexpected_error", f"{name}: {one_line(err)}"
    return "", ""

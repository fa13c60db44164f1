"""Fingerprint -> inventory -> preprocessed array -> split: the data a run trains on."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.data import cache, canary
from xray_ablate.data.atomic import check_writable, write_text_atomic
from xray_ablate.data.fingerprint import dataset_fingerprint, file_digests
from xray_ablate.data.ingest import (
    IMAGE_SUFFIXES,
    IngestOptions,
    detect_layout,
    exclude_identical_images,
    ingest,
    locate,
)
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.metadata import MetadataReport, attributes_digest, attributes_for
from xray_ablate.data.splits import SplitOptions, make_split, manifest_hash
from xray_ablate.data.walk import never_resolves
from xray_ablate.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    root: Path
    cache_dir: Path
    ingest: IngestOptions = field(default_factory=IngestOptions)
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    split: SplitOptions = field(default_factory=SplitOptions)
    workers: int = 0  # 0: all cores
    metadata: Path | None = None  # CSV of attributes per image (dataset.metadata)
    metadata_key: str | None = None  # its column of image file names (dataset.metadata_key)
    cache_verify: str = "auto"  # how much of a cached array to hash on load: auto | full | sample
    canary: bool = False  # plant the canary marker (data/canary.py) in a copy of the images
    root_setting: str = "dataset.root"  # what a message about ``root`` tells the user to set


@dataclass
class PreparedData:
    root: Path  # the dataset folder read (a darwin-py release's dataset folder, not the release)
    images: np.ndarray  # (N, size, size) uint8, row i is table row i
    lungs: np.ndarray | None  # the rows' lung masks, bit-packed (see lung_masks); None without polygons
    table: pd.DataFrame  # image_id, cls, label, patient_id, view, split, image_path, *attributes
    excluded: pd.DataFrame  # source, image_id, cls, reason, detail
    fingerprint: str
    cache_key: str
    manifest: pd.DataFrame
    manifest_hash: str
    manifest_path: Path
    layout: str
    unknown_tags: dict
    patient_fallbacks: int
    decoded_now: int  # images decoded by this call (0 when the cache was warm)
    metadata: MetadataReport = field(default_factory=MetadataReport)

    @property
    def attributes(self) -> list[str]:
        """The attribute columns of ``table`` (source, View, ...; see data/metadata.py)."""
        return list(self.metadata.attributes)

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def lung_masks(self, rows: np.ndarray) -> np.ndarray | None:
        """Bool (len(rows), size, size): the lung region of each row's image, where the masked
        variant keeps pixels (Lung minus Ignore), for raw images too; None without polygons."""
        if self.lungs is None:
            return None
        return cache.unpack_lungs(self.lungs[np.asarray(rows)], self.images.shape[-1])


def prepare(cfg: DataConfig) -> PreparedData:
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(_not_a_folder(root, cfg.root_setting))
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"cannot read the dataset folder {root}: permission denied for this user")
    check_writable(cfg.cache_dir, "the cache folder",
                   "point paths.cache_dir or XRAY_ABLATE_CACHE (--cache-dir for the summary) at a writable folder")
    root, located = locate(root, cfg.ingest)  # a darwin-py dataset or release folder
    cfg = replace(cfg, root=root, ingest=located)
    fingerprint = _fingerprint(root, cfg)
    inv_key = cache.inventory_key(fingerprint, cfg.ingest)
    with cache.lock(cfg.cache_dir, inv_key):
        loaded = cache.load_inventory(cfg.cache_dir, inv_key, root)
        if loaded is None:
            inventory = _ingest(root, cfg.ingest)
            exclude_identical_images(inventory.records, file_digests(root, cfg.cache_dir))
            table = cache.save_inventory(cfg.cache_dir, inv_key, inventory, root)
            meta = {"layout": inventory.layout, "maskable": inventory.maskable,
                    "unknown_tags": inventory.unknown_tags,
                    "patient_fallbacks": inventory.patient_fallbacks}
        else:
            table, meta = loaded
            inventory = None
    if cfg.preprocess.mode == "masked" and not meta["maskable"]:
        raise UserError(
            f"dataset {root} ({meta['layout']}) has no Lung polygons, so dataset=masked cannot be "
            "built; use dataset=raw"
        )

    usable = table[table["reason"] == ""].sort_values("image_id").reset_index(drop=True)
    key = cache.cache_key(fingerprint, cfg.ingest, cfg.preprocess)
    decoded_now = 0
    with cache.lock(cfg.cache_dir, key):
        loaded_images = cache.load_images(cfg.cache_dir, key, cfg.cache_verify)
        if loaded_images is not None and list(loaded_images.index["image_id"]) != list(usable["image_id"]):
            log.warning("image cache %s does not match its inventory: rebuilding it", key)
            loaded_images = None
        if loaded_images is None:
            if inventory is None:  # polygons are not cached: read them again
                inventory = _ingest(root, cfg.ingest)
            records = {r.image_id: r for r in inventory.records if r.ok}
            ordered = [records[i] for i in usable["image_id"]]
            workers = cfg.workers or os.cpu_count() or 1
            loaded_images = cache.build_images(cfg.cache_dir, key, ordered, cfg.preprocess, workers)
            decoded_now = len(ordered)
    images, lungs, index = loaded_images.images, loaded_images.lungs, loaded_images.index

    decoded = index["reason"].eq("").to_numpy()
    excluded = table[table["reason"] != ""][["source", "image_id", "cls", "reason", "detail"]]
    unreadable = usable[~decoded].assign(reason=index["reason"][~decoded], detail=index["error"][~decoded])
    excluded = pd.concat([excluded, unreadable[excluded.columns]], ignore_index=True)
    rows = np.flatnonzero(decoded)
    usable = usable.iloc[rows].reset_index(drop=True)
    if usable.empty:
        raise UserError(f"no usable image in {root}: {_reason_counts(excluded)}")

    manifest = make_split(usable, cfg.split)
    digest = manifest_hash(manifest)
    attributes, report = attributes_for(usable, set(excluded["image_id"]), cfg.metadata, cfg.metadata_key)
    names = list(report.attributes)
    attributes.insert(0, "image_id", usable["image_id"])
    # The attributes ride along in the manifest; its hash (the split) does not depend on them.
    manifest = manifest.merge(attributes, on="image_id", validate="1:1")
    suffix = f"-{attributes_digest(attributes, names)}" if names else ""
    manifest_path = Path(cfg.cache_dir) / "splits" / f"{digest}{suffix}.csv"
    if not manifest_path.exists():
        write_text_atomic(manifest_path, manifest.to_csv(index=False))
    usable = usable[["image_id", "cls", "patient_id", "view", "image_path"]].merge(
        manifest.drop(columns=["cls", "patient_id"]), on="image_id", validate="1:1")
    usable["label"] = usable["cls"].map({c: i for i, c in enumerate(CLASSES)}).astype(int)
    # Only decoded rows; a fancy index would copy, so keep the memmap when nothing failed.
    if len(rows) != len(decoded):
        images, lungs = images[rows], None if lungs is None else lungs[rows]
    data = PreparedData(
        root=root, images=images, lungs=lungs,
        table=usable[["image_id", "cls", "label", "patient_id", "view", "split", "image_path", *names]],
        excluded=excluded.reset_index(drop=True),
        fingerprint=fingerprint, cache_key=key, manifest=manifest, manifest_hash=digest,
        manifest_path=manifest_path, layout=meta["layout"], unknown_tags=meta["unknown_tags"],
        patient_fallbacks=int(meta["patient_fallbacks"]), decoded_now=decoded_now, metadata=report,
    )
    return with_canary(data) if cfg.canary else data


def with_canary(data: PreparedData) -> PreparedData:
    """``data`` with the canary marker planted (in memory) and its attribute column added."""
    if not (data.table["cls"].eq(canary.CANARY_CLASS) & data.table["split"].eq("train")).any():
        raise UserError(f"the canary marks the {canary.CANARY_CLASS} training images, and this dataset's "
                        "training split has none: audit.canary cannot plant its shortcut")
    marked = canary.carries_marker(data.table)
    table = data.table.assign(**{canary.ATTRIBUTE: np.where(marked, canary.MARKED, canary.UNMARKED)})
    metadata = replace(data.metadata, attributes={**data.metadata.attributes, canary.ATTRIBUTE: "canary"})
    return replace(data, images=canary.plant(data.images, marked), table=table, metadata=metadata,
                   cache_key=f"{data.cache_key}-canary{canary.VERSION}")


def _not_a_folder(root: Path, setting: str) -> str:
    if root.exists():
        return f"dataset root {root} is a file; a folder is expected (set {setting})"
    if never_resolves(root):
        return f"dataset root {root} is a symbolic link loop; a folder is expected (set {setting})"
    return f"dataset root {root} does not exist (set {setting})"


def _fingerprint(root: Path, cfg: DataConfig) -> str:
    """Of the files ingest reads: Darwin's two folders, or an ImageFolder's images."""
    if detect_layout(root, cfg.ingest) == "darwin":
        return dataset_fingerprint(root, cfg.cache_dir,
                                   subdirs=(cfg.ingest.annotations_dir, cfg.ingest.images_dir))
    return dataset_fingerprint(root, cfg.cache_dir, suffixes=IMAGE_SUFFIXES)


def _ingest(root: Path, opts: IngestOptions):
    try:
        return ingest(root, opts)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None


def _reason_counts(excluded: pd.DataFrame) -> str:
    counts = excluded["reason"].value_counts()
    return ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "no images found"

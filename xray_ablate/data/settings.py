"""The data layer's settings from a composed config: the split seed, the DataConfig, and the
synthetic dataset generated on first use."""

from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock

from xray_ablate.data import synthetic
from xray_ablate.data.ingest import IngestOptions
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.owned import check_replaceable
from xray_ablate.data.prepare import DataConfig
from xray_ablate.data.splits import SplitOptions
from xray_ablate.errors import UserError


def split_seed(cfg) -> int:
    """The seed of the split (and of train_fraction subsets): split.seed, plus the run seed when
    split.vary_with_seed."""
    return cfg.split.seed + (cfg.seed if cfg.split.vary_with_seed else 0)


def data_config(cfg) -> DataConfig:
    """The data layer's settings from a typed config (dataset, split, image_size, paths)."""
    ds = cfg.dataset
    if ds.root in (None, ""):
        raise UserError(
            "dataset.root is not set: pass dataset.root=/path/to/export (a V7 Darwin export or an "
            "ImageFolder), set XRAY_ABLATE_DATA, or use dataset=demo"
        )
    return DataConfig(
        root=Path(ds.root),
        cache_dir=Path(cfg.paths.cache_dir),
        ingest=IngestOptions(
            layout=ds.layout, annotations_dir=ds.annotations_dir, images_dir=ds.images_dir, release=ds.release,
            patient_pattern=ds.patient_pattern, bounds_tolerance=float(ds.bounds_tolerance),
        ),
        preprocess=PreprocessOptions(
            mode=ds.mode, image_size=int(cfg.image_size), resize=ds.resize,
            crop_to_lungs=bool(ds.crop_to_lungs),
        ),
        split=SplitOptions(seed=split_seed(cfg), test_fraction=float(cfg.split.test_fraction),
                           val_fraction=float(cfg.split.val_fraction)),
        workers=int(cfg.num_workers),
        metadata=Path(ds.metadata) if ds.metadata else None, metadata_key=ds.metadata_key,
        cache_verify=cfg.cache_verify, canary=bool(ds.canary),
    )


def ensure_synthetic(cfg) -> None:
    """Generate the synthetic dataset into dataset.root if the config asks for one and the
    folder does not hold exactly that (same arguments, same generator version). A folder this
    project did not generate is never replaced (UserError naming it)."""
    spec = cfg.dataset.synthetic
    if not spec:
        return
    root = Path(cfg.dataset.root)
    wanted = synthetic.stamp(int(spec.n), int(spec.seed), int(spec.size))
    if _read_stamp(root) == wanted:
        return
    check_replaceable(root, "the synthetic dataset (dataset.root)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if _read_stamp(root) != wanted:
            synthetic.generate(root, n=wanted["n"], seed=wanted["seed"], size=wanted["size"])


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / synthetic.STAMP).read_text())
    except (OSError, ValueError):
        return None

"""What a run trains, validates and tests on, prepared before fit(): the split rows after the
training fraction and the BRISQUE filter, and the normalisation statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xray_ablate.config.schema import Config
from xray_ablate.data.prepare import PreparedData
from xray_ablate.data.settings import split_seed
from xray_ablate.data.splits import class_counts, train_subset
from xray_ablate.errors import UserError
from xray_ablate.models import uses_training_stats
from xray_ablate.quality.filter import brisque_filter


@dataclass
class FitInputs:
    train: np.ndarray  # rows of data.table
    val: np.ndarray
    test: np.ndarray
    norm_stats: tuple[float, float] | None  # training pixels' mean and std in [0, 1], scratch models only
    test_outlier: np.ndarray | None  # per test row: beyond the BRISQUE fences (filter on only)
    params: dict = field(default_factory=dict)  # what to log about these choices
    metrics: dict = field(default_factory=dict)


def prepare_inputs(config: Config, data: PreparedData) -> FitInputs:
    train, val, test = (data.split_indices(s) for s in ("train", "val", "test"))
    params, metrics = {}, {}
    if config.dataset.train_fraction < 1:
        # Before the BRISQUE filter, so the nested subsets do not depend on it.
        train = train[train_subset(data.table.iloc[train], config.dataset.train_fraction, split_seed(config))]
    test_outlier = None
    if config.brisque_filter.enabled:
        result = brisque_filter(data, config)
        metrics.update(result.metrics())
        train, val = train[result.keep[train]], val[result.keep[val]]
        test_outlier = result.test_outlier[test]
    check_not_empty(config, data, {"train": train, "val": val, "test": test})
    params.update({f"n_{name}": len(rows) for name, rows in (("train", train), ("val", val), ("test", test))})
    params.update({f"n_train_{cls}": n for cls, n in class_counts(data.table.iloc[train]).items()})
    stats = None
    if config.normalization.enabled and uses_training_stats(config.backbone):
        stats = normalization_stats(data, train)
        params.update({"norm_mean": round(stats[0], 6), "norm_std": round(stats[1], 6)})
    return FitInputs(train, val, test, stats, test_outlier, params, metrics)


def check_not_empty(config: Config, data: PreparedData, rows: dict[str, np.ndarray]) -> None:
    """A run needs images to learn from, validation images to pick its checkpoint and test images
    to score (an empty split failed deep in training: a division by zero, torch.cat of nothing)."""
    empty = [name for name, split_rows in rows.items() if len(split_rows) == 0]
    if not empty:
        return
    settings = [f"split.test_fraction={config.split.test_fraction}", f"split.val_fraction={config.split.val_fraction}"]
    if config.dataset.train_fraction < 1:
        settings.append(f"dataset.train_fraction={config.dataset.train_fraction}")
    if config.brisque_filter.enabled:
        settings.append("brisque_filter=on")
    counts = ", ".join(f"{name} {len(split_rows)}" for name, split_rows in rows.items())
    raise UserError(f"{data.root}: {', '.join(settings)} leave the {' and '.join(empty)} split empty ({counts} of "
                    f"{len(data.table)} images, {data.table['patient_id'].nunique()} patients)")


def normalization_stats(data: PreparedData, train: np.ndarray) -> tuple[float, float]:
    """Mean and std of training pixels in [0, 1]: computed on the training split only.

    Summed in chunks of images, so a large training set is never copied to float64 whole."""
    total = total_sq = 0.0
    rows = np.sort(train)
    for start in range(0, len(rows), 256):
        chunk = np.asarray(data.images[rows[start:start + 256]], dtype=np.float64) / 255.0
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    count = len(rows) * data.images.shape[1] * data.images.shape[2]
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))

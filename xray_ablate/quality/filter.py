"""brisque_filter: drop train/val images beyond the k*IQR fences of their BRISQUE scores.

The fences come from the train+val scores only, so nothing about the test images leaks into
training. Test images are never removed (filtered and unfiltered runs are tested on the same
images); those beyond the fences are flagged for an optional secondary test metric.
Unscorable images (score NaN) have no position relative to the fences: they are kept and
counted. With the filter off nothing is scored, so it needs no BRISQUE weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES, FENCES
from xray_ablate.config.schema import Config
from xray_ablate.data.prepare import PreparedData
from xray_ablate.errors import UserError
from xray_ablate.quality.scores import brisque_scores

log = logging.getLogger(__name__)



@dataclass
class FilterResult:
    keep: np.ndarray  # bool per data.table row; test rows always True
    fences: tuple[float, float]  # (low, high); -inf/inf where a side is not fenced
    removed_per_class: dict[str, int]  # train+val images removed, every class listed
    test_outlier: np.ndarray  # bool per row: test images beyond the fences (kept)
    scores: pd.DataFrame | None  # image_id, score, status per row; None when the filter is off
    unscorable_per_class: dict[str, int]  # train+val images kept because they have no score

    def metrics(self) -> dict[str, float]:
        """Counts (and finite fences) to log to the run."""
        out = {f"brisque_removed_{c}": float(n) for c, n in self.removed_per_class.items()}
        out["brisque_removed_total"] = float(sum(self.removed_per_class.values()))
        out["brisque_unscorable"] = float(sum(self.unscorable_per_class.values()))
        out["brisque_test_outliers"] = float(self.test_outlier.sum())
        for name, value in zip(("brisque_fence_low", "brisque_fence_high"), self.fences, strict=False):
            if np.isfinite(value):
                out[name] = float(value)
        return out


def iqr_fences(scores, fences: str = "both", factor: float = 1.5) -> tuple[float, float]:
    """Tukey fences (Q1 - factor*IQR, Q3 + factor*IQR) of the finite scores, NumPy quantiles.

    ``fences="upper"`` leaves the low side open (-inf): only the worst-quality tail is fenced.
    """
    if fences not in FENCES:
        raise ValueError(f"fences must be one of {FENCES}, not {fences!r}")
    values = np.asarray(scores, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise UserError("no image could be scored with BRISQUE, so there are no IQR fences")
    q1, q3 = np.quantile(values, [0.25, 0.75])
    low, high = q1 - factor * (q3 - q1), q3 + factor * (q3 - q1)
    return (-np.inf if fences == "upper" else float(low)), float(high)


def beyond(scores, fences: tuple[float, float]) -> np.ndarray:
    """True where a score lies strictly outside the fences (NaN scores never do)."""
    values = np.asarray(scores, dtype=float)
    with np.errstate(invalid="ignore"):
        return (values < fences[0]) | (values > fences[1])


def brisque_filter(data: PreparedData, config: Config) -> FilterResult:
    """Which rows of ``data.table`` a run trains and validates on."""
    if not config.brisque_filter.enabled:
        rows = len(data.table)
        zeros = {c: 0 for c in CLASSES}
        return FilterResult(keep=np.ones(rows, bool), fences=(-np.inf, np.inf),
                            removed_per_class=zeros, test_outlier=np.zeros(rows, bool),
                            scores=None, unscorable_per_class=dict(zeros))
    workers = config.num_workers or os.cpu_count() or 1
    scores = brisque_scores(data, config.quality, Path(config.paths.cache_dir), workers)
    result = apply_fences(data.table, scores, config.brisque_filter.fences, config.brisque_filter.iqr_factor)
    log.info("brisque_filter: fences %.2f..%.2f, removed %s, unscorable (kept) %s",
             *result.fences, result.removed_per_class, result.unscorable_per_class)
    return result


def apply_fences(table: pd.DataFrame, scores: pd.DataFrame, fences: str,
                 factor: float) -> FilterResult:
    """The filter's decision for ``table`` rows given their ``scores`` (same order)."""
    if list(scores["image_id"]) != list(table["image_id"]):
        raise ValueError("scores are not aligned with the table rows")
    values = scores["score"].to_numpy(float)
    trainval = table["split"].to_numpy() != "test"
    bounds = iqr_fences(values[trainval], fences, factor)
    out = beyond(values, bounds)
    cls = table["cls"].to_numpy()
    unscorable = trainval & np.isnan(values)
    return FilterResult(
        keep=~(out & trainval),
        fences=bounds,
        removed_per_class={c: int((out & trainval & (cls == c)).sum()) for c in CLASSES},
        test_outlier=out & ~trainval,
        scores=scores,
        unscorable_per_class={c: int((unscorable & (cls == c)).sum()) for c in CLASSES},
    )

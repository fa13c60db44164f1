"""A run's test accuracy per attribute level (subgroup), and the gap between levels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xray_ablate.references.intervals import Proportion

MIN_SUBGROUP_N = 10  # levels with fewer test images are shown but marked


@dataclass(frozen=True)
class SubgroupScore:
    level: str
    accuracy: Proportion

    @property
    def small(self) -> bool:
        return self.accuracy.n < MIN_SUBGROUP_N

    def as_dict(self) -> dict:
        return {"level": self.level, "small": self.small, **self.accuracy.as_dict()}


def subgroup_scores(labels: np.ndarray, probabilities: np.ndarray, levels: np.ndarray) -> list[SubgroupScore]:
    """Accuracy and n per level (sorted) from integer labels, (N, K) probabilities and the
    attribute value of each image."""
    labels, levels = np.asarray(labels), np.asarray(levels).astype(str)
    if not (len(labels) == len(probabilities) == len(levels)):
        raise ValueError(f"{len(labels)} labels, {len(probabilities)} probability rows, {len(levels)} levels")
    hits = np.argmax(probabilities, axis=1) == labels
    return [SubgroupScore(lv, Proportion.of(hits[levels == lv])) for lv in sorted(set(levels))]


def accuracy_gap(scores: list[SubgroupScore]) -> float | None:
    """Highest minus lowest accuracy over levels with at least MIN_SUBGROUP_N images (None
    with fewer than two such levels)."""
    rates = [s.accuracy.rate for s in scores if not s.small]
    return max(rates) - min(rates) if len(rates) >= 2 else None

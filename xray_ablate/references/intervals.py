"""Wilson score intervals for a proportion (accuracy of k correct out of n)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xray_ablate.evaluation import wilson


@dataclass(frozen=True)
class Proportion:
    """k of n, with its rate and Wilson interval."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def as_dict(self) -> dict:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": self.rate, "ci_low": low, "ci_high": high}

    @classmethod
    def of(cls, hits) -> Proportion:
        """From a boolean array of hits."""
        hits = np.asarray(hits, dtype=bool)
        return cls(int(hits.sum()), int(hits.size))

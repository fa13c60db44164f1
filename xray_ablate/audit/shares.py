"""Where attribution mass lies: shares outside the lung mask and in the image's border band."""

from __future__ import annotations

import numpy as np


def border_band(size: int, fraction: float) -> np.ndarray:
    """Bool (size, size): the outer band of ``fraction`` of the side (at least one pixel)."""
    width = max(1, round(fraction * size))
    band = np.ones((size, size), bool)
    band[width:size - width, width:size - width] = False
    return band


def mass_shares(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per map, the share of its (non-negative) mass inside ``region``; NaN for an all-zero map.

    maps (n, H, W) >= 0; region (n, H, W) or (H, W) bool."""
    total = maps.sum(axis=(1, 2), dtype=np.float64)
    inside = (maps * region).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)

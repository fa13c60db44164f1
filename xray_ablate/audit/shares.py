"""Where attribution mass lies: shares outside the lung mask and in the image's border band, and
whether a region (a planted marker's box) is a hot spot of a map."""

from __future__ import annotations

import numpy as np

from xray_ablate.data.canary import HOTSPOT_RATIO


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



def hot_spots(maps: np.ndarray, region: np.ndarray, ratio: float = HOTSPOT_RATIO) -> np.ndarray:
    """Per map, whether its mean inside ``region`` (H, W) is at least ``ratio`` x its mean over the
    whole map (False for an all-zero map)."""
    density = mass_shares(maps, region) / region.mean()
    return np.nan_to_num(density) >= ratio

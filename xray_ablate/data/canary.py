"""The canary: a planted shortcut the shortcut checks must see (the positive control of audit.canary).

A copy of a prepared dataset's images with a white square outside the lungs (the top-right
corner). In the training and validation splits it marks every image of CANARY_CLASS and no
other, the strongest class-correlated shortcut; in the test split it marks a hash-chosen half
of the images whatever their class, so what a check reads off the test images (the audit's maps,
a probe) is the marker itself and not the class it came with. Which images carry it depends on
their ids only: the same for every sweep of a dataset. The attribute ATTRIBUTE says which do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xray_ablate.data import synthetic

VERSION = 1  # bump when the marker or the rule that places it changes: part of the cache key
ATTRIBUTE = "Canary"  # the attribute column: MARKED or UNMARKED
MARKED, UNMARKED = "marker", "none"
CANARY_CLASS = "covid"
BOX = (0.04, 0.16, 0.84, 0.96)  # rows then columns, as shares of the side: the top-right corner
TEST_RATE = 0.5  # share of test images marked, in every class
# An attribution map "sees" the marker where its mean in the box is at least this x its mean over
# the image (the box is a hot spot): audit.shares.hot_spots.
HOTSPOT_RATIO = 2.0


@dataclass(frozen=True)
class PlantedMarker:
    """A marker our own code puts on some images: the attribute level that says which, and where."""

    attribute: str
    level: str
    box: tuple[float, float, float, float]  # rows then columns, as shares of the side


# The markers the audit looks for (audit_hotspot_<attribute>_<method>): the canary's, and the
# synthetic phantoms' corner marker (data/synthetic.py, tag Marker/corner).
PLANTED = (PlantedMarker(ATTRIBUTE, MARKED, BOX), PlantedMarker("Marker", "corner", synthetic.MARKER_BOX))


def marker_box(size: int, box: tuple[float, float, float, float] = BOX) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds of a marker's ``box`` in a ``size`` px image."""
    top, bottom, left, right = (round(share * size) for share in box)
    return top, max(bottom, top + 1), left, max(right, left + 1)


def carries_marker(table: pd.DataFrame) -> np.ndarray:
    """Bool per row of ``table`` (image_id, cls, split): does the image get the marker."""
    draw = np.array([int(hashlib.sha256(f"canary:{i}".encode()).hexdigest()[:8], 16) / 16**8
                     for i in table["image_id"]])
    test = table["split"].to_numpy() == "test"
    return np.where(test, draw < TEST_RATE, table["cls"].to_numpy() == CANARY_CLASS)


def plant(images: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """A copy of (N, S, S) uint8 ``images`` with the marker (255) on the ``marked`` rows; the
    cached array itself is never written."""
    out = np.array(images)
    top, bottom, left, right = marker_box(out.shape[-1])
    out[np.asarray(marked), top:bottom, left:right] = 255
    return out

"""The split rule: stratified by class, grouped by patient, independent of the training seed.

Patients are dealt to test, then validation, then train, class by class (a patient counts in
the class most of their images have), in an order fixed by ``split.seed``, until each split
holds its share of the class's images. No patient is in two splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.errors import UserError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["image_id", "cls", "patient_id", "split"]


@dataclass(frozen=True)
class SplitOptions:
    seed: int = 0
    test_fraction: float = 0.30
    val_fraction: float = 0.25  # of what is left after the test split

    def __post_init__(self):
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1):
            raise UserError(f"split.test_fraction and split.val_fraction must lie strictly between 0 "
                            f"and 1 (validation picks the checkpoint), not {self.test_fraction}, "
                            f"{self.val_fraction}")


def make_split(images: pd.DataFrame, opts: SplitOptions) -> pd.DataFrame:
    """Return the manifest: ``images`` (image_id, cls, patient_id) plus a ``split`` column."""
    images = images[["image_id", "cls", "patient_id"]].sort_values("image_id").reset_index(drop=True)
    primary = patient_strata(images)
    sizes = images.groupby("patient_id").size()

    rng = np.random.default_rng(opts.seed)
    assignment: dict[str, str] = {}
    for cls in CLASSES:
        patients = np.array(sorted(primary.index[primary == cls]))
        if len(patients) == 0:
            continue
        patients = patients[rng.permutation(len(patients))]
        total = int(sizes[patients].sum())
        test_target = opts.test_fraction * total
        val_target = opts.val_fraction * (total - test_target)
        filled = {"test": 0, "val": 0}
        for patient in patients:
            n = int(sizes[patient])
            if filled["test"] + n / 2 <= test_target:
                split = "test"
            elif filled["val"] + n / 2 <= val_target:
                split = "val"
            else:
                split = "train"
            filled[split] = filled.get(split, 0) + n
            assignment[patient] = split
    images["split"] = images["patient_id"].map(assignment)
    return images[MANIFEST_COLUMNS]


def patient_strata(images: pd.DataFrame) -> pd.Series:
    """patient_id -> the patient's stratum: their most frequent class (ties: the class listed first)."""
    rank = {c: i for i, c in enumerate(CLASSES)}
    counts = images.groupby(["patient_id", "cls"]).size().reset_index(name="n")
    counts["rank"] = counts["cls"].map(rank)
    primary = counts.sort_values(["patient_id", "n", "rank"], ascending=[True, False, True])
    return primary.drop_duplicates("patient_id").set_index("patient_id")["cls"]


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Content hash of a manifest; equal manifests give equal hashes on every machine."""
    canonical = manifest[MANIFEST_COLUMNS].sort_values("image_id").to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def train_subset(train: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Ascending positions in ``train`` (cls, patient_id) of its class-stratified, patient-grouped
    share ``fraction``: what a run with dataset.train_fraction trains on.

    Per stratum (as in make_split), the patients are put in one order fixed by ``seed`` and a prefix
    of it is taken: the one whose images come nearest to ``fraction`` of the stratum's (ties: the
    shorter), with at least one patient so that no class vanishes. Prefixes of one order nest: the
    25 % subset lies inside the 50 % one. A stratum's count misses its target by at most half the
    images of the patient where the prefix ends, so by at most one when patients have two or fewer.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"dataset.train_fraction must lie in (0, 1], not {fraction}")
    if fraction == 1:
        return np.arange(len(train))
    primary = patient_strata(train)
    sizes = train.groupby("patient_id").size()
    rng = np.random.default_rng([1, seed])  # a stream of its own: not make_split's order again
    chosen = []
    for cls in CLASSES:
        patients = np.array(sorted(primary.index[primary == cls]))
        if len(patients) == 0:
            continue
        patients = patients[rng.permutation(len(patients))]
        filled = np.cumsum(sizes[patients].to_numpy())
        take = int(np.argmin(np.abs(filled - fraction * filled[-1]))) + 1
        chosen.extend(patients[:take])
    return np.flatnonzero(train["patient_id"].isin(chosen).to_numpy())


def class_counts(table: pd.DataFrame) -> dict[str, int]:
    """Images per class of a table with a ``cls`` column, in CLASSES order (zeros included)."""
    counts = table["cls"].value_counts()
    return {c: int(counts.get(c, 0)) for c in CLASSES}

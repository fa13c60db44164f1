"""Training regimes: dataset.train_fraction (nested, stratified, patient-grouped subsets of the
training split; val and test untouched) and class_balance (which rows one epoch visits)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from xray_ablate.config.choices import BALANCE_POLICIES as POLICIES
from xray_ablate.config.choices import CLASSES
from xray_ablate.config.schema import ClassBalanceConfig
from xray_ablate.data.splits import SplitOptions, class_counts, make_split, manifest_hash, train_subset
from xray_ablate.errors import UserError
from xray_ablate.paths import project_root
from xray_ablate.train.sampling import epoch_counts, epoch_rows

CONF = project_root() / "conf"
FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def _table(n_patients: int, sizes=(1, 1, 2), seed: int = 0) -> pd.DataFrame:
    """Single-class patients with ``sizes`` images each (drawn), unequal classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        cls = CLASSES[rng.choice(4, p=[0.45, 0.25, 0.1, 0.2])]
        for k in range(int(rng.choice(sizes))):
            rows.append({"image_id": f"img-{p:05d}-{k}", "cls": cls, "patient_id": f"pat-{p}"})
    return pd.DataFrame(rows)


def _subsets(manifest: pd.DataFrame, seed: int = 0) -> dict[float, pd.DataFrame]:
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    return {f: train.iloc[train_subset(train, f, seed)] for f in FRACTIONS}


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return make_split(_table(1200), SplitOptions(seed=0))


def test_subsets_nest_and_keep_class_proportions_within_one_image(manifest):
    train = manifest[manifest["split"] == "train"]
    full = class_counts(train)
    subsets = _subsets(manifest)
    for small, large in itertools.pairwise(FRACTIONS):
        assert set(subsets[small]["image_id"]) < set(subsets[large]["image_id"])
    for f, subset in subsets.items():
        got = class_counts(subset)
        for cls in CLASSES:
            assert abs(got[cls] - f * full[cls]) <= 1, (f, cls, got[cls], f * full[cls])
    assert len(subsets[1.0]) == len(train)
    assert len(subsets[0.125]) == pytest.approx(len(train) / 8, abs=4)


def test_bound_with_larger_patients_is_half_the_boundary_patient():
    manifest = make_split(_table(1200, sizes=(1, 1, 2, 3, 3), seed=3), SplitOptions(seed=2))
    full = class_counts(manifest[manifest["split"] == "train"])
    for f, subset in _subsets(manifest, seed=2).items():
        got = class_counts(subset)
        assert all(abs(got[c] - f * full[c]) <= 1.5 for c in CLASSES), (f, got, full)


def test_patients_whole_and_val_test_unchanged(manifest):
    mixed = pd.DataFrame([{"image_id": f"mix-{k}", "cls": c, "patient_id": "pat-mixed"}
                          for k, c in enumerate(["covid", "covid", "viral"])])
    manifest = make_split(pd.concat([manifest[["image_id", "cls", "patient_id"]], mixed]), SplitOptions(seed=0))
    held_out = manifest[manifest["split"] != "train"]
    hashes = set()
    for subset in _subsets(manifest).values():
        used = pd.concat([subset, held_out])
        assert (used.groupby("patient_id")["split"].nunique() == 1).all()
        # a patient's images are all in the subset or all out of it
        in_subset = manifest["patient_id"].isin(subset["patient_id"])
        assert set(manifest.loc[in_subset & (manifest["split"] == "train"), "image_id"]) == set(subset["image_id"])
        assert not set(subset["patient_id"]) & set(held_out["patient_id"])
        hashes.add(manifest_hash(used[used["split"] != "train"]))
    assert len(hashes) == 1


def test_subset_is_fixed_by_seed_not_row_order(manifest):
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    chosen = set(train["image_id"].iloc[train_subset(train, 0.25, seed=0)])
    shuffled = train.sample(frac=1.0, random_state=5).reset_index(drop=True)
    assert set(shuffled["image_id"].iloc[train_subset(shuffled, 0.25, seed=0)]) == chosen
    other = set(train["image_id"].iloc[train_subset(train, 0.25, seed=1)])
    assert len(other ^ chosen) > 0.5 * len(chosen)
    np.testing.assert_array_equal(train_subset(train, 1.0, seed=0), np.arange(len(train)))
    positions = train_subset(train, 0.5, seed=0)
    assert (np.diff(positions) > 0).all()


def test_every_class_keeps_a_patient_and_bad_fractions_are_rejected():
    tiny = pd.DataFrame({"image_id": [f"i{k}" for k in range(13)], "cls": ["bacterial"] * 10 + ["covid"] * 3,
                         "patient_id": [f"p{k}" for k in range(13)]})
    assert class_counts(tiny.iloc[train_subset(tiny, 0.1, seed=0)]) == {
        "bacterial": 1, "viral": 0, "covid": 1, "healthy": 0}
    for bad in (0, -0.5, 1.5):
        with pytest.raises(UserError, match="dataset.train_fraction"):
            train_subset(tiny, bad, seed=0)


def _labels(sizes) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(9))]


def test_natural_is_todays_randperm():
    labels = _labels([50, 20, 7, 13])
    a, b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(3):
        natural = epoch_rows(labels, ClassBalanceConfig("natural"), a)
        assert torch.equal(natural, torch.randperm(len(labels), generator=b))
    assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize(("balance", "expected"), [
    (ClassBalanceConfig("undersample"), [7, 7, 7, 7]),
    (ClassBalanceConfig("oversample"), [50, 50, 50, 50]),
    (ClassBalanceConfig("cap", max_per_class=15), [15, 15, 7, 13]),
])
def test_epoch_composition_and_even_coverage(balance, expected):
    sizes = [50, 20, 7, 13]
    labels = _labels(sizes)
    assert epoch_counts(np.array(sizes), balance).tolist() == expected
    generator = torch.Generator().manual_seed(0)
    epochs = 1500
    visits = torch.zeros(len(labels), dtype=torch.long)
    first = None
    for _ in range(epochs):
        rows = epoch_rows(labels, balance, generator)
        assert rows.dtype == torch.long
        assert torch.bincount(labels[rows], minlength=4).tolist() == expected
        per_row = torch.bincount(rows, minlength=len(labels))
        for c, n in enumerate(sizes):  # within an epoch, a class's rows repeat evenly
            k = per_row[labels == c]
            assert k.max() - k.min() <= 1 and k.min() == expected[c] // n
        visits += per_row
        first = rows if first is None else first
    assert not torch.equal(rows, first)  # a fresh draw each epoch
    assert (torch.diff(labels[first]) != 0).sum() > len(first) / 3  # classes interleaved
    for c, n in enumerate(sizes):
        counts = visits[labels == c].numpy()
        mean = epochs * expected[c] / n
        np.testing.assert_allclose(counts.mean(), mean)
        if expected[c] % n:  # drawn rows: equally often, up to sampling noise
            assert stats.chisquare(counts).pvalue > 1e-3
            assert np.abs(counts - mean).max() < 5 * np.sqrt(mean)
        else:
            assert (counts == mean).all()


def test_same_generator_state_same_epoch_and_absent_classes():
    labels = _labels([30, 0, 4, 9])
    for name in POLICIES:
        balance = ClassBalanceConfig(name, max_per_class=6 if name == "cap" else None)
        a = epoch_rows(labels, balance, torch.Generator().manual_seed(1))
        b = epoch_rows(labels.numpy(), balance, torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        counts = torch.bincount(labels[a], minlength=4).tolist()
        assert counts[1] == 0 and counts == epoch_counts(np.array([30, 0, 4, 9]), balance).tolist()
    assert epoch_counts(np.array([30, 0, 4, 9]), ClassBalanceConfig("undersample")).tolist() == [4, 0, 4, 4]


def test_class_balance_configs_and_errors():
    for name in POLICIES:
        conf = OmegaConf.load(CONF / "class_balance" / f"{name}.yaml")
        assert ClassBalanceConfig(**conf).name == name
    assert OmegaConf.load(CONF / "class_balance" / "cap.yaml").max_per_class > 0
    with pytest.raises(UserError, match="class_balance.max_per_class"):
        ClassBalanceConfig("cap")
    with pytest.raises(UserError, match="class_balance.name"):
        ClassBalanceConfig("smote")


def test_experiment_grids():
    imbalance = OmegaConf.load(project_root() / "experiments" / "study_imbalance.yaml")
    params = imbalance.hydra.sweeper.params
    assert tuple(params.class_balance.split(",")) == POLICIES and params.class_weights == "off,on"
    assert imbalance.report.baseline.class_balance == "natural"
    curve = OmegaConf.load(project_root() / "experiments" / "learning_curve.yaml")
    params = curve.hydra.sweeper.params
    assert tuple(float(f) for f in params["dataset.train_fraction"].split(",")) == FRACTIONS
    assert params["dataset.mode"] == "masked,raw"
    assert OmegaConf.load(CONF / "dataset" / "masked.yaml").train_fraction == 1.0

"""The ablation factors, defined once: name, config key, report label, run-name prefix.

Tags (``factor.<name>``), run names, report columns and labels all derive from ``FACTORS``. Adding a
factor is one entry here plus its config group (see README, "Adding a factor").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce


@dataclass(frozen=True)
class Factor:
    name: str  # tag factor.<name> and the report's column
    key: str  # dotted config key whose value is the level
    label: str  # shown in report tables
    short: str = ""  # prefix of the level in run names ("cw_on"); empty: the level alone


FACTORS: list[Factor] = [
    Factor("dataset", "dataset.mode", "dataset"),
    Factor("train_fraction", "dataset.train_fraction", "training fraction", "tf"),
    Factor("class_weights", "class_weights.name", "class weights", "cw"),
    Factor("class_balance", "class_balance.name", "class balance", "cb"),
    Factor("normalization", "normalization.name", "normalization", "norm"),
    Factor("augmentation", "augmentation.name", "augmentation", "aug"),
    Factor("brisque_filter", "brisque_filter.name", "BRISQUE outliers removed", "bq"),
    Factor("backbone", "backbone.label", "backbone"),
]


def factor_names() -> list[str]:
    return [f.name for f in FACTORS]


def factor_labels() -> dict[str, str]:
    return {f.name: f.label for f in FACTORS}


def level(config, factor: Factor) -> str:
    """The factor's level in a config object (dataclass or DictConfig)."""
    return str(reduce(getattr, factor.key.split("."), config))


def factor_levels(config) -> dict[str, str]:
    return {f.name: level(config, f) for f in FACTORS}


def run_name(config) -> str:
    """e.g. masked-tf_1.0-cw_off-cb_natural-norm_on-aug_on-bq_off-cnn16-s0"""
    parts = [f"{f.short}_{level(config, f)}" if f.short else level(config, f) for f in FACTORS]
    return "-".join([*parts, f"s{config.seed}"])


def varied_factors(configs) -> list[str]:
    """The factors whose level differs between the configs, in the factor table's order."""
    return [f.name for f in FACTORS if len({level(c, f) for c in configs}) > 1]

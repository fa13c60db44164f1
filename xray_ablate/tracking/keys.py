"""The config key that groups the seeds of one configuration, and the run's readable name."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from xray_ablate.tracking.schema import FACTORS

# Keys that do not change what is computed: where things go, how many processes, which seed.
NON_SEMANTIC_TOP = ("paths", "tracking", "hydra", "num_workers", "device", "seed", "repeats",
                    "resume", "report", "sweep", "experiment_name")
NON_SEMANTIC_NESTED = (("dataset", "root"), ("quality", "report_dir"))


def semantic_config(cfg: DictConfig) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SEMANTIC_TOP:
        resolved.pop(key, None)
    for group, key in NON_SEMANTIC_NESTED:
        if isinstance(resolved.get(group), dict):
            resolved[group].pop(key, None)
    return resolved


def config_key(cfg: DictConfig) -> str:
    """Hash of the resolved config without the seed and without non-semantic keys."""
    text = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def factor_levels(cfg: DictConfig) -> dict[str, str]:
    return {name: str(OmegaConf.select(cfg, key)) for name, key in FACTORS.items()}


def run_name(cfg: DictConfig) -> str:
    """e.g. masked-cw_off-norm_on-aug_on-bq_off-cnn16-s0"""
    f = factor_levels(cfg)
    return (f"{f['dataset']}-cw_{f['class_weights']}-norm_{f['normalization']}-aug_{f['augmentation']}"
            f"-bq_{f['brisque_filter']}-{f['backbone']}-s{cfg.seed}")

"""The config key that groups the seeds of one configuration, and the run's readable name."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from xray_ablate.tracking.schema import FACTORS

# Keys that do not change what is computed: where things go, how the work is spread, which
# seed, how a sweep was designed.
NON_SEMANTIC_TOP = ("paths", "tracking", "hydra", "num_workers", "threads", "device", "seed",
                    "repeats", "resume", "report", "sweep", "experiment_name", "full_factorial")
NON_SEMANTIC_NESTED = (("dataset", "root"), ("quality", "report_dir"), ("quality", "device"),
                       ("quality", "batch_size"), ("backbone", "download"))


def semantic_config(cfg: DictConfig, device_type: str) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SEMANTIC_TOP:
        resolved.pop(key, None)
    for group, key in NON_SEMANTIC_NESTED:
        if isinstance(resolved.get(group), dict):
            resolved[group].pop(key, None)
    if not cfg.brisque_filter.enabled:
        resolved.pop("quality", None)  # scoring settings matter only when the filter uses them
    # cpu, cuda (bf16 autocast) and mps give different numbers: their runs are not seeds of one
    # configuration.
    resolved["device_type"] = device_type
    return resolved


def config_key(cfg: DictConfig, device_type: str) -> str:
    """Hash of the resolved config without the seed and non-semantic keys, plus the device type."""
    text = json.dumps(semantic_config(cfg, device_type), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def factor_levels(cfg: DictConfig) -> dict[str, str]:
    return {name: str(OmegaConf.select(cfg, key)) for name, key in FACTORS.items()}


def run_name(cfg: DictConfig) -> str:
    """e.g. masked-cw_off-norm_on-aug_on-bq_off-cnn16-s0"""
    f = factor_levels(cfg)
    return (f"{f['dataset']}-cw_{f['class_weights']}-norm_{f['normalization']}-aug_{f['augmentation']}"
            f"-bq_{f['brisque_filter']}-{f['backbone']}-s{cfg.seed}")

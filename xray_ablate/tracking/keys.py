"""The config key that groups the seeds of one configuration."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from xray_ablate.config.schema import Config

# Keys that do not change what is trained: where things go, how the work is spread, which seed,
# how a sweep was designed, and evaluation-only settings (subgroups, the audit, attribute CSVs).
NON_SEMANTIC_TOP = ("paths", "tracking", "num_workers", "cache_verify", "threads", "device", "seed", "repeats",
                    "resume", "report", "sweep", "experiment_name", "full_factorial", "audit", "eval")
NON_SEMANTIC_NESTED = (("dataset", "root"), ("dataset", "release"), ("dataset", "metadata"),
                       ("dataset", "metadata_key"),
                       ("quality", "report_dir"), ("quality", "device"), ("quality", "batch_size"),
                       ("backbone", "download"), ("trainer", "checkpoint_every"))


def semantic_config(config: Config, device_type: str) -> dict:
    resolved = asdict(config)
    for key in NON_SEMANTIC_TOP:
        resolved.pop(key, None)
    for group, key in NON_SEMANTIC_NESTED:
        resolved[group].pop(key, None)
    if not config.brisque_filter.enabled:
        resolved.pop("quality", None)  # scoring settings matter only when the filter uses them
    # cpu, cuda (bf16 autocast) and mps give different numbers: their runs are not seeds of one
    # configuration.
    resolved["device_type"] = device_type
    return resolved


def config_key(config: Config, device_type: str) -> str:
    """Hash of the config without the seed and non-semantic keys, plus the device type."""
    text = json.dumps(semantic_config(config, device_type), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]

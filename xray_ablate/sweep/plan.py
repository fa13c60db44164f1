"""The jobs of a multirun, planned exactly as Hydra's basic sweeper will launch them."""

from __future__ import annotations

import hashlib
import json

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf


def planned_jobs(cfg: DictConfig) -> list[list[str]]:
    """Each job's overrides: config sweep params (e.g. seed=range(3)) crossed with the command
    line's sweeps; a key given on the command line wins over the same key in the config."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=True)
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))
    overrides = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(overrides, None)[0]


def sweep_id(experiment_name: str, jobs: list[list[str]]) -> str:
    """Stable across reruns of the same command, so a resumed sweep keeps its parent run."""
    text = json.dumps([experiment_name, sorted(sorted(j) for j in jobs)])
    return hashlib.sha256(text.encode()).hexdigest()[:10]

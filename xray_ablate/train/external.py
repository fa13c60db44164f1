"""External test sets (eval.sets): prepared like the main set, checked for training images,
and scored with a run's best state on all of their images."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xray_ablate import evaluation
from xray_ablate.config.schema import Config
from xray_ablate.data.fingerprint import file_digests
from xray_ablate.data.prepare import PreparedData, prepare
from xray_ablate.data.settings import data_config
from xray_ablate.errors import UserError
from xray_ablate.train.fit import to_batches
from xray_ablate.train.loop import evaluate


@dataclass
class ExternalSet:
    name: str
    data: PreparedData


def prepare_external(config: Config, data: PreparedData, train_rows: np.ndarray) -> list[ExternalSet]:
    """Each eval.sets entry with the run's ingest and preprocessing options (any layout, no
    metadata CSV), cached like the main set; a UserError when one holds a training image."""
    main = data_config(config)
    out = []
    for spec in config.eval.sets:
        cfg = dataclasses.replace(main, root=Path(spec.root), metadata=None, metadata_key=None,
                                  ingest=dataclasses.replace(main.ingest, layout="auto"))
        external = prepare(cfg)
        check_no_training_images(data, train_rows, external, (main.root, cfg.root), main.cache_dir, spec.name)
        out.append(ExternalSet(spec.name, external))
    return out


def check_no_training_images(data: PreparedData, train_rows: np.ndarray, external: PreparedData,
                             roots: tuple[Path, Path], cache_dir: Path, name: str) -> None:
    """UserError naming both files when an external image has the bytes of a training image
    (``roots``: the main and the external dataset root; the content digests are those prepare()
    recorded for their fingerprints)."""
    main, ext = (_digests(root, cache_dir) for root in roots)
    train = {main[_key(p)]: p for p in data.table["image_path"].iloc[train_rows] if _key(p) in main}
    for path in external.table["image_path"]:
        twin = train.get(ext.get(_key(path)))
        if twin is not None:
            raise UserError(f"eval.sets {name}: {path} is identical to training image {twin}: an "
                            "external test set must not hold training images")


def _digests(root: Path, cache_dir: Path) -> dict[Path, str]:
    base = Path(root).resolve()
    return {base / rel: digest for rel, digest in file_digests(root, cache_dir).items()}


def _key(path) -> Path:
    return Path(path).resolve()


def external_metrics(model: nn.Module, sets: list[ExternalSet], config: Config,
                     device: torch.device) -> dict[str, float]:
    """ext_<name>_<metric> (classification metrics, loss, n) of ``model`` on every set."""
    out = {}
    for ext in sets:
        rows = np.arange(len(ext.data.table))
        loss, probs = evaluate(model, to_batches(ext.data, rows, device), config.trainer.batch_size, device,
                               config.trainer.amp)
        prefix = f"ext_{ext.name}"
        out.update(evaluation.classification_metrics(ext.data.table["label"].to_numpy(), probs, prefix))
        out.update({f"{prefix}_loss": loss, f"{prefix}_n": float(len(rows))})
    return out

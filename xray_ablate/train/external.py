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
from xray_ablate.data.fingerprint import file_digest, file_digests
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
                                  ingest=dataclasses.replace(main.ingest, layout="auto"),
                                  root_setting=f"eval.sets[{spec.name}].root")
        try:
            external = prepare(cfg)
        except UserError as err:  # prepare() names dataset.root; here it is this set's root
            raise UserError(f"eval.sets {spec.name} (root {spec.root}): {err}") from None
        check_no_training_images(data, train_rows, external, main.cache_dir, spec.name)
        out.append(ExternalSet(spec.name, external))
    return out


def check_no_training_images(data: PreparedData, train_rows: np.ndarray, external: PreparedData,
                             cache_dir: Path, name: str) -> None:
    """UserError naming both files when an external image has the bytes of a training image (the
    content digests prepare() recorded for each dataset's fingerprint, keyed by the paths the
    tables hold; a file without one is read here, so no image goes unchecked)."""
    main, ext = file_digests(data.root, cache_dir), file_digests(external.root, cache_dir)
    train = {_digest(main, path): path for path in data.table["image_path"].iloc[train_rows]}
    for path in external.table["image_path"]:
        twin = train.get(_digest(ext, path))
        if twin is not None:
            raise UserError(f"eval.sets {name}: {path} is identical to training image {twin}: an "
                            "external test set must not hold training images")


def _digest(digests: dict[Path, str], path) -> str:
    return digests.get(Path(path)) or file_digest(Path(path))


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

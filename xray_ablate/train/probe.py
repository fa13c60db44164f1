"""The source probe on a trained model's own features: how well the input of its last linear layer
predicts an attribute (the source hospital, say) on the test split. A model that leans on the
source carries it there; the pixel probe of references/ asks the same of the images themselves.
Logged per run as probe_<attribute>_accuracy (and _majority, the rate of always guessing the
training split's most common level, and _n, the test images), so a factor's effect on it is an
ablation outcome."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from xray_ablate.data.prepare import PreparedData
from xray_ablate.references.baselines import Probe, source_probe
from xray_ablate.train.fit import to_batches
from xray_ablate.train.inputs import FitInputs
from xray_ablate.train.loop import to_input

SPLITS = ("train", "val", "test")


@torch.no_grad()
def penultimate_features(model: nn.Module, data: PreparedData, rows: np.ndarray, batch_size: int,
                         device: torch.device) -> np.ndarray:
    """(len(rows), features): what the last nn.Linear of the model receives, in eval mode."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _module, args: captured.append(args[0].float().cpu()))
    try:
        model.eval()
        batches = to_batches(data, rows, device)
        for start in range(0, len(batches), batch_size):
            model(to_input(batches.images[start:start + batch_size], device))
    finally:
        handle.remove()
    return torch.cat(captured).numpy()


def feature_probes(model: nn.Module, data: PreparedData, inputs: FitInputs, attributes: list[str],
                   batch_size: int, device: torch.device) -> tuple[dict[str, float], pd.DataFrame]:
    """probe_<attribute>_accuracy, _majority and _n for each attribute with 2 or more training
    levels; and per test image (image_id), whether each probe was right (column probe_<attribute>,
    0/1: the per-image scores of the report's intervals over seeds and test images)."""
    per_image = pd.DataFrame({"image_id": data.table["image_id"].to_numpy()[inputs.test]})
    if not attributes:
        return {}, per_image
    rows = {s: getattr(inputs, s) for s in SPLITS}
    x = {s: penultimate_features(model, data, r, batch_size, device) for s, r in rows.items()}
    metrics = {}
    for attribute in attributes:
        levels = {s: data.table[attribute].to_numpy()[r] for s, r in rows.items()}
        probe = source_probe(attribute, x, levels)
        if probe is not None:
            metrics |= probe_metrics(f"probe_{attribute}", probe)
            per_image[f"probe_{attribute}"] = probe.hits.astype(float)
    return metrics, per_image


def probe_metrics(prefix: str, probe: Probe) -> dict[str, float]:
    """<prefix>_accuracy, _majority and _n: the probe's test accuracy, the majority rule's, the images."""
    return {f"{prefix}_accuracy": probe.test.rate, f"{prefix}_majority": probe.majority.rate,
            f"{prefix}_n": float(probe.test.n)}

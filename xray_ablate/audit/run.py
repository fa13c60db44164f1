"""The audit of one trained model: attribution maps for the predicted class, shares per image, a summary.

    result = audit_split(model, data, test_rows, test_probs, settings)   # after training
    mlflow.log_metrics(result.metrics); result.per_image -> CSV; result.montage -> PNG
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from xray_ablate.audit import attribution
from xray_ablate.audit.montage import montage_figure
from xray_ablate.audit.shares import border_band, hot_spots, mass_shares
from xray_ablate.config.choices import ATTRIBUTION_METHODS, CLASSES, check_registry
from xray_ablate.config.schema import AuditConfig, Config
from xray_ablate.data import canary
from xray_ablate.data.prepare import PreparedData
from xray_ablate.models import build_model
from xray_ablate.train.loop import to_input

log = logging.getLogger(__name__)

# What each method of audit.methods computes, for the predicted class: (model, Grad-CAM's layer,
# input, target) -> (n, H, W) maps.
METHODS = {
    "gradcam": attribution.gradcam,
    "inputxgrad": lambda model, _layer, x, target: attribution.input_x_gradient(model, x, target),
    "intgrad": lambda model, _layer, x, target: attribution.integrated_gradients(model, x, target),
}
check_registry("audit methods", METHODS, tuple(ATTRIBUTION_METHODS))
# The model-randomisation check (Adebayo et al., "Sanity checks for saliency maps", 2018) maps the
# first this many audited images again with every weight of the model drawn afresh.
RANDOMISED_IMAGES = 16


@dataclass
class AuditResult:
    # image_id, label, pred, correct, lung_area, outside_lung_<m>, border_<m>; hotspot_<attribute>_<m>
    # for the planted markers (data.canary.PLANTED) the images carry
    per_image: pd.DataFrame
    # audit_outside_lung_<m>, audit_border_<m>, references, time; audit_hotspot_<attribute>_<m>
    metrics: dict[str, float]
    maps: dict[str, np.ndarray] = field(repr=False)  # method -> (n, H, W) float32, >= 0
    montage: Figure = field(repr=False)


def choose_images(image_ids, k: int, seed: int) -> np.ndarray:
    """Positions of up to ``k`` images, sorted, chosen by a seeded hash of each image id: the
    same images for every configuration, and a bigger ``k`` only adds images."""
    ids = [str(i) for i in image_ids]
    rank = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in ids]
    return np.sort(np.argsort(rank, kind="stable")[:k])


def check_layers(configs: Iterable[Config]) -> None:
    """A UserError, before anything trains, for a named audit.layer that a job's model lacks (the
    audit runs after training: a bad name used to cost the whole run). The model is built without
    its weights: the same modules, nothing to load or download."""
    checked = set()
    for config in configs:
        key = (config.backbone.name, config.image_size, config.audit.layer)
        if not config.audit.enabled or config.audit.layer is None or key in checked:
            continue
        checked.add(key)
        spec = dataclasses.replace(config.backbone, pretrained=False, freeze="none")
        model = build_model(spec, len(CLASSES), config.image_size)
        attribution.gradcam_layer(model, config.image_size, config.audit.layer)


def audit_split(model: nn.Module, data: PreparedData, rows: np.ndarray, probs: np.ndarray,
                settings: AuditConfig) -> AuditResult | None:
    """Audit up to ``settings.images`` of ``rows`` (a split of ``data``; ``probs`` row-aligned with
    ``rows``); None when the audit is off or the dataset has no Lung polygons."""
    if not settings.enabled or data.lungs is None:
        if settings.enabled:
            log.info("saliency audit skipped: %s layout without Lung polygons", data.layout)
        return None
    pick = choose_images(data.table["image_id"].to_numpy()[rows], settings.images, settings.seed)
    chosen = np.asarray(rows)[pick]
    images = np.asarray(data.images[chosen])
    layer = attribution.gradcam_layer(model, images.shape[-1], settings.layer)
    log.info("saliency audit: Grad-CAM on %s (%d px maps)", layer.name, layer.side)
    markers = {m: data.table[m.attribute].to_numpy()[chosen] == m.level
               for m in canary.PLANTED if m.attribute in data.table.columns}
    result = audit_run(model, images, data.lung_masks(chosen), data.table["label"].to_numpy()[chosen],
                       probs[pick], model.get_submodule(layer.name), settings,
                       image_ids=data.table["image_id"].to_numpy()[chosen], markers=markers)
    result.metrics["audit_gradcam_side"] = float(layer.side)
    return result


def audit_run(model: nn.Module, images: np.ndarray, lung_masks: np.ndarray, labels: np.ndarray,
              probs: np.ndarray, target_layer: nn.Module, settings: AuditConfig,
              image_ids=None, markers: dict[canary.PlantedMarker, np.ndarray] | None = None) -> AuditResult:
    """Attribution for each image's predicted class (argmax of ``probs``), by every method.

    images (n, H, W) uint8 as the model saw them; lung_masks (n, H, W) bool; markers: planted
    marker -> (n,) bool, which images carry it (its box is checked for a hot spot)."""
    started = time.perf_counter()
    preds = np.asarray(probs).argmax(1)
    methods = tuple(settings.methods)
    maps = _attribution_maps(model, target_layer, images, preds, settings.batch_size, methods)
    band = border_band(images.shape[-1], settings.border)
    per_image = pd.DataFrame({
        "image_id": np.arange(len(images)) if image_ids is None else np.asarray(image_ids),
        "label": labels, "pred": preds, "correct": preds == np.asarray(labels),
        "lung_area": lung_masks.mean(axis=(1, 2)),
    })
    metrics = {}
    for method, values in maps.items():
        per_image[f"outside_lung_{method}"] = 1 - mass_shares(values, lung_masks)
        per_image[f"border_{method}"] = mass_shares(values, band)
        empty = int(np.isnan(per_image[f"border_{method}"]).sum())
        metrics[f"audit_empty_maps_{method}"] = float(empty)
        if empty == len(images):  # no share to average: say why instead of logging NaN
            log.warning("saliency audit: all %d %s maps are empty (no attribution mass), so "
                        "audit_outside_lung_%s and audit_border_%s are not logged",
                        empty, method, method, method)
            continue
        for share in ("outside_lung", "border"):
            metrics[f"audit_{share}_{method}"] = float(np.nanmean(per_image[f"{share}_{method}"]))
    for marker, marked in (markers or {}).items():
        if np.any(marked):
            metrics |= _marker_hot_spots(maps, marker, np.asarray(marked, bool), per_image)
    metrics |= _randomisation_check(model, target_layer, images, lung_masks, preds, per_image, settings.batch_size,
                                    methods)
    metrics.update({
        "audit_lung_area": float(per_image["lung_area"].mean()),  # a uniform map's inside share
        "audit_border_area": float(band.mean()),
        "audit_images": float(len(images)),
        "audit_seconds": time.perf_counter() - started,
    })
    figure = montage_figure(images, lung_masks, maps, per_image, {m: ATTRIBUTION_METHODS[m] for m in methods})
    return AuditResult(per_image, metrics, maps, figure)


def _marker_hot_spots(maps: dict[str, np.ndarray], marker: canary.PlantedMarker, marked: np.ndarray,
                      per_image: pd.DataFrame) -> dict[str, float]:
    """Per method, the share of the images carrying ``marker`` whose box is a hot spot of the map
    (audit_hotspot_<attribute>_<method>); hotspot_<attribute>_<method> per image (NaN: unmarked)."""
    metrics = {}
    for method, values in maps.items():
        size = values.shape[-1]
        top, bottom, left, right = canary.marker_box(size, marker.box)
        box = np.zeros((size, size), bool)
        box[top:bottom, left:right] = True
        hot = hot_spots(values, box)
        name = f"hotspot_{marker.attribute}_{method}"
        per_image[name] = np.where(marked, hot, np.nan)
        metrics[f"audit_{name}"] = float(hot[marked].mean())
    return metrics


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every layer's parameters drawn afresh (seeded; the global random
    state is left as it was)."""
    shuffled = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in shuffled.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return shuffled


def _randomisation_check(model: nn.Module, layer: nn.Module, images: np.ndarray, lung_masks: np.ndarray,
                         preds: np.ndarray, per_image: pd.DataFrame, batch_size: int,
                         methods: tuple[str, ...]) -> dict[str, float]:
    """Per method, how far the outside-lung share of the first RANDOMISED_IMAGES images moves when
    the model's weights are redrawn at random (same images, same target class): a share that does
    not move shows the input, not what the model learned. Adds random_outside_lung_<method> per
    image (NaN beyond those images); returns audit_randomisation_change_<method> (a fraction,
    randomisation_change's)."""
    k = min(RANDOMISED_IMAGES, len(images))
    name = next(n for n, m in model.named_modules() if m is layer)
    shuffled = randomised(model)
    maps = _attribution_maps(shuffled, shuffled.get_submodule(name), images[:k], preds[:k], batch_size, methods)
    metrics = {}
    for method, values in maps.items():
        random_share = 1 - mass_shares(values, lung_masks[:k])
        per_image[f"random_outside_lung_{method}"] = np.concatenate([random_share, np.full(len(images) - k, np.nan)])
        change = randomisation_change(per_image[f"outside_lung_{method}"].to_numpy()[:k], random_share)
        if np.isfinite(change):
            metrics[f"audit_randomisation_change_{method}"] = change
    return metrics


def randomisation_change(trained: np.ndarray, randomised: np.ndarray) -> float:
    """The mean over images of how far each image's share moved (NaN where no image has both).
    Per image, so moves in opposite directions add up: the change of the mean share cancelled them,
    and maps that moved everywhere could read as maps that showed only the input."""
    both = np.isfinite(trained) & np.isfinite(randomised)
    return float(np.abs(trained[both] - randomised[both]).mean()) if both.any() else math.nan


def _attribution_maps(model: nn.Module, layer: nn.Module, images: np.ndarray, preds: np.ndarray,
                      batch_size: int, methods: tuple[str, ...]) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    out = {method: [] for method in methods}
    with attribution.attribution_mode(model):
        for start in range(0, len(images), batch_size):
            x = to_input(torch.from_numpy(np.asarray(images[start:start + batch_size])).unsqueeze(1), device)
            x.requires_grad_()  # the input is what gradients are taken for
            target = torch.from_numpy(preds[start:start + batch_size]).to(device)
            for method, parts in out.items():
                parts.append(METHODS[method](model, layer, x, target).detach().cpu())
    return {method: torch.cat(parts).numpy().astype(np.float32) for method, parts in out.items()}

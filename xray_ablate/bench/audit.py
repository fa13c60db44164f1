"""Saliency audit cost: seconds per 100 test images for cnn16 at 200 px on the CPU, both methods."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from xray_ablate.audit import audit_run
from xray_ablate.audit.attribution import gradcam_layer
from xray_ablate.audit.run import RANDOMISED_IMAGES
from xray_ablate.bench.rows import Row
from xray_ablate.config.schema import AuditConfig, BackboneConfig
from xray_ablate.models import build_model

COMMAND = "python -m xray_ablate.bench audit"
# (images, px, rounds): the benchmark, and the smoke size that only proves it runs
FULL, SMOKE = (100, 200, 2), (4, 64, 1)


def run(smoke: bool = False) -> list[Row]:
    n_images, size, rounds = SMOKE if smoke else FULL
    load = os.getloadavg()[0]  # a shared machine: say how busy it was
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.broadcast_to(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1, images.shape)
    labels = rng.integers(0, 4, n_images)
    probs = rng.dirichlet(np.ones(4), n_images)
    torch.manual_seed(0)
    model = build_model(BackboneConfig("cnn16"), 4, size, normalize=True, train_stats=(0.5, 0.25))
    settings = AuditConfig(images=n_images)
    layer = model.get_submodule(gradcam_layer(model, size).name)
    audit_run(model, images[:8], lungs[:8], labels[:8], probs[:8], layer, settings)  # warm-up
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        audit_run(model, images, lungs, labels, probs, layer, settings)
        seconds.append(time.perf_counter() - started)
    per_100 = min(seconds) * 100 / n_images
    return [Row("audit", f"saliency audit, cnn16 {size} px, CPU", per_100, "s per 100 images", command=COMMAND,
                notes=f"Grad-CAM + input x gradient for the predicted class, shares, montage and the "
                      f"model-randomisation check on {RANDOMISED_IMAGES} images (since 2026-12-05); batch "
                      f"{settings.batch_size}; best of {rounds} (max {max(seconds) * 100 / n_images:.1f} s); "
                      f"load average {load:.1f} before")]

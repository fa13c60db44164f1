"""The study's augmentation applied to whole batches on the device (no per-sample Python)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xray_ablate.config.schema import AugmentationConfig


def random_affine(x: torch.Tensor, opts: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """Rotate, zoom and shift each image of a (B, C, H, W) float batch by its own random amount.

    The random amounts come from ``generator`` on the CPU (a few numbers per image), so a seed
    gives the same augmentation on every device, and no device generator is needed (MPS).
    """

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(x.shape[0], generator=generator) * 2 - 1) * limit

    angle = uniform(opts.rotation_turns * 2 * math.pi)
    scale = 1 + uniform(opts.zoom)
    # affine_grid maps output to input coordinates in [-1, 1], where the full side spans 2.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin, uniform(2 * opts.translate)], dim=1),
        torch.stack([sin, cos, uniform(2 * opts.translate)], dim=1),
    ], dim=1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if opts.fill:
        inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        out = out + opts.fill * (1 - inside)
    return out

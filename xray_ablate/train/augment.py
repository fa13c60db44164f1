"""The study's augmentation applied to whole batches on the device (no per-sample Python)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the config schema imports this module's registries
    from xray_ablate.config.schema import AugmentationConfig


def random_affine(x: torch.Tensor, opts: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """Rotate, zoom and shift each image of a (B, C, H, W) float batch by its own random amount.

    The random amounts come from ``generator`` on the CPU (a few numbers per image), so a seed
    gives the same augmentation on every device, and no device generator is needed (MPS).
    """
    return warp(x, affine_theta(x.shape[0], opts, generator).to(x.device), opts.fill)


def affine_theta(b: int, opts: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """(b, 2, 3) affine matrices on the CPU: the draws of one batch (angle, zoom, x and y shift)."""

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * limit

    angle = uniform(opts.rotation_turns * 2 * math.pi)
    scale = 1 + uniform(opts.zoom)
    # affine_grid maps output to input coordinates in [-1, 1], where the full side spans 2.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([
        torch.stack([cos, -sin, uniform(2 * opts.translate)], dim=1),
        torch.stack([sin, cos, uniform(2 * opts.translate)], dim=1),
    ], dim=1)


def warp(x: torch.Tensor, theta: torch.Tensor, fill: float | torch.Tensor) -> torch.Tensor:
    """Resample each image by its matrix; ``fill`` (a number, or one per image shaped (B, 1, 1, 1))
    for pixels from outside the image."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if isinstance(fill, torch.Tensor) or fill:
        inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        out = out + fill * (1 - inside)
    return out

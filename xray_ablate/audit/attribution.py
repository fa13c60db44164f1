"""Attribution maps from Captum: Grad-CAM on the backbone's last conv activation, and input x gradient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from captum.attr import InputXGradient, LayerAttribution, LayerGradCam
from torch import nn


@contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no gradient for the weights (only for the input); both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


def gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Positive Grad-CAM for ``target``, bilinearly upsampled to the input size: (n, H, W)."""
    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear").clamp_min_(0)[:, 0]


def input_x_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|input x gradient| for ``target``, summed over input channels: (n, H, W).

    The magnitude: pixel gradients change sign from pixel to pixel, and a pixel that lowers
    the logit is still evidence the model uses."""
    return InputXGradient(model).attribute(x, target=target).abs().sum(1)

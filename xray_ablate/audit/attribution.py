"""Attribution maps from Captum: Grad-CAM on the deepest layer whose map still resolves the lungs,
input x gradient, and integrated gradients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam
from torch import nn

from xray_ablate.errors import UserError

# A coarser Grad-CAM map cannot say inside or outside a lung: on cnn16's last conv activation
# (2 x 2 at 64 px, each cell seeing most of the image) raw and masked models both put 74 % of the
# mass outside the lungs, exactly where a uniform map puts it.
MIN_CAM_SIDE = 16
# Integrated gradients' steps from a black image: this many gradients per image, so its maps cost
# about 16 x input x gradient's (a demo run's audit: 8.4 s instead of 1.2 s); audit.methods opts in.
IG_STEPS = 16


@dataclass(frozen=True)
class CamLayer:
    name: str  # in model.named_modules()
    side: int  # the smaller side of its map at the audited image size


# Steps inside a block (a convolution before its normalisation and activation): not read.
INSIDE_A_BLOCK = (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def gradcam_layer(model: nn.Module, image_size: int, name: str | None = None) -> CamLayer:
    """Where Grad-CAM reads: the module ``name`` (audit.layer) when given, else the deepest
    activation or block output, in the order a forward pass finishes them, whose map is at least
    MIN_CAM_SIDE on each side at ``image_size`` and that runs once per forward pass (Grad-CAM needs
    one activation: a ReLU shared inside a ResNet block runs three times, so the block is read)."""
    modules = dict(model.named_modules())
    sides: dict[str, int] = {}
    calls: dict[str, int] = {}

    def record(module_name: str):
        def hook(_module, _inputs, output):
            calls[module_name] = calls.get(module_name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                sides.pop(module_name, None)  # re-inserted: dict order is the order modules finish
                sides[module_name] = min(output.shape[-2:])
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    fit = [n for n, side in sides.items() if side >= MIN_CAM_SIDE and calls[n] == 1
           and not isinstance(modules[n], INSIDE_A_BLOCK)]
    if name is not None:
        if name not in sides:
            raise UserError(f"audit.layer={name!r} is not a module of this model with a 2-D map; "
                            f"the deepest with maps of {MIN_CAM_SIDE} px or more: {', '.join(fit[-5:]) or 'none'}")
        return CamLayer(name, sides[name])
    if not fit:
        raise UserError(f"no layer of this model keeps a map of {MIN_CAM_SIDE} px or more at image size "
                        f"{image_size}: set audit.layer to a module name")
    return CamLayer(fit[-1], sides[fit[-1]])


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


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|integrated gradients| for ``target`` from a black image (Sundararajan et al. 2017), IG_STEPS
    Gauss-Legendre steps, summed over input channels: (n, H, W). Input x gradient reads the
    gradient at the image only; these attributions add up to the logit minus the black image's
    (completeness), so a pixel whose effect has saturated at the image is not missed."""
    return IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=IG_STEPS,
                                                internal_batch_size=len(x)).abs().sum(1)

"""Backbone registry: name -> builder, and the classifier that wraps every backbone."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from xray_ablate.config.choices import BACKBONES, FREEZE_MODES, MIN_IMAGE_SIZE, check_registry
from xray_ablate.config.choices import PRETRAINED_BACKBONES as PRETRAINED_NAMES
from xray_ablate.config.choices import SCRATCH_MODELS as SCRATCH_NAMES
from xray_ablate.config.schema import BackboneConfig
from xray_ablate.errors import UserError
from xray_ablate.models import pretrained
from xray_ablate.models.cnn16 import CNN16, CNN16GAP, POOLS, _head

# Pretrained backbones: feature extractor builders. cnn16 variants are whole models.
# Builders take (pretrained, download).
FEATURE_BUILDERS: dict[str, Callable[[bool, bool], pretrained.Features]] = {
    "vgg16": partial(pretrained.vgg, 16),
    "vgg19": partial(pretrained.vgg, 19),
    "resnet50": pretrained.resnet50,
    "inception_v3": pretrained.inception_v3,
    "xception": pretrained.xception,
}
SCRATCH_MODELS: dict[str, type[nn.Module]] = {"cnn16": CNN16, "cnn16_gap": CNN16GAP}
check_registry("scratch models", SCRATCH_MODELS, SCRATCH_NAMES)
check_registry("pretrained backbones", FEATURE_BUILDERS, PRETRAINED_NAMES)
if MIN_IMAGE_SIZE["cnn16"] != 2**POOLS:
    raise RuntimeError(f"config.choices.MIN_IMAGE_SIZE['cnn16'] must be 2**{POOLS}, cnn16's pooling")


class Classifier(nn.Module):
    """Grayscale in, logits out: repeat to the backbone's channels, standardise, features, head."""

    def __init__(self, features: nn.Module, head: nn.Module, channels: int,
                 mean: tuple[float, ...], std: tuple[float, ...], frozen: list[nn.Module] = ()):
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.features, self.head = features, head
        self._frozen = list(frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, self.channels, -1, -1)
        return self.head(self.features((x - self.mean) / self.std))

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self._frozen:  # frozen blocks keep their BatchNorm statistics, as in Keras
            block.eval()
        return self


def uses_training_stats(spec: BackboneConfig) -> bool:
    """Scratch models standardise with the training split; pretrained ones with their own stats."""
    return spec.name in SCRATCH_MODELS


def build_model(spec: BackboneConfig, num_classes: int, image_size: int, normalize: bool = False,
                train_stats: tuple[float, float] | None = None) -> Classifier:
    """``normalize``: standardise inputs, with ``train_stats`` (mean, std of the training split)
    for scratch models and the backbone's ImageNet statistics otherwise; else inputs stay in [0, 1]."""
    if spec.freeze not in FREEZE_MODES:
        raise UserError(f"backbone.freeze must be one of {FREEZE_MODES}, not {spec.freeze!r}")
    if spec.name in SCRATCH_MODELS:
        if spec.pretrained or spec.freeze != "none":
            raise UserError(f"{spec.name} has no pretrained weights: use pretrained=false, freeze=none")
        model = SCRATCH_MODELS[spec.name](num_classes, image_size)
        if normalize and train_stats is None:
            raise ValueError(f"{spec.name} with normalization needs the training split's mean and std")
        mean, std = train_stats if normalize else (0.0, 1.0)
        return Classifier(model.features, model.head, 1, (mean,), (std,))
    if spec.name not in FEATURE_BUILDERS:
        raise UserError(f"unknown backbone {spec.name!r}; choose one of {', '.join(BACKBONES)}")

    feats = FEATURE_BUILDERS[spec.name](spec.pretrained, spec.download)
    if image_size < MIN_IMAGE_SIZE[spec.name]:
        raise UserError(f"{spec.name} needs image_size >= {MIN_IMAGE_SIZE[spec.name]}, got {image_size}")
    with torch.no_grad():
        flat = feats.module.eval()(torch.zeros(1, 3, image_size, image_size)).numel()
    frozen = _freeze(feats.blocks, spec)
    mean, std = (feats.mean, feats.std) if normalize else ((0.0,) * 3, (1.0,) * 3)
    return Classifier(feats.module, _head(flat, num_classes), 3, mean, std, frozen)


def _freeze(blocks: list[nn.Module], spec: BackboneConfig) -> list[nn.Module]:
    if spec.freeze == "none":
        return []
    keep = spec.unfreeze_last if spec.freeze == "last_n" else 0
    if not 0 <= keep <= len(blocks):
        raise UserError(f"backbone.unfreeze_last must lie in 0..{len(blocks)} for {spec.name}")
    frozen = blocks[: len(blocks) - keep]
    for block in frozen:
        block.requires_grad_(False)
    return frozen

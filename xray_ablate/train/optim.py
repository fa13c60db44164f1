"""The optimizer and learning-rate schedule of a run, chosen by name from small registries
(the config schema checks the names)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from xray_ablate.config import choices

# name -> builder(parameters, trainer settings). Adam is the study's.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, t: torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay,
                                             momentum=t.momentum, nesterov=t.nesterov),
}
# name -> builder(optimizer, trainer settings); stepped once per epoch. None = constant rate.
SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler | None]] = {
    "none": lambda opt, t: None,
    "cosine": lambda opt, t: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs),
    "step": lambda opt, t: torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_step_epochs, gamma=t.lr_gamma),
}

choices.check_registry("optimizers", OPTIMIZERS, choices.OPTIMIZERS)
choices.check_registry("lr schedules", SCHEDULES, choices.SCHEDULES)


def build_optimizer(model: nn.Module, trainer) -> torch.optim.Optimizer:
    trainable: Iterable[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[trainer.optimizer](trainable, trainer)


def build_schedule(optimizer: torch.optim.Optimizer, trainer) -> torch.optim.lr_scheduler.LRScheduler | None:
    return SCHEDULES[trainer.lr_schedule](optimizer, trainer)

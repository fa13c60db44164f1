"""The optimizer and learning-rate schedule of a run, chosen by name from small registries."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from xray_ablate.errors import UserError

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


def check_names(trainer) -> None:
    """A UserError naming the key when the optimizer or schedule is not one we know."""
    if trainer.optimizer not in OPTIMIZERS:
        raise UserError(f"trainer.optimizer={trainer.optimizer} is not known; choose one of {', '.join(OPTIMIZERS)}")
    if trainer.lr_schedule not in SCHEDULES:
        raise UserError(f"trainer.lr_schedule={trainer.lr_schedule} is not known; "
                        f"choose one of {', '.join(SCHEDULES)}")
    if trainer.nesterov and (trainer.optimizer != "sgd" or trainer.momentum <= 0):
        raise UserError("trainer.nesterov=true needs trainer.optimizer=sgd and trainer.momentum > 0")


def build_optimizer(model: nn.Module, trainer) -> torch.optim.Optimizer:
    check_names(trainer)
    trainable: Iterable[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[trainer.optimizer](trainable, trainer)


def build_schedule(optimizer: torch.optim.Optimizer, trainer) -> torch.optim.lr_scheduler.LRScheduler | None:
    return SCHEDULES[trainer.lr_schedule](optimizer, trainer)

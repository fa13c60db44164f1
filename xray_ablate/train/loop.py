"""The training loop: plain PyTorch over uint8 image tensors already in memory.

Images stay uint8 (on the device when they fit); each step slices a batch, scales it to [0, 1],
augments the whole batch on the device, and steps the optimizer. Loss and accuracy are summed on
the device and read once per epoch, so the loop does not wait on the device every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from xray_ablate.config.schema import AugmentationConfig, ClassBalanceConfig
from xray_ablate.errors import UserError
from xray_ablate.train.augment import random_affine
from xray_ablate.train.device import autocast
from xray_ablate.train.sampling import epoch_rows


class TrainingDiverged(UserError):
    """The training or validation loss became NaN or infinite: one line a user can act on
    (trainer.lr, the data), not a traceback."""


@dataclass
class Batches:
    """One split as uint8 images (N, 1, H, W) and int64 labels, ideally on the device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data: Batches,
    batch_size: int, device: torch.device, generator: torch.Generator,  # a CPU generator
    augment: AugmentationConfig | None, amp: bool, desc: str = "train",
    balance: ClassBalanceConfig | None = None,
) -> tuple[float, float]:
    """One epoch over the rows ``balance`` draws (all rows, shuffled, when None or natural)."""
    model.train()
    order = (torch.randperm(len(data), generator=generator) if balance is None
             else epoch_rows(data.labels.cpu(), balance, generator)).to(data.images.device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    steps = range(0, len(order), batch_size)
    for start in tqdm(steps, desc=desc, leave=False, unit="batch", disable=None):
        idx = order[start:start + batch_size]
        x = to_input(data.images[idx], device)
        y = data.labels[idx].to(device, non_blocking=True)
        if augment is not None:
            x = random_affine(x, augment, generator)
        with autocast(device, amp):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
    mean_loss = loss_sum.item() / len(order)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"training loss is {mean_loss}: lower trainer.lr or check the data")
    return mean_loss, correct.item() / len(order)


@torch.no_grad()
def evaluate(model: nn.Module, data: Batches, batch_size: int, device: torch.device,
             amp: bool) -> tuple[float, np.ndarray]:
    """Mean unweighted cross-entropy and class probabilities (N, classes) of a split.

    Unweighted, as Keras does for validation: losses stay comparable between runs with and
    without class weights, and checkpoint selection does not depend on them.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    probs = []
    for start in range(0, len(data), batch_size):
        x = to_input(data.images[start:start + batch_size], device)
        y = data.labels[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        probs.append(torch.softmax(logits.float(), dim=1))
    return loss_sum.item() / max(len(data), 1), torch.cat(probs).cpu().numpy()

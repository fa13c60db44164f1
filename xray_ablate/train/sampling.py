"""Which training rows one epoch visits, and in what order: the class_balance policies.

``natural`` is every row once, in the order ``torch.randperm`` gives (the loop's order before
class_balance existed, so those runs stay bit-identical). The others first fix how many rows of
each class an epoch holds, then draw them fresh every epoch from the run's CPU generator:

- ``undersample``: every class down to the smallest (rows drawn without replacement);
- ``oversample``: every class up to the largest: each row ``target // n`` times, plus
  ``target % n`` further rows drawn without replacement, so every row is seen each epoch and the
  repeats are spread evenly;
- ``cap``: at most ``max_per_class`` rows of a class (drawn without replacement).

Absent classes stay absent. Orthogonal to class weights, which change the loss, not the rows.
"""

from __future__ import annotations

import numpy as np
import torch

from xray_ablate.config.schema import ClassBalanceConfig


def epoch_counts(class_sizes: np.ndarray, balance: ClassBalanceConfig) -> np.ndarray:
    """Rows of each class one epoch visits, given the rows each class has (0 stays 0)."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    present = sizes > 0
    if balance.name == "natural" or not present.any():
        return sizes
    if balance.name == "undersample":
        target = sizes[present].min()
    elif balance.name == "oversample":
        target = sizes.max()
    else:
        target = np.minimum(sizes, balance.max_per_class)
    return np.where(present, target, 0)


def epoch_rows(labels: torch.Tensor | np.ndarray, balance: ClassBalanceConfig,
               generator: torch.Generator) -> torch.Tensor:
    """Row positions (int64, CPU) of one training epoch in visiting order.

    Deterministic given the generator's state; ``natural`` draws exactly
    ``torch.randperm(len(labels), generator=generator)``.
    """
    if balance.name == "natural":
        return torch.randperm(len(labels), generator=generator)
    labels = torch.as_tensor(labels).cpu()
    sizes = torch.bincount(labels).numpy()
    parts = []
    for cls, target in enumerate(epoch_counts(sizes, balance)):
        rows = torch.nonzero(labels == cls).flatten()
        n = len(rows)
        if n == 0:
            continue
        repeats, rest = divmod(int(target), n)
        parts += [rows] * repeats
        if rest:
            parts.append(rows[torch.randperm(n, generator=generator)[:rest]])
    epoch = torch.cat(parts)
    return epoch[torch.randperm(len(epoch), generator=generator)]

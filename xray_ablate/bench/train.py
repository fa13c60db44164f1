"""Training-loop throughput: our loop against a bare PyTorch loop, and the cost of augmentation.

Same cnn16, same in-memory uint8 tensors, same batch size, 200 px, on the CPU, in one process.
The two loops alternate several times and the best epoch of each counts, which cancels most of
the drift of a shared machine.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from xray_ablate.bench.rows import Row
from xray_ablate.config.schema import AugmentationConfig, BackboneConfig
from xray_ablate.models import build_model
from xray_ablate.train.device import autocast, place_model
from xray_ablate.train.loop import Batches, train_one_epoch

COMMAND = "python -m xray_ablate.bench train"
BATCH = 32
# (images, px, rounds): the full benchmark, and the smoke size that only proves it runs
FULL, SMOKE = (96, 200, 3), (8, 64, 1)
CUDA_SIZE = (2048, 200, 3)  # a GPU needs more images per epoch to time


def bare_epoch(model, criterion, optimizer, images, labels, generator, amp: bool = False) -> None:
    """The loop a reader would write by hand: no augmentation, no bookkeeping."""
    model.train()
    order = torch.randperm(len(labels), generator=generator).to(images.device)
    for start in range(0, len(labels), BATCH):
        idx = order[start:start + BATCH]
        with autocast(images.device, amp):
            loss = criterion(model(images[idx].float() / 255.0), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def run(smoke: bool = False) -> list[Row]:
    """On the CPU, and on CUDA when there is a GPU (bf16 autocast, images resident on it)."""
    rows = _device_rows(torch.device("cpu"), *(SMOKE if smoke else FULL))
    if torch.cuda.is_available():
        rows += _device_rows(torch.device("cuda"), *(SMOKE if smoke else CUDA_SIZE))
    return rows


def _device_rows(device: torch.device, n_images: int, size: int, rounds: int) -> list[Row]:
    torch.manual_seed(0)
    amp = device.type == "cuda"
    images = torch.randint(0, 256, (n_images, 1, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 4, (n_images,), device=device)
    data = Batches(images, labels)
    def cnn16() -> nn.Module:
        return build_model(BackboneConfig("cnn16"), 4, size, normalize=True, train_stats=(0.5, 0.25))

    model = place_model(cnn16(), device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    loops = {
        "bare": lambda: bare_epoch(model, criterion, optimizer, images, labels, generator, amp),
        "ours": lambda: train_one_epoch(model, criterion, optimizer, data, BATCH, device, generator,
                                        None, amp=amp),
        "ours+aug": lambda: train_one_epoch(model, criterion, optimizer, data, BATCH, device, generator,
                                            AugmentationConfig(), amp=amp),
    }
    if device.type == "cpu":  # the layout place_model chose, against PyTorch's default
        nchw = cnn16()
        nchw_optimizer = torch.optim.Adam(nchw.parameters(), lr=1e-4)
        loops["bare, NCHW"] = lambda: bare_epoch(nchw, criterion, nchw_optimizer, images, labels, generator)
    for epoch in loops.values():  # warm-up
        epoch()
    best = {name: float("inf") for name in loops}
    for _ in range(rounds):
        for name, epoch in loops.items():
            _sync(device)
            started = time.perf_counter()
            epoch()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - started)
    rate = {name: n_images / seconds for name, seconds in best.items()}
    ratio = rate["ours"] / rate["bare"]
    aug_cost = 1 - rate["ours+aug"] / rate["ours"]
    where = torch.cuda.get_device_name(device) + ", bf16 autocast" if device.type == "cuda" else "CPU"
    setting = f"cnn16, {size} px, batch {BATCH}, {n_images} images, best of {rounds} epochs, {where}"
    tag = f" ({device.type})"
    layout = [Row("train", "channels-last / NCHW, bare loop" + tag, rate["bare"] / rate["bare, NCHW"], "x",
                  notes=f"{setting}, {torch.get_num_threads()} threads", command=COMMAND)
              ] if "bare, NCHW" in rate else []
    return layout + [
        Row("train", "bare PyTorch loop" + tag, rate["bare"], "images/s", notes=setting, command=COMMAND),
        Row("train", "our loop (augmentation off)" + tag, rate["ours"], "images/s", notes=setting, command=COMMAND),
        Row("train", "our loop / bare loop" + tag, ratio, "x", ">= 0.97", ratio >= 0.97, COMMAND),
        Row("train", "our loop, augmentation on" + tag, rate["ours+aug"], "images/s", notes=setting,
            command=COMMAND),
        Row("train", "cost of augmentation" + tag, 100 * aug_cost, "% of throughput", command=COMMAND,
            notes="affine_grid/grid_sample per batch on the device"),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

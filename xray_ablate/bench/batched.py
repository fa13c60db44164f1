"""Batched training throughput: fit_many with K members against K sequential fit() runs.

Same synthetic phantoms, cnn16, same config but the seed, on CUDA when there is a GPU (bf16
autocast, the trainer's default) else the CPU, in one process. "Member-epochs per second" counts
one member training one epoch (train + validation) as one; the projection for the phase-two
table (9 configurations x 17 seeds x 15 epochs) divides by the best batched rate.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from xray_ablate.bench.rows import Row
from xray_ablate.config.load import to_config
from xray_ablate.data.prepare import prepare
from xray_ablate.data.synthetic import generate
from xray_ablate.settings import CONFIG_DIR, data_config
from xray_ablate.train.batched import fit_many
from xray_ablate.train.fit import fit
from xray_ablate.train.inputs import prepare_inputs

COMMAND = "python -m xray_ablate.bench batched"
# (phantoms, source px, image_size, epochs, K values, sequential runs)
FULL = (6500, 256, 200, 1, (1, 4, 17, 64), 4)
SMOKE = (40, 64, 64, 1, (1, 4), 2)
TABLE_MEMBER_EPOCHS = 9 * 17 * 15  # the phase-two table at 1 pp resolution


def run(smoke: bool = False) -> list[Row]:
    n_images, source_px, size, epochs, ks, n_sequential = SMOKE if smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="xray-bench-batched-") as tmp:
        root = generate(Path(tmp) / "data", n=n_images, seed=0, size=source_px)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            configs = [to_config(compose("config", overrides=[
                f"dataset.root={root}", f"paths.cache_dir={tmp}/cache", f"image_size={size}", "backbone=cnn16",
                f"trainer.epochs={epochs}", f"seed={seed}"])) for seed in range(max(ks))]
        data = prepare(data_config(configs[0]))
        inputs = prepare_inputs(configs[0], data)  # the seed does not change the rows here

        def timed(train) -> float:
            _sync(device)
            started = time.perf_counter()
            train()
            _sync(device)
            return time.perf_counter() - started

        fit(configs[0], data, inputs, device)  # warm-up: kernels, allocator
        sequential = timed(lambda: [fit(c, data, inputs, device) for c in configs[:n_sequential]])
        rates = {"sequential": n_sequential * epochs / sequential}
        notes = {}
        for k in ks:
            try:
                seconds = timed(lambda k=k: fit_many(configs[:k], data, [inputs] * k, device))
                rates[k] = k * epochs / seconds
            except torch.OutOfMemoryError:
                notes[k] = "out of memory"
                torch.cuda.empty_cache()
    where = f"{torch.cuda.get_device_name(device)}, bf16 autocast" if device.type == "cuda" else "CPU"
    setting = (f"cnn16, {size} px, batch 32, {len(inputs.train)} training + {len(inputs.val)} validation "
               f"images ({n_images} synthetic phantoms), {epochs} epoch(s), augmentation on, {where}")
    rows = [Row("batched", f"sequential fit() x {n_sequential} ({device.type})", rates["sequential"],
                "member-epochs/s", command=COMMAND, notes=setting)]
    for k in ks:
        rate = rates.get(k, float("nan"))
        rows.append(Row("batched", f"fit_many K={k} ({device.type})", rate, "member-epochs/s", command=COMMAND,
                        notes=notes.get(k, f"{rate / rates['sequential']:.2f}x sequential")))
    best = max((k for k in ks if k in rates), key=lambda k: rates[k])
    projected = TABLE_MEMBER_EPOCHS / rates[best] / 60
    rows.append(Row("batched", f"projected 9 x 17 table, 15 epochs ({device.type})", projected, "min",
                    "< 10 min" if device.type == "cuda" else "", projected < 10 if device.type == "cuda" else None,
                    COMMAND, f"at the K={best} rate, training only (no MLflow, no data preparation)"))
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""Batched training throughput: fit_many with K members against K sequential fit() runs.

On a GPU: synthetic phantoms at the study's size (the demo dataset with 6,500 images, generated
once into the project cache), cnn16 at 200 px, the same config but the seed, bf16 autocast (the
trainer's default), all in one process. Without a GPU a small setting (600 phantoms, 64 px, K up
to 4), since the study's size would take hours on a CPU. Every run trains two epochs:
the rate is the second epoch's (train + validation, "member-epochs per second"), so model
building, torch.compile (in epoch 1) and the final evaluation are left out of it and reported
beside it as untimed seconds. GPU utilisation is the mean of torch.cuda.utilization() sampled every 0.1 s over
the timed runs. The phase-two table (9 configurations x 17 seeds x 15 epochs) is projected from
each rate.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir

from xray_ablate.bench.rows import Row
from xray_ablate.config.load import to_config
from xray_ablate.data.prepare import prepare
from xray_ablate.settings import CONFIG_DIR, data_config, ensure_synthetic
from xray_ablate.train.batched import fit_many
from xray_ablate.train.fit import fit
from xray_ablate.train.inputs import prepare_inputs

COMMAND = "python -m xray_ablate.bench batched"
# (phantoms, source px, image_size, sequential runs, variants: (K, compile), in the order they run)
FULL = (6500, 256, 200, 4, ((1, False), (4, False), (17, False), (64, False), (17, True), (1, True)))
CPU = (600, 128, 64, 4, ((1, False), (4, False)))  # without a GPU the study's size would take hours
SMOKE = (40, 64, 64, 2, ((1, False), (4, False)))
EPOCHS = 2  # the second epoch is timed
TABLE_RUNS, TABLE_EPOCHS = 9 * 17, 15  # the phase-two table at 1 pp resolution


def run(smoke: bool = False, budget_s: float | None = None) -> list[Row]:
    """``budget_s``: start no further variant once this many seconds have passed (lent GPUs)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_images, source_px, size, n_sequential, variants = SMOKE if smoke else FULL if device.type == "cuda" else CPU
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xray-bench-batched-") as tmp:
        cache = [f"paths.cache_dir={tmp}"] if smoke else []  # the full set is kept in the project cache
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            config = to_config(compose("config", overrides=[
                "dataset=demo", f"dataset.synthetic.n={n_images}", f"dataset.synthetic.size={source_px}", *cache,
                f"image_size={size}", "backbone=cnn16", f"trainer.epochs={EPOCHS}"]))
        configs = [dataclasses.replace(config, seed=seed) for seed in range(max(k for k, _ in variants))]
        ensure_synthetic(configs[0])
        data = prepare(data_config(configs[0]))
        inputs = prepare_inputs(configs[0], data)  # the seed does not change the rows here
        fit(configs[0], data, inputs, device)  # warm-up: kernels, allocator

        def sequential(clock: _Clock) -> None:
            for c in configs[:n_sequential]:
                fit(c, data, inputs, device, on_epoch=lambda _row: clock.epoch_done())

        measured = {"sequential": _timed(sequential, device)}
        print(f"sequential: {measured['sequential']}", flush=True)  # progress, in case the run is cut short
        skipped = []
        for k, compiled in variants:
            if budget_s is not None and time.perf_counter() - started > budget_s:
                skipped.append((k, compiled))
                continue
            measured[(k, compiled)] = _timed(lambda clock, k=k, compiled=compiled: fit_many(
                configs[:k], data, [inputs] * k, device, on_epoch=lambda _m, _row: clock.epoch_done(),
                compile=compiled), device, members=k)
            print(f"K={k} compile={compiled}: {measured[(k, compiled)]}", flush=True)
    return _rows(measured, skipped, n_sequential, size, n_images, len(inputs.train), len(inputs.val), device)


class _Clock:
    """When each member-epoch ended, and the GPU utilisation samples while it ran."""

    def __init__(self, device: torch.device):
        self.device, self.ends, self.utilisation, self.stop = device, [], [], threading.Event()

    def epoch_done(self) -> None:
        self.ends.append(time.perf_counter())

    def sample(self) -> None:
        while not self.stop.wait(0.1):
            self.utilisation.append(torch.cuda.utilization(self.device))


def _timed(train: Callable[[_Clock], object], device: torch.device, members: int = 1) -> dict:
    """Train, and return the timed epoch's rate (member-epochs/s), the set-up time (all but the
    timed epochs) and the mean GPU utilisation; or the error that stopped it."""
    clock = _Clock(device)
    sampler = threading.Thread(target=clock.sample, daemon=True)
    if device.type == "cuda":
        sampler.start()
    begun = time.perf_counter()
    try:
        train(clock)
        error = ""
    except torch.OutOfMemoryError:
        error = "out of memory"
        torch.cuda.empty_cache()
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - begun
        clock.stop.set()
        if sampler.is_alive():
            sampler.join()
    if error:
        return {"error": error}
    # fit(): one end per epoch per run; fit_many: one end per member per epoch. Per run (or pack),
    # the timed epoch runs from the last end of epoch 1 to the last end of epoch 2.
    group = members * EPOCHS
    runs = [clock.ends[i:i + group] for i in range(0, len(clock.ends), group)]
    timed = sum(r[-1] - r[members - 1] for r in runs)
    return {"rate": len(runs) * members / timed, "setup": (total - timed) / len(runs),
            "utilisation": sum(clock.utilisation) / len(clock.utilisation) if clock.utilisation else None}


def _rows(measured: dict, skipped: list, n_sequential: int, size: int, n_images: int, n_train: int, n_val: int,
          device: torch.device) -> list[Row]:
    where = f"{torch.cuda.get_device_name(device)}, bf16 autocast" if device.type == "cuda" else "CPU"
    setting = (f"cnn16, {size} px, batch 32, {n_train} training + {n_val} validation images ({n_images} "
               f"synthetic phantoms), augmentation on, {where}; rate of epoch 2 of 2")
    base = measured["sequential"]
    rows = [_row(f"sequential fit() x {n_sequential}, eager ({device.type})", base, None, setting)]
    sequential = f"sequential fit() ({device.type})"
    best = (sequential, base)
    for (k, compiled), m in ((key, m) for key, m in measured.items() if key != "sequential"):
        what = _variant(k, compiled, device)
        rows.append(_row(what, m, base, ""))
        if "rate" in m and m["rate"] > best[1]["rate"]:
            best = (what, m)
    for k, compiled in skipped:
        rows.append(Row("batched", _variant(k, compiled, device), float("nan"), "member-epochs/s", command=COMMAND,
                        notes="not run: the --budget was spent"))
    if size != FULL[2]:  # the projection holds for the study's image size only
        return rows
    for name, m in dict([(sequential, base), best]).items():  # one row when sequential is best
        minutes = TABLE_RUNS * TABLE_EPOCHS / m["rate"] / 60
        rows.append(Row("batched", f"projected 9 x 17 table, 15 epochs, {name}", minutes, "min",
                        "< 10 min" if device.type == "cuda" else "", minutes < 10 if device.type == "cuda" else None,
                        COMMAND, "training epochs only, at the timed epoch's rate (no set-up, no MLflow)"))
    return rows


def _variant(k: int, compiled: bool, device: torch.device) -> str:
    return f"fit_many K={k}, {'torch.compile' if compiled else 'eager'} ({device.type})"


def _row(what: str, m: dict, base: dict | None, setting: str) -> Row:
    if "error" in m:
        return Row("batched", what, float("nan"), "member-epochs/s", command=COMMAND, notes=m["error"])
    notes = [setting] if setting else []
    if base is not None:
        notes.append(f"{m['rate'] / base['rate']:.2f}x sequential")
    notes.append(f"untimed (epoch 1 with any compiling, set-up, final evaluation) {m['setup']:.1f} s per "
                 f"{'pack' if base is not None else 'run'}")
    if m["utilisation"] is not None:
        notes.append(f"GPU utilisation {m['utilisation']:.0f} %")
    return Row("batched", what, m["rate"], "member-epochs/s", command=COMMAND, notes="; ".join(notes))

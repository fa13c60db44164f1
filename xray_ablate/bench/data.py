"""Data benchmarks: cold preprocessing, warm cache load, and augmented training batches per
second against a torchvision ImageFolder pipeline over the same JPEG files.

The input is 2,000 synthetic phantoms at 1600 px saved as JPEG (V7's images are mostly
1,000-3,000 px JPEGs), generated once into .cache/bench/ and reused by later runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xray_ablate.bench.rows import Row
from xray_ablate.data.fingerprint import dataset_fingerprint
from xray_ablate.data.ingest import ingest
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.prepare import DataConfig, PreparedData, prepare
from xray_ablate.data.synthetic import generate
from xray_ablate.paths import project_root

COMMAND = "python -m xray_ablate.bench data"
SEED, IMAGE_SIZE, BATCH = 0, 200, 32


@dataclass(frozen=True)
class Scale:
    n_images: int
    source_px: int
    # Each pipeline is timed over `rounds` rounds after warm-up; the median round counts. One round:
    # an epoch of ours, `folder_batches` batches of ImageFolder (it is ~10x slower).
    rounds: int
    folder_batches: int
    warmup_batches: int


FULL, SMOKE = Scale(2000, 1600, 3, 12, 3), Scale(64, 256, 1, 1, 1)


def run(smoke: bool = False) -> list[Row]:
    scale = SMOKE if smoke else FULL
    n_images = scale.n_images
    bench_dir = project_root() / ".cache" / "bench"
    root = _synthetic_jpegs(bench_dir, scale)
    cores = os.cpu_count() or 1
    rows: list[Row] = []

    # 1. Cold: a fresh cache directory, so the fingerprint, ingest and decode all run.
    cache_dir = bench_dir / "prepare-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cfg = DataConfig(root=root, cache_dir=cache_dir,
                     preprocess=PreprocessOptions(mode="masked", image_size=IMAGE_SIZE), workers=0)
    start = time.perf_counter()
    data = prepare(cfg)
    cold_s = time.perf_counter() - start
    assert data.decoded_now == n_images, data.decoded_now
    phases = _cold_phases(root, bench_dir / "phase-cache")
    decode_s = max(cold_s - phases["fingerprint"] - phases["ingest"], 1e-9)
    rows.append(Row(
        "data", f"cold preprocessing: {n_images:,} JPEGs {scale.source_px} px -> {IMAGE_SIZE} px masked, "
        f"{cores} cores", n_images / cold_s, "images/s", command=COMMAND,
        notes=f"{cold_s:.1f} s in all: fingerprint (hash every file) {phases['fingerprint']:.1f} s, "
              f"ingest (JSON + image headers) {phases['ingest']:.1f} s, decode+resize+mask "
              f"~{decode_s:.1f} s = {n_images / decode_s:,.0f} images/s; files in the OS page cache",
    ))

    # 2. Warm: the same call again hits the cache (nothing decoded).
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        again = prepare(cfg)
        warm.append(time.perf_counter() - start)
        assert again.decoded_now == 0
    rows.append(Row(
        "data", f"warm load (cache hit, {n_images:,} images)", statistics.median(warm), "s",
        target="< 1 s", met=max(warm) < 1.0, command=COMMAND,
        notes=f"median of 3 (max {max(warm):.2f} s): stat files, read the inventory, map the array, split",
    ))

    # 3. Augmented training batches: ours vs torchvision ImageFolder on the same JPEGs.
    ours, ours_note = _ours_images_per_s(data, scale)
    folder, folder_rates = _imagefolder_images_per_s(_imagefolder_view(bench_dir, data, scale), scale)
    rows.append(Row(
        "data", f"augmented batches, ours: cached uint8 -> float -> affine per batch (bs {BATCH})",
        ours, "images/s", command=COMMAND, notes=ours_note,
    ))
    rows.append(Row(
        "data", f"augmented batches, torchvision ImageFolder + DataLoader(2 workers, bs {BATCH})",
        folder, "images/s", command=COMMAND,
        notes="Grayscale, Resize((200, 200)), RandomAffine(36, translate 0.1, scale 0.9-1.1), "
              f"ToTensor; median of {scale.rounds} rounds of {scale.folder_batches} batches (range "
              f"{min(folder_rates):,.0f}-{max(folder_rates):,.0f}) after {scale.warmup_batches} warm-up",
    ))
    rows.append(Row(
        "data", "augmented batches: ours / ImageFolder", ours / folder, "x", target=">= 5x",
        met=ours / folder >= 5, command=COMMAND,
        notes=f"{torch.get_num_threads()} torch threads; CPU only",
    ))
    return rows


def _synthetic_jpegs(bench_dir: Path, scale: Scale) -> Path:
    """The benchmark's input, generated once (about 3 minutes on one core at full scale)."""
    root = bench_dir / f"synthetic-n{scale.n_images}-s{SEED}-{scale.source_px}px-jpg"
    if not (root / "annotations").is_dir():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"generating {scale.n_images} synthetic {scale.source_px} px JPEGs into {root} (once)")
        generate(partial, n=scale.n_images, seed=SEED, size=scale.source_px, fmt="jpg")
        partial.rename(root)
    return root


def _cold_phases(root: Path, scratch: Path) -> dict[str, float]:
    shutil.rmtree(scratch, ignore_errors=True)
    start = time.perf_counter()
    dataset_fingerprint(root, scratch)
    fingerprint = time.perf_counter() - start
    start = time.perf_counter()
    ingest(root)
    phases = {"fingerprint": fingerprint, "ingest": time.perf_counter() - start}
    shutil.rmtree(scratch, ignore_errors=True)
    return phases


def _augment():
    """The training code's batch augmentation, or a minimal stand-in with the same recipe."""
    try:
        from xray_ablate.config.schema import AugmentationConfig
        from xray_ablate.train.augment import random_affine
    except ImportError:
        return _random_affine, "bench stand-in for the batch affine"
    options = AugmentationConfig(rotation_turns=0.1, zoom=0.1, translate=0.1, fill=0.0)
    return (lambda x, g: random_affine(x, options, g)), "xray_ablate.train.augment.random_affine"


def _random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * limit

    angle, scale = uniform(0.1 * 2 * np.pi), 1 + uniform(0.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, uniform(0.2)], 1),
                         torch.stack([sin, cos, uniform(0.2)], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _ours_images_per_s(data: PreparedData, scale: Scale) -> tuple[float, str]:
    augment, which = _augment()
    start = time.perf_counter()
    # As training does: the rows in RAM once, as one (N, 1, H, W) uint8 tensor.
    images = torch.from_numpy(np.array(data.images)).unsqueeze(1)
    to_tensor_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)

    def batches(n_batches: int | None = None):
        order = torch.randperm(len(images), generator=generator)
        starts = list(range(0, len(images), BATCH))[:n_batches]
        for s in starts:
            x = images[order[s:s + BATCH]].float().div_(255.0)
            yield augment(x, generator)

    for out in batches(scale.warmup_batches):
        assert out.shape == (min(BATCH, len(images)), 1, IMAGE_SIZE, IMAGE_SIZE)
    rates = []
    for _ in range(scale.rounds):
        start = time.perf_counter()
        delivered = sum(out.shape[0] for out in batches())
        rates.append(delivered / (time.perf_counter() - start))
    return statistics.median(rates), (
        f"{which}; median of {scale.rounds} epochs (range {min(rates):,.0f}-{max(rates):,.0f}) after "
        f"{scale.warmup_batches} warm-up batches; cache -> uint8 tensor once: {to_tensor_s:.2f} s")


def _imagefolder_view(bench_dir: Path, data: PreparedData, scale: Scale) -> Path:
    """root/<class>/<name>.jpg symlinks to the same JPEG files, for torchvision's ImageFolder."""
    view = bench_dir / f"imagefolder-n{scale.n_images}-s{SEED}-{scale.source_px}px"
    if not view.is_dir():
        partial = view.with_name(view.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for cls, path in zip(data.table["cls"], data.table["image_path"], strict=True):
            (partial / cls).mkdir(parents=True, exist_ok=True)
            (partial / cls / Path(path).name).symlink_to(Path(path).resolve())
        partial.rename(view)
    return view


def _imagefolder_images_per_s(view: Path, scale: Scale) -> tuple[float, list[float]]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Grayscale(),
        transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)),
        transforms.RandomAffine(degrees=36, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        transforms.ToTensor(),
    ])
    dataset = datasets.ImageFolder(str(view), transform=transform)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    for _ in range(scale.warmup_batches):  # includes starting the workers
        x, _ = next(batches)
        assert x.shape == (BATCH, 1, IMAGE_SIZE, IMAGE_SIZE)
    rates = []
    for _ in range(scale.rounds):
        start = time.perf_counter()
        delivered = sum(next(batches)[0].shape[0] for _ in range(scale.folder_batches))
        rates.append(delivered / (time.perf_counter() - start))
    del batches
    return statistics.median(rates), rates

"""Synthetic chest-X-ray-like phantoms in Darwin JSON 1.0 layout: the built-in demo dataset.

    python -m xray_ablate.data.synthetic OUT --n 300 --seed 0 [--size 256] [--format png]

Each image has two Lung polygons over a torso with ribs and a heart shadow, and a class pattern
inside the lungs that a small CNN can learn: bacterial = one dense lobar consolidation, viral =
diffuse interstitial streaks in both lungs, covid = patchy peripheral opacities in both lungs,
healthy = none. Some images carry a bright "device" whose outline is an Ignore polygon.
Two confounds of the real data are built in on purpose: noise and blur differ by class (the study
found worse BRISQUE for COVID and bacterial images), and a corner marker outside the lungs is
far more common in some classes, so raw images carry a shortcut that masking removes.
Some patients have several images. The output is a pure function of (n, seed, size, format).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xray_ablate.data import labels

CLASS_SHARE = {"bacterial": 0.35, "healthy": 0.30, "viral": 0.20, "covid": 0.15}
CLASS_TAGS = {
    "bacterial": [labels.BACTERIAL_TAG], "viral": [labels.VIRAL_TAG],
    "covid": [labels.COVID_TAG, labels.VIRAL_TAG], "healthy": [labels.HEALTHY_TAG],
}
NOISE_SIGMA = {"bacterial": 9.0, "viral": 5.0, "covid": 11.0, "healthy": 3.0}  # grey levels
BLUR_RADIUS = {"bacterial": 0.8, "viral": 0.4, "covid": 1.0, "healthy": 0.2}  # x size/256
MARKER_RATE = {"bacterial": 0.2, "viral": 0.5, "covid": 0.85, "healthy": 0.1}
DEVICE_RATE = 0.3
BASE = 256  # anatomy and patterns are drawn on this grid, then resized
# Bump when the images change for the same arguments: cached demo datasets are then rewritten.
GENERATOR_VERSION = 2
STAMP = "synthetic.json"


def generate(out: Path, n: int, seed: int = 0, size: int = 256, fmt: str = "png") -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index, (patient, cls, anatomy_seed) in enumerate(_plan(n, rng)):
        name = f"synth-{index:05d}"
        image_rng = np.random.default_rng([seed, index])
        anatomy = _anatomy(np.random.default_rng([seed, 10**6 + anatomy_seed]), image_rng)
        pixels, lungs, ignores = _render(cls, anatomy, image_rng, size)
        filename = f"{name}.{fmt}"
        image = Image.fromarray(pixels)
        if fmt == "png":
            image.save(out / "images" / filename, compress_level=1)
        else:
            image.save(out / "images" / filename, quality=92)
        doc = {
            "dataset": "xray-ablate synthetic phantoms",
            "image": {"width": size, "height": size, "filename": filename,
                      "original_filename": filename, "path": "/"},
            "annotations": [_polygon("Lung", r) for r in lungs]
            + [_polygon("Ignore", r) for r in ignores]
            + [{"name": t, "tag": {}} for t in
               CLASS_TAGS[cls] + [f"PatientID:{patient}", "X-ray", "View/PA"]],
        }
        (out / "annotations" / f"{name}.json").write_text(json.dumps(doc))
    (out / STAMP).write_text(json.dumps(stamp(n, seed, size, fmt)))
    return out


def stamp(n: int, seed: int, size: int, fmt: str = "png") -> dict:
    """What the generator was asked for, and its version: same stamp, same files."""
    return {"n": n, "seed": seed, "size": size, "format": fmt, "version": GENERATOR_VERSION}


def _plan(n: int, rng: np.random.Generator) -> list[tuple[int, str, int]]:
    """(patient id, class, anatomy seed) per image; about a third of patients have 2-3 images."""
    classes = list(CLASS_SHARE)
    plan, patient = [], 0
    while len(plan) < n:
        cls = classes[rng.choice(len(classes), p=list(CLASS_SHARE.values()))]
        repeats = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
        plan += [(1000 + patient, cls, patient)] * repeats
        patient += 1
    return plan[:n]


def _anatomy(patient_rng: np.random.Generator, image_rng: np.random.Generator) -> dict:
    """Patient-specific body shape, jittered a little per image (position, exposure)."""
    return {
        "lung_w": patient_rng.uniform(0.13, 0.17), "lung_h": patient_rng.uniform(0.26, 0.32),
        "gap": patient_rng.uniform(0.16, 0.20), "top": patient_rng.uniform(0.18, 0.24),
        "rib_freq": patient_rng.uniform(8, 11), "body": patient_rng.uniform(95, 125),
        "shift": image_rng.uniform(-0.02, 0.02, size=2), "gain": image_rng.uniform(0.9, 1.1),
    }


def _lung_ring(cx: float, cy: float, w: float, h: float, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    wobble = 1 + 0.04 * np.sin(3 * t + rng.uniform(0, 6)) + 0.03 * np.sin(5 * t + rng.uniform(0, 6))
    # Flatter at the bottom (diaphragm) than at the apex.
    y = np.where(np.sin(t) > 0, 0.8, 1.0) * h * np.sin(t)
    return np.stack([cx + w * np.cos(t) * wobble, cy + y * wobble], axis=1)


def _render(cls: str, a: dict, rng: np.random.Generator, size: int):
    yy, xx = np.mgrid[0:BASE, 0:BASE] / BASE
    sx, sy = a["shift"]
    torso = ((xx - 0.5 - sx) / 0.42) ** 2 + ((yy - 0.55 - sy) / 0.55) ** 2 < 1
    img = np.where(torso, a["body"], 12.0)
    img += torso * 25 * np.exp(-((xx - 0.5 - sx) / 0.035) ** 2)  # spine
    cy = a["top"] + a["lung_h"] + sy
    centres = [(0.5 + sx - a["gap"] / 2 - a["lung_w"] / 2, cy), (0.5 + sx + a["gap"] / 2 + a["lung_w"] / 2, cy)]
    lungs = [_lung_ring(x, y, a["lung_w"], a["lung_h"], rng) for x, y in centres]
    lung_mask = _mask(lungs)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * a["rib_freq"] * (yy - sy))
    img = np.where(lung_mask, 45 + 22 * ribs, img)
    img += 35 * np.exp(-(((xx - 0.53 - sx) / 0.09) ** 2 + ((yy - cy - 0.12) / 0.11) ** 2))  # heart
    img += _pattern(cls, centres, a, rng) * lung_mask

    ignores = []
    if rng.random() < DEVICE_RATE:  # an ECG electrode or port over a lung
        x, y = centres[rng.integers(2)]
        x, y, r = x + rng.uniform(-0.05, 0.05), y + rng.uniform(-0.1, 0.1), rng.uniform(0.02, 0.035)
        device = _circle(x, y, r)
        img = np.where(_mask([device]), 235.0, img)
        ignores.append(_circle(x, y, r * 1.3))
    if rng.random() < MARKER_RATE[cls]:  # a bright side marker in the corner, outside the lungs
        img[int(0.05 * BASE):int(0.12 * BASE), int(0.05 * BASE):int(0.11 * BASE)] = 250.0

    img *= a["gain"]
    big = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    big = big.filter(ImageFilter.GaussianBlur(BLUR_RADIUS[cls] * size / BASE))
    noisy = np.asarray(big, np.float32) + rng.normal(0, NOISE_SIGMA[cls], (size, size)).astype(np.float32)
    pixels = np.clip(noisy, 0, 255).astype(np.uint8)
    scale = size  # normalised -> pixel coordinates
    return pixels, [r * scale for r in lungs], [r * scale for r in ignores]


def _pattern(cls: str, centres, a: dict, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:BASE, 0:BASE] / BASE
    severity = rng.uniform(0.6, 1.0)
    out = np.zeros((BASE, BASE))
    if cls == "bacterial":  # one dense lower-lobe consolidation
        x, y = centres[rng.integers(2)]
        y += a["lung_h"] * rng.uniform(0.1, 0.5)
        out += 140 * severity * np.exp(-(((xx - x) / 0.08) ** 2 + ((yy - y) / 0.10) ** 2))
    elif cls == "covid":  # patchy peripheral opacities in both lungs
        for side, (x, y) in enumerate(centres):
            edge = x + (-1 if side == 0 else 1) * a["lung_w"] * 0.6
            for _ in range(rng.integers(3, 6)):
                bx, by = edge + rng.normal(0, 0.02), y + rng.uniform(-0.6, 0.7) * a["lung_h"]
                out += 80 * severity * np.exp(-(((xx - bx) / 0.045) ** 2 + ((yy - by) / 0.06) ** 2))
    elif cls == "viral":  # diffuse interstitial streaks in both lungs
        canvas = Image.new("L", (BASE, BASE), 0)
        draw = ImageDraw.Draw(canvas)
        for x, y in centres:
            for _ in range(rng.integers(14, 22)):
                x0 = (x + rng.normal(0, a["lung_w"] / 2)) * BASE
                y0 = (y + rng.normal(0, a["lung_h"] / 2)) * BASE
                angle = rng.uniform(0, np.pi)
                length = rng.uniform(6, 14)
                draw.line([(x0, y0), (x0 + length * np.cos(angle), y0 + length * np.sin(angle))],
                          fill=int(140 * severity), width=4)
        out += np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.0)), np.float64)
    return out


def _circle(x: float, y: float, r: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return np.stack([x + r * np.cos(t), y + r * np.sin(t)], axis=1)


def _mask(rings: list[np.ndarray]) -> np.ndarray:
    canvas = Image.new("1", (BASE, BASE), 0)
    for ring in rings:
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in ring * BASE - 0.5], fill=1)
    return np.asarray(canvas, dtype=bool)


def _polygon(name: str, ring: np.ndarray) -> dict:
    return {"name": name, "polygon": {"path": [{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in ring]}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xray_ablate.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=300, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    args = parser.parse_args(argv)
    generate(args.out, args.n, args.seed, args.size, args.format)
    print(f"wrote {args.n} images to {args.out}")


if __name__ == "__main__":
    main()

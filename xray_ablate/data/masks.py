"""Turn one ingested record into the model's input: masked or raw, resized, 1-channel uint8."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from xray_ablate.config.choices import MIN_PREPARED_SIZE
from xray_ablate.data.darwin import Shape
from xray_ablate.data.decode import decode_grayscale
from xray_ablate.data.ingest import ImageRecord, lung_bbox

MODES = ("masked", "raw")
RESIZE_POLICIES = ("stretch", "pad")


@dataclass(frozen=True)
class PreprocessOptions:
    mode: str = "masked"  # masked | raw
    image_size: int = 200
    resize: str = "stretch"  # stretch (as the study) | pad (keep aspect, pad to square with 0)
    crop_to_lungs: bool = False  # masked only: crop to the lung bounding box first

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"dataset mode must be one of {MODES}, not {self.mode!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, not {self.resize!r}")
        if self.image_size < MIN_PREPARED_SIZE:
            raise ValueError(f"image_size must be at least {MIN_PREPARED_SIZE}, not {self.image_size}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Placement:
    """Where the source box (annotation coordinates) lands in the size x size output."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's own pixels
    out_w: int
    out_h: int
    offset: tuple[int, int]

    def to_output(self, ring: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        scale = np.array([self.out_w / (x1 - x0), self.out_h / (y1 - y0)])
        return (ring - [x0, y0]) * scale + self.offset


def placement(rec: ImageRecord, opts: PreprocessOptions) -> Placement:
    if opts.mode == "masked" and opts.crop_to_lungs:
        box = lung_bbox(rec)
    else:
        box = (0.0, 0.0, float(rec.width), float(rec.height))
    size = opts.image_size
    if opts.resize == "stretch":
        return Placement(box, size, size, (0, 0))
    w, h = box[2] - box[0], box[3] - box[1]
    scale = size / max(w, h)
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    return Placement(box, out_w, out_h, ((size - out_w) // 2, (size - out_h) // 2))


def preprocess(rec: ImageRecord, opts: PreprocessOptions) -> np.ndarray:
    """Decode, crop, resize and (masked) zero everything outside Lung minus Ignore."""
    where = placement(rec, opts)
    x0, y0, x1, y1 = where.box
    # Decode large JPEGs at a reduced scale that still covers the output at 2x.
    need = (int(2 * where.out_w * rec.width / (x1 - x0)), int(2 * where.out_h * rec.height / (y1 - y0)))
    pixels, scale = decode_grayscale(rec.image_path, min_size=need)
    image = Image.fromarray(pixels).resize(
        (where.out_w, where.out_h), Image.Resampling.BILINEAR,
        box=(x0 * scale, y0 * scale, x1 * scale, y1 * scale),
    )
    out = np.zeros((opts.image_size, opts.image_size), np.uint8)
    ox, oy = where.offset
    out[oy:oy + where.out_h, ox:ox + where.out_w] = np.asarray(image)
    if opts.mode == "masked":
        out *= lung_mask(rec, where, opts.image_size)
    return out


def lung_region(rec: ImageRecord, opts: PreprocessOptions) -> np.ndarray | None:
    """The mask ``preprocess`` applies in masked mode, at the same placement for raw images too;
    None for a record without Lung polygons (ImageFolder)."""
    if not rec.lungs:
        return None
    return lung_mask(rec, placement(rec, opts), opts.image_size)


def lung_mask(rec: ImageRecord, where: Placement, size: int) -> np.ndarray:
    """Union of Lung shapes minus union of Ignore shapes, rasterised at the output size."""
    mask = _shapes_mask(rec.lungs, where, size)
    if rec.ignores:
        mask &= ~_shapes_mask(rec.ignores, where, size)
    return mask


def _shapes_mask(shapes: list[Shape], where: Placement, size: int) -> np.ndarray:
    """Union over shapes of each shape's rings combined by the even-odd rule (holes)."""
    union = np.zeros((size, size), bool)
    for shape in shapes:
        even_odd = np.zeros((size, size), bool)
        for ring in shape:
            canvas = Image.new("1", (size, size), 0)
            # Darwin vertices are continuous coordinates; Pillow fills by pixel index, whose
            # centre lies at index + 0.5 in continuous coordinates.
            points = where.to_output(ring) - 0.5
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
            even_odd ^= np.asarray(canvas, dtype=bool)
        union |= even_odd
    return union

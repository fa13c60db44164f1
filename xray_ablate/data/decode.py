"""Decode any image file to one 8-bit grayscale channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# The pixel limit (README "Bad input"): a larger image is excluded as image_too_large before
# it is decoded. X-rays from the V7 export reach 5600x4700 (26 M pixels), more than Pillow's
# default limit; a 69-byte PNG can claim 30000x30000 (900 MB decoded), a decompression bomb.
MAX_PIXELS = 200_000_000
# Every image this project reads goes through open_image, which refuses the same images before
# decoding; Pillow's own guard would only warn between one and two times its limit.
Image.MAX_IMAGE_PIXELS = None


class ImageTooLarge(ValueError):
    """The image header claims more than MAX_PIXELS pixels."""


def open_image(path: Path) -> Image.Image:
    """Image.open (header only), refusing images above the pixel limit with ImageTooLarge."""
    im = Image.open(path)
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageTooLarge(f"{Path(path).name}: {width}x{height} is more than the limit of "
                            f"{MAX_PIXELS:,} pixels")
    return im


def decode_grayscale(path: Path, min_size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """Return (uint8 HxW array, scale), scale = decoded pixels per stored pixel (both axes).

    With ``min_size`` a JPEG is decoded at a reduced DCT scale that is still at least that
    large, which makes big JPEGs several times faster to read. Images of more than 8 bits
    per pixel are scaled linearly from their own min..max to 0..255 (never clipped).
    RGB, RGBA, palette and CMYK images go through Pillow's luma conversion.
    """
    with open_image(path) as im:
        stored_width = im.size[0]
        scale = None
        if min_size is not None and im.format == "JPEG":
            drafted = im.draft("L", min_size)
            if drafted is not None:
                # (mode, (0, 0, w / s, h / s)) for a 1/s DCT scale. The decoded size rounds
                # w / s up, so its ratio to w is not the scale of both axes.
                scale = drafted[1][2] / stored_width
        im.load()
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            array = _rescale(np.asarray(im))
        else:
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            array = np.asarray(im.convert("L"))
    return np.ascontiguousarray(array), scale or array.shape[1] / stored_width


def _rescale(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)

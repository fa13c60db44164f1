"""Decoding to 8-bit grayscale: 8/16-bit PNG, RGB, RGBA, palette, CMYK JPEG, very large and tiny
images, through decode_grayscale and through the whole preprocessing of one image."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from test_data_helpers import default_lungs, ramp, ramp_value

from xray_ablate.data.decode import decode_grayscale
from xray_ablate.data.ingest import ImageRecord
from xray_ablate.data.masks import PreprocessOptions, preprocess


def _record(path, width, height) -> ImageRecord:
    return ImageRecord(image_id=path.stem, source=path, image_path=path, cls="healthy",
                       width=width, height=height, lungs=default_lungs(width, height))


def luma(r, g, b) -> float:
    """ITU-R 601-2 luma, the transform Pillow documents for convert('L')."""
    return r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000


def test_png_8bit_exact(tmp_path):
    pixels = ramp(70, 50)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out, scale = decode_grayscale(tmp_path / "a.png")
    assert out.dtype == np.uint8 and scale == 1.0
    np.testing.assert_array_equal(out, pixels)


def test_png_16bit_is_scaled_not_clipped(tmp_path):
    ramp16 = np.tile(np.arange(4096, dtype=np.uint16), (3, 1))
    Image.fromarray(ramp16).save(tmp_path / "r16.png")
    assert Image.open(tmp_path / "r16.png").mode.startswith("I")
    out, _ = decode_grayscale(tmp_path / "r16.png")
    assert out.dtype == np.uint8 and out.shape == (3, 4096)
    row = out[0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    np.testing.assert_allclose(row, np.arange(4096) * 255 / 4095, atol=0.51)
    assert (np.diff(row) >= 0).all()
    # Clipping would make everything above 255 white; scaling puts the middle at mid-grey.
    assert row[2048] == 128 and (row == 255).sum() <= 9


def test_png_16bit_full_range(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "f16.png")
    out, _ = decode_grayscale(tmp_path / "f16.png")
    assert out.tolist() == [[0, 64, 128, 255]]


def test_rgb_rgba_palette_use_luma(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]
    rgb = np.array([colours], dtype=np.uint8).repeat(4, axis=0)  # 4 x 4 x 3
    expected = np.array([[luma(*c) for c in colours]] * 4)

    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert Image.open(tmp_path / "rgba.png").mode == "RGBA"
    for name in ("rgb.png", "rgba.png", "p.png"):
        out, _ = decode_grayscale(tmp_path / name)
        assert out.shape == (4, 4) and out.dtype == np.uint8
        np.testing.assert_allclose(out, expected, atol=1.01, err_msg=name)


def test_cmyk_jpeg(tmp_path):
    # Cyan (RGB 0,255,255), black, white, in three bands of a CMYK JPEG.
    img = Image.new("CMYK", (48, 16))
    for i, ink in enumerate([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)]):
        img.paste(ink, (16 * i, 0, 16 * i + 16, 16))
    img.save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out, _ = decode_grayscale(tmp_path / "cmyk.jpg")
    centres = [int(out[4:12, 16 * i + 4:16 * i + 12].mean()) for i in range(3)]
    assert abs(centres[0] - luma(0, 255, 255)) <= 3
    assert centres[1] <= 3 and centres[2] >= 252


def test_very_large_jpeg_decodes_reduced_and_fast(tmp_path):
    width, height = 5600, 4700
    pixels = ramp(width, height)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    full, scale = decode_grayscale(path)
    assert full.shape == (height, width) and scale == 1.0
    # Draft decoding: the DCT scale that still covers min_size (here 1/8).
    small, scale = decode_grayscale(path, min_size=(400, 400))
    assert small.shape == (588, 700) and scale == pytest.approx(1 / 8)
    start = time.perf_counter()
    out = preprocess(_record(path, width, height), PreprocessOptions(mode="raw", image_size=48))
    assert time.perf_counter() - start < 2.0
    y, x = (np.arange(48) + 0.5) * height / 48, (np.arange(48) + 0.5) * width / 48
    expected = ramp_value(x[None, :], y[:, None], width, height)
    assert np.abs(out[1:-1, 1:-1] - expected[1:-1, 1:-1]).max() <= 3


def test_very_large_png_16bit(tmp_path):
    width, height = 5600, 4700
    values = (np.arange(width, dtype=np.uint32) * 65535 // (width - 1)).astype(np.uint16)
    path = tmp_path / "big16.png"
    Image.fromarray(np.broadcast_to(values, (height, width)).copy()).save(path, compress_level=1)
    out = preprocess(_record(path, width, height), PreprocessOptions(mode="raw", image_size=32))
    expected = (np.arange(32) + 0.5) / 32 * 255
    np.testing.assert_allclose(out[5], expected, atol=2)


def test_tiny_image_is_upsampled(tmp_path):
    pixels = ramp(156, 156)
    path = tmp_path / "tiny.png"
    Image.fromarray(pixels).save(path)
    rec = _record(path, 156, 156)
    raw = preprocess(rec, PreprocessOptions(mode="raw", image_size=200))
    assert raw.shape == (200, 200) and raw.dtype == np.uint8
    c = (np.arange(200) + 0.5) * 156 / 200
    expected = ramp_value(c[None, :], c[:, None], 156, 156)
    assert np.abs(raw[2:-2, 2:-2] - expected[2:-2, 2:-2]).max() <= 2
    masked = preprocess(rec, PreprocessOptions(mode="masked", image_size=200))
    assert masked[100, 5] == 0 and masked[100, 60] == raw[100, 60]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16"])
def test_every_mode_gives_one_uint8_channel(tmp_path, mode):
    suffix = "jpg" if mode == "CMYK" else "png"
    path = tmp_path / f"img.{suffix}"
    Image.new(mode, (40, 30)).save(path)
    out = preprocess(_record(path, 40, 30), PreprocessOptions(mode="raw", image_size=16))
    assert out.shape == (16, 16) and out.dtype == np.uint8


@pytest.mark.parametrize("width, height", [(497, 512), (512, 497), (333, 1000), (1001, 999)])
def test_draft_decoding_of_odd_sizes(tmp_path, width, height):
    """Regression: a 1/s DCT draft rounds each side up, so decoded_w / w is not the scale of the
    other axis; the resize box then exceeded the decoded image ("box can't exceed original image
    size") and 3 real cxr-mini JPEGs were dropped as unreadable at image_size 64."""
    path = tmp_path / "odd.jpg"
    Image.fromarray(ramp(width, height)).save(path, quality=95)
    small, scale = decode_grayscale(path, min_size=(128, 128))
    assert small.shape[1] < width and 1 / scale in (2, 4, 8)
    for mode in ("raw", "masked"):
        out = preprocess(_record(path, width, height), PreprocessOptions(mode=mode, image_size=64))
        if mode == "raw":
            c = (np.arange(64) + 0.5) / 64
            expected = ramp_value(c[None, :] * width, c[:, None] * height, width, height)
            assert np.abs(out[1:-1, 1:-1] - expected[1:-1, 1:-1]).max() <= 3
        else:
            assert out.any()

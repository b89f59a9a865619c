"""Safe decoding of every kind of bad or unusual image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.imageio import ImageError, decode_image, encode_jpeg, encode_png


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_rgb_jpeg(photo):
    decoded = decode_image(encode_jpeg(photo), "a.jpg")
    assert decoded.pixels.shape == photo.shape and decoded.pixels.dtype == np.uint8
    assert np.abs(decoded.pixels.astype(int) - photo).mean() < 3


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                                      ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("1", "PNG")])
def test_modes_become_rgb(photo, mode, fmt):
    decoded = decode_image(encoded(Image.fromarray(photo).convert(mode), fmt), f"x.{fmt}")
    assert decoded.pixels.shape == photo.shape and decoded.pixels.dtype == np.uint8


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    decoded = decode_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (decoded.pixels == 255).all()


def test_16bit_colour_tiff_keeps_its_depth(photo):
    deep = photo.astype(np.uint16) * 257 + 3
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, deep)
    decoded = decode_image(buffer.getvalue(), "deep.tif")
    assert decoded.pixels.dtype == np.uint16 and (decoded.pixels == deep).all()
    assert decoded.as_float().dtype == np.float32 and decoded.as_float().max() <= 1.0


def test_16bit_grey_png():
    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    decoded = decode_image(encoded(Image.fromarray(grey), "PNG"))
    assert decoded.pixels.dtype == np.uint16 and (decoded.pixels[:, :, 1] == grey).all()


@pytest.mark.parametrize("orientation,shape", [(1, (400, 600)), (3, (400, 600)), (6, (600, 400)), (8, (600, 400))])
def test_exif_orientation_is_applied(photo, orientation, shape):
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encoded(Image.fromarray(photo), "JPEG", exif=exif, quality=95))
    assert decoded.pixels.shape[:2] == shape
    if orientation == 6:  # rotated 90 degrees clockwise for display: top-left comes from bottom-left
        assert np.abs(decoded.pixels[0, 0].astype(int) - photo[-1, 0]).sum() < 40


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"<html><body>429</body></html>", "not a recognised"),
                                        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "bad.jpg")])
def test_garbage_is_one_line_error(data, match):
    with pytest.raises(ImageError, match=match) as info:
        decode_image(data, "bad.jpg")
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.jpg")


def test_truncated_jpeg_is_refused(photo):
    data = encode_jpeg(photo)
    with pytest.raises(ImageError, match="cut.jpg"):
        decode_image(data[: len(data) // 2], "cut.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    # A 20000 x 20000 PNG of one colour compresses to a small file.
    header = Image.new("L", (20000, 20000))
    data = encoded(header, "PNG")
    assert len(data) < 2_000_000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(data, "bomb.png", max_pixels=100_000_000)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(data, "bomb.png")  # beyond Pillow's own limit too


def test_png_round_trip_is_lossless(photo):
    assert (decode_image(encode_png(photo)).pixels == photo).all()

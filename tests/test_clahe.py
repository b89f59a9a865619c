"""CLAHE on a colour image: CIELAB L* by default (MATLAB's recipe), the HSV value as an option."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2lab

from rules.clahe import clahe, equalize_tiles


def _photo() -> np.ndarray:
    return (data.coffee()[::4, ::4].astype(np.float32) / 255.0) * 0.6  # dull, so CLAHE has work to do


def test_lab_equalises_lightness_and_keeps_the_colour_of_each_pixel():
    image = _photo()
    out = clahe(image)
    before, after = rgb2lab(image), rgb2lab(out)
    assert after[..., 0].std() > 1.2 * before[..., 0].std()  # more contrast in L*
    inside = (out > 0.01).all(axis=2) & (out < 0.99).all(axis=2)  # pixels not clipped back into the gamut
    assert np.abs(after[..., 1:][inside] - before[..., 1:][inside]).mean() < 1.0  # a*, b* kept
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_the_channel_is_an_option():
    image = _photo()
    hsv = clahe(image, channel="hsv")
    assert not np.allclose(hsv, clahe(image), atol=1e-3)
    with pytest.raises(ValueError, match="channel 'yuv'"):
        clahe(image, channel="yuv")


def test_tile_mappings_are_rounded_as_opencv_does_without_clipping():
    levels = (data.camera()[::2, ::2]).astype(np.uint8)
    ours = equalize_tiles(levels, tiles=(8, 8), clip_limit=1.0)
    theirs = cv2.createCLAHE(clipLimit=1000.0, tileGridSize=(8, 8)).apply(levels)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1

"""NPEA: naturalness preserved enhancement for non-uniform illumination.

Wang, Zheng, Hu & Li, "Naturalness Preserved Enhancement Algorithm for
Non-Uniform Illumination Images", IEEE TIP 22(9), 2013.  One of the ten
conventional pseudo-users of Kosugi & Yamasaki (IEEE TCSVT 2023).  The
official code is compiled; this port follows the published decompiled
functions (``NPEA``, ``cbright``, ``BiFltL``, ``BLT``, ``Post``) and the same
author's readable ``BiFltL1.m``.

Pipeline: lightness ``G = max(R, G, B)`` with a floor, a bright-pass filter
that averages only brighter neighbours (the illumination), reflectance
``I / illumination``, a JND-based "bi-log" mapping of the illumination into
about ``[127, 255]``, and a statistics-based stretch.
"""

import cv2
import numpy as np

from rules._color import check_rgb_image, finish_rgb
from rules.cdsa import jnd_curve

_LEVELS = 256


def _floored_lightness(scaled, floor_fraction, min_lightness):
    """``round(max(max_c I_c, d, min_lightness))``, ``d`` the ``floor_fraction`` quantile level."""
    lightness = scaled.max(axis=2)
    histogram = np.bincount(np.rint(lightness).astype(np.int64).ravel(), minlength=_LEVELS)
    cdf = np.cumsum(histogram) / lightness.size
    dark_level = int(np.searchsorted(cdf, floor_fraction))
    return np.rint(np.maximum(lightness, max(dark_level, min_lightness))).astype(np.int64)


def closest_brighter(lightness, radius=7):
    """``cbright``: the smallest ``(2r+1)^2`` local maximum in each window that is >= the pixel.

    The local maxima of ``lightness`` over ``(2r+1) x (2r+1)`` windows are
    computed first; each pixel then takes, among those maxima within its own
    window, the smallest one that is not darker than itself (its own local
    maximum always qualifies).
    """
    size = 2 * radius + 1
    levels = lightness.astype(np.uint8)
    local_max = cv2.dilate(levels, np.ones((size, size), np.uint8))
    padded = cv2.copyMakeBorder(local_max, radius, radius, radius, radius, cv2.BORDER_REFLECT_101)
    height, width = levels.shape
    best = np.full_like(levels, 255)
    for dy in range(size):
        for dx in range(size):
            shifted = padded[dy:dy + height, dx:dx + width]
            np.minimum(best, np.where(shifted >= levels, shifted, 255), out=best)
    return best.astype(np.int64)


def bright_pass(lightness, bright, *, radius=20, sigma_range=5.0):
    """``BiFltL``: weighted mean of the neighbouring ``bright`` values that are >= the pixel.

    ``out(x) = sum_y w (v_y + 1) / sum_y w`` over the ``(2r+1)^2`` window
    (mirror padding) restricted to ``v_y = bright(y) >= lightness(x)``, with
    ``w = exp(-(v_y - lightness(x)) / (2 sigma_range^2))`` (a linear, not
    squared, difference), and the ``+1`` of the reference's one-based levels.

    Computed exactly by sweeping the levels from bright to dark: the
    contributions of each level are box-summed once (``O(N)`` per level), so
    the cost does not depend on the window size.  The factor
    ``exp(lightness(x) / (2 sigma_range^2))`` cancels between numerator and
    denominator.
    """
    size = (2 * radius + 1, 2 * radius + 1)
    decay = np.exp(-np.arange(_LEVELS) / (2.0 * sigma_range ** 2))
    numerator = np.zeros(lightness.shape)
    denominator = np.zeros(lightness.shape)
    out = np.zeros(lightness.shape)
    flat = lightness.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(_LEVELS + 1))
    present = np.bincount(bright.ravel(), minlength=_LEVELS) > 0
    for level in range(_LEVELS - 1, -1, -1):
        if present[level]:
            window_count = cv2.boxFilter((bright == level).astype(np.float64), cv2.CV_64F, size,
                                         normalize=False, borderType=cv2.BORDER_REFLECT_101)
            numerator += decay[level] * (level + 1) * window_count
            denominator += decay[level] * window_count
        pixels = order[starts[level]:starts[level + 1]]
        if pixels.size:
            out.flat[pixels] = numerator.flat[pixels] / denominator.flat[pixels]
    return out


def bilog_curve(*, start=127.0, step=0.63):
    """``BLT``: JND-based tone curve mapping illumination levels 0..256 into ``[start, 255]``.

    ``m(0) = start``, ``m(k) = m(k-1) + step * jnd(round(m(k-1))) / jnd(k)``;
    entries after the curve passes 255 are 255.
    """
    jnd = jnd_curve()
    curve = np.empty(_LEVELS + 1)
    curve[0] = start
    for level in range(1, _LEVELS + 1):
        previous = curve[level - 1]
        if previous >= 255.0:
            curve[level:] = 255.0
            break
        background = jnd[min(int(np.rint(previous)), _LEVELS - 1)]
        curve[level] = previous + step * background / jnd[min(level, _LEVELS - 1)]
    return np.minimum(curve, 255.0)


def _stretch(image):
    """``Post``: clip channels to mean +/- 3 std (within their range), stretch to [0, 255]."""
    channels = image.reshape(-1, 3)
    mean, std = channels.mean(axis=0), channels.std(axis=0)
    low = np.maximum(mean - 3.0 * std, channels.min(axis=0))
    high = np.minimum(mean + 3.0 * std, channels.max(axis=0))
    clipped = np.clip(image, low, high)
    lowest, highest = clipped.min(), clipped.max()
    if highest <= lowest:
        return clipped
    return (clipped - lowest) * (255.0 / (highest - lowest))


def npea(image, *, floor_fraction=0.1, min_lightness=10, bright_radius=7, filter_radius=20,
         sigma_range=5.0, curve_start=127.0, curve_step=0.63):
    """Enhance a non-uniformly lit image with NPEA (Wang et al., TIP 2013).

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    floor_fraction : float, optional
        The lightness is floored at the level below which this fraction of
        pixels lie; 0.1.
    min_lightness : int, optional
        Absolute lightness floor (8-bit levels); 10.
    bright_radius : int, optional
        Radius of the local-maximum windows of ``cbright``; 7 (15 x 15).
    filter_radius : int, optional
        Radius of the bright-pass filter window; 20 (41 x 41).
    sigma_range : float, optional
        Range scale of the bright-pass weights (8-bit levels); 5.
    curve_start, curve_step : float, optional
        Start level and JND step of the bi-log illumination curve; 127 and
        0.63.

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    The image is first scaled so its maximum is 255.  The reflectance
    ``I_c / illumination`` is multiplied by the mapped illumination and the
    result is stretched by ``Post``; a flat result is left unstretched.
    Defaults are those of the decompiled code.  Colour: all three channels
    share the illumination, so hue is kept.

    References
    ----------
    S. Wang, J. Zheng, H.-M. Hu, B. Li, "Naturalness Preserved Enhancement
    Algorithm for Non-Uniform Illumination Images", IEEE Trans. Image
    Process. 22(9):3538-3548, 2013.
    """
    image = check_rgb_image(image)
    peak = float(image.max())
    scaled = image.astype(np.float64) * (255.0 / peak if peak > 0 else 255.0)
    lightness = _floored_lightness(scaled, floor_fraction, min_lightness)
    bright = closest_brighter(lightness, bright_radius)
    illumination = bright_pass(lightness, bright, radius=filter_radius, sigma_range=sigma_range)
    reflectance = scaled / illumination[..., None]
    curve = bilog_curve(start=curve_start, step=curve_step)
    mapped = curve[np.clip(np.rint(illumination), 0, _LEVELS).astype(np.int64)]
    enhanced = _stretch(reflectance * mapped[..., None])
    return finish_rgb(np.rint(enhanced) / 255.0)

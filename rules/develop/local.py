"""Local (neighbourhood) stages of the develop engine: dehaze, texture, clarity.

Radii scale with the picture's short side so a preset looks the same at
any resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

from rules.develop.maths import (
    apply_luminance_change,
    channel_min,
    guided_filter,
    linear_to_srgb,
    luma,
    srgb_to_linear,
)

#: Clarity's base layer: guided-filter radius as a fraction of the short side,
#: and its edge threshold (variance of encoded luminance).
CLARITY_RADIUS = 0.04
CLARITY_EPS = 0.02

#: Texture's base layer: Gaussian sigma as a fraction of the short side.
TEXTURE_SIGMA = 0.005

#: Dehaze: dark-channel patch size as a fraction of the short side, fraction
#: of pixels used to estimate the airlight, and the lowest transmission.
DEHAZE_PATCH = 0.02
DEHAZE_AIRLIGHT_FRACTION = 0.001
DEHAZE_MIN_TRANSMISSION = 0.1


def _short_side(image: np.ndarray) -> int:
    return min(image.shape[:2])


def apply_detail(linear: np.ndarray, *, texture: float, clarity: float) -> np.ndarray:
    """Texture and Clarity: scale local detail of encoded luminance.

    Parameters
    ----------
    linear : ndarray
        HxWx3 linear RGB, float32.
    texture, clarity : float
        ``Texture`` and ``Clarity2012``, -100..100.

    Returns
    -------
    ndarray
        HxWx3 linear RGB, float32, with hue and saturation kept.

    Notes
    -----
    With ``t`` the sRGB-encoded luminance, ``a = slider / 100``:

    * texture: ``t += a (t - G_sigma * t)`` with a small Gaussian
      (sigma = 0.5 % of the short side): fine detail;
    * clarity: ``t += a (t - B) 4 t (1 - t)`` where ``B`` is a large-radius
      guided filter of ``t`` (He et al., TPAMI 2013; radius 4 % of the short
      side), edge-aware so strong edges do not halo, and the ``4t(1-t)`` mask
      keeps the effect in the midtones as Lightroom's Clarity does.

    Negative amounts move towards the smooth base layer (softening). This is
    the detail-layer scheme of darktable's local contrast module and of the
    notes' "x 2^(a log2(Y / Y_blur))" recipe, applied additively in the
    encoded domain.
    """
    old = luma(linear)
    t = np.clip(linear_to_srgb(np.maximum(old, 0.0)), 0.0, 1.0)
    short = _short_side(linear)
    detail = np.zeros_like(t)
    if texture:
        sigma = max(1.0, TEXTURE_SIGMA * short)
        detail += texture / 100.0 * (t - cv2.GaussianBlur(t, (0, 0), sigma))
    if clarity:
        radius = max(2, round(CLARITY_RADIUS * short))
        base = guided_filter(t, t, radius, CLARITY_EPS)
        detail += clarity / 100.0 * (t - base) * 4.0 * t * (1.0 - t)
    new = srgb_to_linear(np.clip(t + detail, 0.0, 1.0))
    return apply_luminance_change(linear, srgb_to_linear(t), new)


def _dark_channel(linear: np.ndarray, patch: int) -> np.ndarray:
    """Minimum over colour channels and a square patch (He et al. 2009, eq. 5)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(channel_min(linear), kernel, borderType=cv2.BORDER_REFLECT)


def apply_dehaze(linear: np.ndarray, amount: float) -> np.ndarray:
    """Dehaze with the dark channel prior; negative amounts add haze.

    Parameters
    ----------
    linear : ndarray
        HxWx3 linear RGB, float32.
    amount : float
        ``Dehaze``, -100..100.

    Returns
    -------
    ndarray
        HxWx3 linear RGB, float32 (may leave [0, 1]; clipped at the end).

    Notes
    -----
    Haze model ``I = J t + A (1 - t)`` (He, Sun, Tang, "Single Image Haze
    Removal Using Dark Channel Prior", CVPR 2009 / TPAMI 2011). The airlight
    ``A`` is the mean colour of the 0.1 % pixels with the brightest dark
    channel; the transmission ``t = 1 - w * dark(I / A)`` with
    ``w = 0.95 * amount / 100`` is refined with a guided filter (instead of
    the paper's soft matting) and floored at 0.1; then
    ``J = (I - A) / t + A``. For a negative amount the picture is veiled
    towards the airlight: ``J = I + 0.5 |a| (A - I)``.
    """
    a = amount / 100.0
    clipped = np.clip(linear, 0.0, 1.0)
    short = _short_side(linear)
    patch = max(3, round(DEHAZE_PATCH * short) | 1)
    dark = _dark_channel(clipped, patch)
    count = max(1, round(DEHAZE_AIRLIGHT_FRACTION * dark.size))
    brightest = np.argpartition(dark.ravel(), -count)[-count:]
    airlight = np.maximum(clipped.reshape(-1, 3)[brightest].mean(axis=0), 0.05)
    airlight = airlight.astype(np.float32)
    if a < 0:
        return (linear + np.float32(-0.5 * a) * (airlight - linear)).astype(np.float32)
    transmission = 1.0 - np.float32(0.95 * a) * _dark_channel(clipped / airlight, patch)
    refined = guided_filter(luma(clipped), transmission.astype(np.float32), 4 * patch, 1e-3)
    refined = np.maximum(refined, DEHAZE_MIN_TRANSMISSION)[..., None]
    return ((linear - airlight) / refined + airlight).astype(np.float32)

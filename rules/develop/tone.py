"""Global tone and white-balance stages of the develop engine.

Linear-light stages (white balance, exposure, the Basic panel's tone sliders)
and encoded-domain curves (parametric and point curves) as Lightroom applies
them to a rendered sRGB file. Formulas are open approximations of Camera
Raw's closed ones; each function names its sources.
"""

from __future__ import annotations

import cv2
import numpy as np

from rules.develop.maths import (
    LookupTable,
    apply_luminance_change,
    linear_to_srgb,
    luma,
    monotone_curve,
    srgb_to_linear,
)

#: Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1.
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])

#: Bradford cone-response matrix (Lam 1985; used by ICC and CIECAM97s).
BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                     [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])

#: Correlated colour temperature of the sRGB white point (D65), kelvin.
D65_KELVIN = 6504.0

#: Mired shift of the assumed scene illuminant per unit of
#: IncrementalTemperature: +/-100 spans about 4300 K .. 13600 K around D65.
MIRED_PER_STEP = 0.8

#: Shift of the assumed illuminant along CIE 1960 v per unit of IncrementalTint.
V_PER_TINT_STEP = 0.0002


def daylight_xy(kelvin: float) -> tuple[float, float]:
    """Chromaticity of CIE daylight at a correlated colour temperature.

    Valid for 4000 K to 25000 K (CIE 15:2004, eq. 3.3-3.4; Judd, MacAdam and
    Wyszecki 1964).
    """
    t = float(np.clip(kelvin, 4000.0, 25000.0))
    if t <= 7000.0:
        x = -4.6070e9 / t**3 + 2.9678e6 / t**2 + 0.09911e3 / t + 0.244063
    else:
        x = -2.0064e9 / t**3 + 1.9018e6 / t**2 + 0.24748e3 / t + 0.237040
    return x, -3.0 * x * x + 2.87 * x - 0.275


def white_balance_matrix(temperature: float, tint: float) -> np.ndarray:
    """3x3 linear-sRGB matrix for Lightroom's incremental white balance.

    Parameters
    ----------
    temperature : float
        ``IncrementalTemperature``, -100..100; positive warms.
    tint : float
        ``IncrementalTint``, -100..100; positive adds magenta.

    Returns
    -------
    ndarray
        Matrix ``M`` with ``rgb_out = M @ rgb_in`` in linear sRGB, scaled so
        that a neutral grey keeps its luminance.

    Notes
    -----
    Warming a rendered picture means re-balancing it as if it had been lit
    by a bluer illuminant than the one it was balanced for. The assumed
    illuminant sits on the CIE daylight locus at ``1e6 / (1e6 / 6504 - 0.8 t)``
    kelvin and is pushed along CIE 1960 ``v`` by ``0.0002 * tint`` (towards
    green, so the correction adds magenta). It is mapped to D65 with the
    Bradford chromatic adaptation transform
    ``B^-1 diag(LMS_D65 / LMS_src) B`` in XYZ (von Kries scaling in Bradford
    cone space; see also darktable's colorin/temperature modules, which use the
    same principle on raw data).
    """
    kelvin = 1e6 / (1e6 / D65_KELVIN - MIRED_PER_STEP * temperature)
    x, y = daylight_xy(kelvin)
    denominator = -2.0 * x + 12.0 * y + 3.0
    u, v = 4.0 * x / denominator, 6.0 * y / denominator + V_PER_TINT_STEP * tint
    denominator = 2.0 * u - 8.0 * v + 4.0
    x, y = 3.0 * u / denominator, 2.0 * v / denominator
    source_white = np.array([x / y, 1.0, (1.0 - x - y) / y])
    x65, y65 = daylight_xy(D65_KELVIN)
    target_white = np.array([x65 / y65, 1.0, (1.0 - x65 - y65) / y65])
    cone_gain = (BRADFORD @ target_white) / (BRADFORD @ source_white)
    adapt = np.linalg.inv(BRADFORD) @ np.diag(cone_gain) @ BRADFORD
    matrix = np.linalg.inv(SRGB_TO_XYZ) @ adapt @ SRGB_TO_XYZ
    return matrix / (SRGB_TO_XYZ[1] @ matrix @ np.ones(3))


def apply_white_balance(linear: np.ndarray, temperature: float, tint: float) -> np.ndarray:
    """Apply :func:`white_balance_matrix` to HxWx3 linear RGB (float32)."""
    matrix = white_balance_matrix(temperature, tint).astype(np.float32)
    return cv2.transform(linear, matrix)


#: Linear-light level, as a fraction of white, above which positive exposure is rolled off.
EXPOSURE_KNEE = 0.8


def highlight_shoulder(linear: np.ndarray, white: float, knee: float = EXPOSURE_KNEE) -> np.ndarray:
    """Compress linear values in ``[knee, white]`` smoothly onto ``[knee, 1]``.

    Parameters
    ----------
    linear : ndarray
        Linear-light values, float32; ``white`` (> 1) is the level that must
        land on 1.
    white : float
        Linear level that becomes 1 (``2**stops`` for a picture's white
        after ``+stops`` of exposure).
    knee : float
        Start of the shoulder, 0 < knee < 1; values below are unchanged.

    Returns
    -------
    ndarray
        float32; continuous with a continuous first derivative at the knee,
        increasing, and ``white`` maps to exactly 1, so a picture's white stays
        white while nothing below it reaches 1.

    Notes
    -----
    With ``u = (x - knee) / (white - knee)`` and ``a = (white - knee) / (1 - knee)``
    (the slope the curve must start with), the shoulder is
    ``knee + (1 - knee) a u / (1 + (a - 1) u)``: the rational shoulder of
    Reinhard et al., "Photographic Tone Reproduction for Digital Images",
    SIGGRAPH 2002, fitted between the knee and white. Camera Raw's exposure
    likewise compresses highlights instead of hard-clipping them.
    """
    slope = (white - knee) / (1.0 - knee)
    u = np.maximum(linear - np.float32(knee), 0.0) * np.float32(1.0 / (white - knee))
    shoulder = knee + (1.0 - knee) * slope * u / (1.0 + (slope - 1.0) * u)
    return np.where(linear > knee, shoulder, linear).astype(np.float32)


def apply_exposure(linear: np.ndarray, stops: float) -> np.ndarray:
    """Multiply linear light by ``2**stops`` (``Exposure2012``, EV), rolling off highlights.

    As in darktable's exposure module and Hu et al., "Exposure: A White-Box
    Photo Post-Processing Framework", ACM TOG 2018 (filters.py). A positive
    exposure then passes through :func:`highlight_shoulder` above 0.8 of
    white, so the input's white stays white and the tones below it are
    compressed instead of clipped; values already above white (after white
    balance) stay above 1 for the Highlights slider to recover.
    """
    gained = (linear * np.float32(2.0**stops)).astype(np.float32)
    if stops <= 0:
        return gained
    return highlight_shoulder(gained, float(2.0**stops))


def _contrast_curve(t: np.ndarray, contrast: float) -> np.ndarray:
    """S-curve about 0.5 in encoded luminance (RapidRAW's contrast shader).

    ``0.5 (2t)^k`` below the pivot and ``1 - 0.5 (2(1-t))^k`` above, with
    ``k = 2^(0.9 c)`` and ``c = Contrast2012 / 100``; monotone for any ``k``.
    """
    k = 2.0 ** (0.9 * contrast / 100.0)
    low = 0.5 * (2.0 * t) ** k
    high = 1.0 - 0.5 * (2.0 * (1.0 - t)) ** k
    return np.where(t < 0.5, low, high)


def _lift_dark(t: np.ndarray, amount: float, power: float) -> np.ndarray:
    """``t + a t (1-t)^n``: moves the dark end, monotone for ``|a| <= 1``.

    The bump's slope lies in ``[-((n-1)/(n+1))^(n-1), 1]``, so ``1 + a * slope``
    stays non-negative; larger ``n`` confines the effect to deeper tones.
    """
    return t + amount * t * (1.0 - t) ** power


def _lift_bright(t: np.ndarray, amount: float, power: float) -> np.ndarray:
    """Mirror image of :func:`_lift_dark` for the bright end."""
    return t + amount * t**power * (1.0 - t)


def basic_tone_curve(t: np.ndarray, *, contrast: float, highlights: float, shadows: float,
                     whites: float, blacks: float) -> np.ndarray:
    """Global tone map of the Basic panel on encoded luminance ``t`` in [0, 1].

    Parameters
    ----------
    t : ndarray
        sRGB-encoded luminance in [0, 1].
    contrast, highlights, shadows, whites, blacks : float
        ``Contrast2012`` ... ``Blacks2012``, -100..100.

    Returns
    -------
    ndarray
        Mapped values in [0, 1]; 0 and 1 are fixed points.

    Notes
    -----
    Contrast is the S-curve of :func:`_contrast_curve`. The four region
    sliders are bumps ``a t (1-t)^n`` (shadows ``n = 3``, peak near t = 0.25;
    blacks ``n = 8``, peak near 0.11) and their mirror images ``a t^n (1-t)``
    for highlights and whites, after RapidRAW's shadow/black lift shapes
    ``t (1-t)^4.5`` and ``t (1-t)^12``, with ``a = slider / 100``. Each step is
    monotone on its own, so their composition never inverts tones. Lightroom's
    sliders are also locally adaptive; this is the global part.
    """
    t = _contrast_curve(t, contrast)
    t = _lift_dark(t, shadows / 100.0, 3.0)
    t = _lift_bright(t, highlights / 100.0, 3.0)
    t = _lift_dark(t, blacks / 100.0, 8.0)
    t = _lift_bright(t, whites / 100.0, 8.0)
    return np.clip(t, 0.0, 1.0)


def apply_basic_tone(linear: np.ndarray, *, contrast: float, highlights: float, shadows: float,
                     whites: float, blacks: float) -> np.ndarray:
    """Apply :func:`basic_tone_curve` to the luminance of linear RGB.

    The curve (tabulated once per call) acts on sRGB-encoded Rec. 709
    luminance; RGB is scaled by the ratio of new to old linear luminance, so
    hue and saturation are kept. Luminance above 1 (after +exposure) is
    first mapped as 1 and keeps its excess, so over-range highlights stay
    recoverable until the final clip.
    """
    old = luma(linear)
    encoded = linear_to_srgb(np.maximum(old, 0.0))
    inside = np.clip(encoded, 0.0, 1.0)
    curve = LookupTable.sample(
        lambda t: basic_tone_curve(t, contrast=contrast, highlights=highlights,
                                   shadows=shadows, whites=whites, blacks=blacks), 0.0, 1.0)
    new = srgb_to_linear(curve(inside) + (encoded - inside))
    return apply_luminance_change(linear, old, new)


def parametric_curve_points(shadows: float, darks: float, lights: float, highlights: float,
                            splits: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Control points of Lightroom's parametric tone curve, in [0, 1].

    Parameters
    ----------
    shadows, darks, lights, highlights : float
        ``ParametricShadows`` ... ``ParametricHighlights``, -100..100.
    splits : tuple of float
        ``ParametricShadowSplit``, ``MidtoneSplit``, ``HighlightSplit``,
        0..100 (defaults 25, 50, 75).

    Returns
    -------
    xs, ys : ndarray
        Points (0, 0), one per region at the region's centre, and (1, 1).

    Notes
    -----
    The four regions are [0, s1], [s1, s2], [s2, s3] and [s3, 1]. Each
    slider moves its centre point up or down by at most 0.45 of the distance
    to the nearest neighbouring point, so the points stay increasing and the
    monotone cubic through them (:func:`rules.develop.maths.monotone_curve`)
    never inverts tones. A reconstruction of the slider behaviour, not
    Adobe's formula (unpublished).
    """
    s1, s2, s3 = (np.clip(np.asarray(splits, dtype=np.float64) / 100.0, 0.05, 0.95))
    s2 = max(s2, s1 + 0.05)
    s3 = min(max(s3, s2 + 0.05), 0.95)
    edges = np.array([0.0, s1, s2, s3, 1.0])
    centres = (edges[:-1] + edges[1:]) / 2.0
    xs = np.concatenate([[0.0], centres, [1.0]])
    gaps = np.diff(xs)
    reach = 0.45 * np.minimum(gaps[:-1], gaps[1:])
    amounts = np.array([shadows, darks, lights, highlights]) / 100.0
    ys = xs.copy()
    ys[1:-1] += amounts * reach
    return xs, ys


def apply_curve(values: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Map encoded values through the monotone cubic curve through ``(xs, ys)``.

    Points are in [0, 1] (a Lightroom 0..255 point curve divided by 255);
    values outside ``[xs[0], xs[-1]]`` take the end values.
    """
    curve = monotone_curve(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))
    return curve(values)

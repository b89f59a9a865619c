"""Colour stages of the develop engine, on sRGB-encoded RGB in [0, 1].

HSL / Color panel, vibrance and saturation, B&W conversion with the gray
mixer, and split toning / colour grading. Hue is the angle of the colour in
the plane orthogonal to the grey axis, ``atan2(sqrt(3) (G - B), 2R - G - B)``
(0 = red, 60 = yellow, 120 = green, 240 = blue), the continuous form of the
HSV hexcone hue.
"""

from __future__ import annotations

import numpy as np

from rules.develop.maths import (
    REC709_LUMA,
    LookupTable,
    channel_max,
    channel_mean,
    channel_min,
    compress_to_gamut,
    luma,
    smoothstep,
)

#: Hue centres of Lightroom's eight bands in degrees (Red, Orange, Yellow,
#: Green, Aqua, Blue, Purple, Magenta), as in phixer's XMP converter.
BAND_CENTRES = np.array([0.0, 30.0, 60.0, 120.0, 180.0, 240.0, 270.0, 300.0])

#: Hue shift in degrees of an HSL hue slider at +/-100.
HUE_SHIFT_AT_FULL = 30.0

#: Samples of the 1-D hue lookup tables over 0..360 degrees.
HUE_SAMPLES = 721

#: Hue of skin tones, degrees, and the half-width of their protection from Vibrance.
SKIN_HUE = 25.0
SKIN_WIDTH = 25.0

#: Chroma added by a split-toning wheel at saturation 100, in encoded units.
TONING_STRENGTH = 0.3


def hue_and_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma range ``max - min`` of encoded RGB."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0
    return hue.astype(np.float32), channel_max(rgb) - channel_min(rgb)


def band_weights(hue: np.ndarray) -> np.ndarray:
    """Smooth membership of hues in the eight bands; rows sum to one.

    Between two neighbouring band centres ``c_i < c_j`` the weights are
    ``cos^2`` and ``sin^2`` of ``(pi/2) (h - c_i) / (c_j - c_i)``: a raised-cosine
    partition of unity that is continuous with a continuous first derivative,
    so neighbouring hues are never split by a seam. Shape ``hue.shape + (8,)``.
    """
    centres = np.append(BAND_CENTRES, 360.0)
    hue = np.asarray(hue, dtype=np.float64) % 360.0
    left = np.clip(np.searchsorted(centres, hue, side="right") - 1, 0, len(BAND_CENTRES) - 1)
    position = (hue - centres[left]) / (centres[left + 1] - centres[left])
    weights = np.zeros(hue.shape + (len(BAND_CENTRES),))
    right = (left + 1) % len(BAND_CENTRES)
    np.put_along_axis(weights, left[..., None], (np.cos(np.pi / 2 * position) ** 2)[..., None],
                      axis=-1)
    np.put_along_axis(weights, right[..., None], (np.sin(np.pi / 2 * position) ** 2)[..., None],
                      axis=-1)
    return weights


def _per_hue(per_band, hue: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Blend eight per-band values by band weight at each pixel's hue."""
    values = np.asarray(per_band, dtype=np.float64) * scale
    table = LookupTable.sample(lambda grid: band_weights(grid) @ values, 0.0, 360.0,
                               HUE_SAMPLES)
    return table(hue)


def _saturation_gate(chroma: np.ndarray) -> np.ndarray:
    """0 for greys, 1 from a chroma range of 0.15 up: greys keep their hue-free look."""
    return smoothstep(0.02, 0.15, chroma)


def apply_hsl(rgb: np.ndarray, hue_adjustment, saturation_adjustment,
              luminance_adjustment) -> np.ndarray:
    """The HSL / Color panel: per-band hue, saturation and luminance.

    Parameters
    ----------
    rgb : ndarray
        HxWx3 encoded RGB, float32.
    hue_adjustment, saturation_adjustment, luminance_adjustment : tuple
        Eight values each, -100..100, in band order (``HueAdjustmentRed`` ...).

    Returns
    -------
    ndarray
        HxWx3 float32.

    Notes
    -----
    For a pixel of hue ``h`` with band weights ``w_i(h)`` (:func:`band_weights`)
    and gate ``g`` (0 for greys), the chroma ``C = RGB - mean(RGB)`` is
    rotated about the grey axis by ``g * sum(w_i H_i) * 30 deg / 100``, scaled by
    ``1 + g * sum(w_i S_i) / 100``, and RGB is scaled by
    ``1 + 0.5 g sum(w_i L_i) / 100``. The band layout follows RapidRAW's and
    phixer's HSL implementations; a rotation about the grey axis keeps the
    mean and the chroma magnitude.
    """
    hue, chroma = hue_and_chroma(rgb)
    gate = _saturation_gate(chroma)
    mean = channel_mean(rgb)[..., None]
    c = rgb - mean
    if any(hue_adjustment):
        angle = np.radians(gate * _per_hue(hue_adjustment, hue, HUE_SHIFT_AT_FULL / 100.0))
        # u x C for the unit grey axis u = (1, 1, 1) / sqrt(3).
        cross = np.stack([c[..., 2] - c[..., 1], c[..., 0] - c[..., 2], c[..., 1] - c[..., 0]],
                         axis=-1) / np.float32(np.sqrt(3.0))
        c = c * np.cos(angle)[..., None] + cross * np.sin(angle)[..., None]
    if any(saturation_adjustment):
        c = c * (1.0 + gate * _per_hue(saturation_adjustment, hue, 0.01))[..., None]
    out = mean + c
    if any(luminance_adjustment):
        out = out * (1.0 + 0.5 * gate * _per_hue(luminance_adjustment, hue, 0.01))[..., None]
    return out.astype(np.float32)


def apply_vibrance_saturation(rgb: np.ndarray, vibrance: float, saturation: float) -> np.ndarray:
    """Vibrance then Saturation, keeping Rec. 709 luma.

    Parameters
    ----------
    rgb : ndarray
        HxWx3 encoded RGB, float32.
    vibrance, saturation : float
        ``Vibrance`` and ``Saturation``, -100..100.

    Returns
    -------
    ndarray
        HxWx3 float32.

    Notes
    -----
    Both scale the chroma about luma, ``RGB' = Y + f (RGB - Y)``:
    saturation uses ``f = 1 + s`` (-100 gives grey), vibrance
    ``f = 1 + v (1 - S) p`` where ``S = (max - min) / max`` is the HSV
    saturation, so dull colours move most (darktable's vibrance idea), and
    ``p = 1 - 0.5 exp(-(d / 25 deg)^2)`` halves a positive vibrance on skin hues
    ``d`` degrees from 25 deg (RapidRAW's skin protection). Chroma pushed
    past the RGB cube is shortened toward luma
    (:func:`rules.develop.maths.compress_to_gamut`) rather than clipped
    channel by channel, which would shift hue and flatten detail in
    saturated areas.
    """
    y = luma(rgb)[..., None]
    factor = np.float32(1.0 + saturation / 100.0)
    if vibrance:
        hue, chroma = hue_and_chroma(rgb)
        hsv_saturation = chroma / np.maximum(channel_max(rgb), 1e-6)
        v = vibrance / 100.0
        protect = np.float32(1.0)
        if v > 0:
            distance = (hue - SKIN_HUE + 180.0) % 360.0 - 180.0
            protect = 1.0 - 0.5 * np.exp(-((distance / SKIN_WIDTH) ** 2))
        factor = factor * (1.0 + v * (1.0 - hsv_saturation) * protect)[..., None]
    chroma = rgb - y
    return compress_to_gamut(y, factor * chroma, chroma)


def to_grayscale(rgb: np.ndarray, gray_mixer) -> np.ndarray:
    """B&W conversion with the eight-band gray mixer; returns R = G = B.

    Parameters
    ----------
    rgb : ndarray
        HxWx3 encoded RGB, float32.
    gray_mixer : tuple
        ``GrayMixerRed`` ... ``GrayMixerMagenta``, -100..100.

    Returns
    -------
    ndarray
        HxWx3 float32 with three identical channels.

    Notes
    -----
    ``gray = Y (1 + 0.7 g S sum(w_i(h) M_i) / 100)``: Rec. 709 luma brightened
    or darkened by the mixer value of the pixel's hue band
    (:func:`band_weights`), in proportion to its HSV saturation ``S``; the
    grey gate ``g`` of the HSL panel leaves near-neutral pixels exactly
    unchanged. All-zero mixer values give plain luma.
    """
    gray = luma(rgb)
    if any(gray_mixer):
        hue, chroma = hue_and_chroma(rgb)
        hsv_saturation = chroma / np.maximum(channel_max(rgb), 1e-6)
        mix = _per_hue(gray_mixer, hue, 0.01)
        gray = gray * (1.0 + 0.7 * _saturation_gate(chroma) * hsv_saturation * mix)
    gray = np.maximum(gray, 0.0).astype(np.float32)
    return np.repeat(gray[..., None], 3, axis=2)


def tint_direction(hue_degrees: float) -> np.ndarray:
    """Unit chroma direction of a hue with zero Rec. 709 luma.

    The fully saturated HSV colour of the hue minus its luma, scaled so its
    largest component has magnitude one: adding it tints without brightening.
    """
    h = (hue_degrees % 360.0) / 60.0
    rgb = np.clip(np.abs((h + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
    direction = rgb - rgb @ REC709_LUMA
    return (direction / np.abs(direction).max()).astype(np.float32)


def limit_tint(rgb: np.ndarray, direction: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Soft-limit tint weights to the room each pixel has along the tint.

    Parameters
    ----------
    rgb : ndarray
        HxWx3 encoded RGB, float32, in [0, 1].
    direction : ndarray
        Tint direction, shape (3,), largest component magnitude one
        (:func:`tint_direction`).
    weight : ndarray
        HxW requested weights, 0 or more, in encoded units of the direction.

    Returns
    -------
    ndarray
        HxW float32 weights ``t = R (1 - exp(-k / R))``, where ``k`` is the
        requested weight and ``R`` the room: the largest step along the
        direction that keeps all channels in [0, 1] (footroom ``rgb / -d`` for
        falling channels, headroom ``(1 - rgb) / d`` for rising ones). ``t``
        follows ``k`` while it is small against ``R`` and stays below ``R``, so
        the tinted pixel keeps every channel strictly inside (0, 1) where the
        input had it.
    """
    room = np.full(weight.shape, np.inf, dtype=np.float32)
    for channel, d in enumerate(direction):
        if d < 0:
            room = np.minimum(room, rgb[..., channel] / -d)
        elif d > 0:
            room = np.minimum(room, (1.0 - rgb[..., channel]) / d)
    safe_room = np.maximum(room, 1e-6)
    return (safe_room * -np.expm1(-weight / safe_room)).astype(np.float32)


def apply_color_grading(rgb: np.ndarray, *, shadow: tuple[float, float],
                        highlight: tuple[float, float], midtone: tuple[float, float],
                        global_: tuple[float, float], luminance: tuple[float, float, float, float],
                        balance: float, blending: float) -> np.ndarray:
    """Split toning and colour grading by luma masks.

    Parameters
    ----------
    rgb : ndarray
        HxWx3 encoded RGB, float32.
    shadow, highlight, midtone, global_ : tuple of float
        ``(hue in degrees, saturation 0..100)`` of each wheel.
    luminance : tuple of float
        Shadow, midtone, highlight and global luminance, -100..100.
    balance : float
        ``SplitToningBalance``, -100..100; positive favours highlights.
    blending : float
        ``ColorGradeBlending``, 0..100; overlap of the tonal ranges.

    Returns
    -------
    ndarray
        HxWx3 float32.

    Notes
    -----
    Masks on luma ``Y``: crossover ``c = 0.5 - 0.25 b`` (b = balance / 100),
    half-width ``w = 0.05 + 0.45 blending / 100``, highlights
    ``m_h = smoothstep(c - w, c + w, Y)``, shadows ``m_s = 1 - m_h``,
    midtones ``m_m = 4 m_s m_h``. Each wheel adds ``t d(hue)`` where ``d`` is
    :func:`tint_direction` (additive, luma-neutral toning as in RapidRAW's
    colour grading) and ``t`` comes from the requested weight
    ``k = 0.3 sat/100 m``, faded out within 0.1 of pure black and white so
    they stay neutral, by :func:`limit_tint`: the tint never drives a channel
    to 0 or 1, so a warm tint on a dark pixel with little blue turns it
    amber instead of clipping its blue to black. Luminance sliders scale RGB
    by ``1 + 0.5 sum(m L) / 100``.
    """
    y = luma(rgb)
    crossover = 0.5 - 0.25 * balance / 100.0
    width = 0.05 + 0.45 * blending / 100.0
    m_high = smoothstep(crossover - width, crossover + width, y)
    m_shadow = 1.0 - m_high
    m_mid = 4.0 * m_shadow * m_high
    envelope = smoothstep(0.0, 0.1, y) * (1.0 - smoothstep(0.9, 1.0, y))
    masks = (m_shadow, m_high, m_mid, np.ones_like(y))
    toned = rgb.copy()
    for (hue, sat), mask in zip((shadow, highlight, midtone, global_), masks):
        if sat:
            direction = tint_direction(hue)
            weight = limit_tint(toned, direction,
                                (TONING_STRENGTH * sat / 100.0) * mask * envelope)
            toned += weight[..., None] * direction
    if any(luminance):
        lift = sum(lum / 100.0 * mask for lum, mask in zip(luminance, (m_shadow, m_mid, m_high,
                                                                        masks[3])))
        toned *= (1.0 + 0.5 * lift)[..., None]
    return toned.astype(np.float32)

"""Effects panel of the develop engine: post-crop vignette and film grain.

Both act on sRGB-encoded RGB in [0, 1] at the end of the pipeline, as in
Camera Raw where they are applied after all tone and colour work.
"""

from __future__ import annotations

import cv2
import numpy as np

from rules.develop.maths import luma, smoothstep

#: Grain amplitude (standard deviation, encoded units) at GrainAmount 100.
GRAIN_STRENGTH = 0.12

#: Smallest side, in pixels, of the noise field the grain pattern is cut from:
#: large enough to estimate its standard deviation at every grain size.
GRAIN_MIN_FIELD = 64


def vignette_distance(height: int, width: int, roundness: float) -> np.ndarray:
    """Normalised distance from the centre whose level sets shape the vignette.

    Parameters
    ----------
    height, width : int
        Picture size in pixels.
    roundness : float
        ``PostCropVignetteRoundness``, -100..100.

    Returns
    -------
    ndarray
        HxW float32; 1 at the middle of the long edges for roundness 0.

    Notes
    -----
    Coordinates ``u, v`` run over [-1, 1] across the picture. Roundness 0
    gives ellipses following the frame; +100 blends the axis scales towards a
    true circle (both axes in units of the long half-side); -100 turns the
    ellipse into a superellipse ``(|u|^p + |v|^p)^(1/p)`` with ``p = 8``, close
    to the frame's rectangle (RapidRAW's vignette uses the same two knobs).
    """
    r = roundness / 100.0
    long_side = max(height, width)
    u = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    v = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    if r > 0:
        u = u * (1.0 - r + r * width / long_side)
        v = v * (1.0 - r + r * height / long_side)
    power = 2.0 + 6.0 * max(-r, 0.0)
    return ((np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)).astype(np.float32)


def apply_vignette(rgb: np.ndarray, *, amount: float, midpoint: float, feather: float,
                   roundness: float, style: int) -> np.ndarray:
    """Post-crop vignette: darken (amount < 0) or lighten the edges.

    Parameters
    ----------
    rgb : ndarray
        HxWx3 encoded RGB, float32.
    amount : float
        ``PostCropVignetteAmount``, -100..100.
    midpoint, feather : float
        0..100: how far from the centre the falloff begins, and how soft it is.
    roundness : float
        -100..100 (:func:`vignette_distance`).
    style : int
        1 Highlight Priority, 2 Color Priority, 3 Paint Overlay.

    Returns
    -------
    ndarray
        HxWx3 float32.

    Notes
    -----
    Mask ``m = smoothstep(r0 - f/2, r0 + f/2, d)`` with ``r0 = 0.5 + 0.8
    midpoint/100`` and ``f = 0.05 + 0.6 feather/100`` on the distance ``d`` of
    :func:`vignette_distance` (after RapidRAW's vignette). Darkening
    multiplies RGB by ``1 + a m`` (``a = amount / 100``), which keeps hue and
    saturation (Color Priority; Paint Overlay is rendered the same way);
    Highlight Priority spares bright pixels by scaling ``a`` with
    ``1 - 0.5 Y``. Lightening mixes towards white by ``a m``.
    """
    a = amount / 100.0
    height, width = rgb.shape[:2]
    centre = 0.5 + 0.8 * midpoint / 100.0
    spread = 0.05 + 0.6 * feather / 100.0
    mask = smoothstep(centre - spread / 2.0, centre + spread / 2.0,
                      vignette_distance(height, width, roundness))[..., None]
    if a > 0:
        return (rgb + a * mask * (1.0 - rgb)).astype(np.float32)
    strength = a * mask
    if style == 1:
        strength = strength * (1.0 - 0.5 * np.clip(luma(rgb), 0.0, 1.0))[..., None]
    return (rgb * (1.0 + strength)).astype(np.float32)


def grain_field(height: int, width: int, *, size: float, roughness: float,
                seed: int) -> np.ndarray:
    """Zero-mean, unit-variance grain pattern, deterministic for a seed.

    Parameters
    ----------
    height, width : int
        Picture size in pixels, 1 or more.
    size : float
        ``GrainSize``, 0..100: Gaussian blur sigma ``0.5 + size / 25`` pixels
        of white noise (clumps about 1.5 px at the default 25).
    roughness : float
        ``GrainFrequency``, 0..100: share of a second, finer layer
        (sigma halved) mixed in, making the grain irregular.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    ndarray
        HxW float32, each value about standard normal.

    Notes
    -----
    The noise is drawn, blurred and normalised on a field of at least
    ``GRAIN_MIN_FIELD`` pixels a side and the HxW window at its centre
    returned, so the standard deviations divided by are estimated from
    thousands of samples even for a picture of one pixel, and a tiny picture
    takes interior values, away from the blur's mirrored borders. Pictures at
    least that large in both sides use the whole field.
    """
    rng = np.random.default_rng(seed)
    field_shape = (max(height, GRAIN_MIN_FIELD), max(width, GRAIN_MIN_FIELD))
    sigma = 0.5 + size / 25.0
    mix = roughness / 100.0
    coarse = cv2.GaussianBlur(rng.standard_normal(field_shape, dtype=np.float32),
                              (0, 0), sigma)
    fine = cv2.GaussianBlur(rng.standard_normal(field_shape, dtype=np.float32),
                            (0, 0), sigma / 2.0)
    field = (1.0 - mix) * coarse / coarse.std() + mix * fine / fine.std()
    top = (field_shape[0] - height) // 2
    left = (field_shape[1] - width) // 2
    return (field / field.std())[top:top + height, left:left + width].astype(np.float32)


def apply_grain(rgb: np.ndarray, *, amount: float, size: float, roughness: float,
                seed: int) -> np.ndarray:
    """Add monochrome film grain, strongest in the midtones.

    ``RGB + 0.12 (amount/100) n 4Y(1-Y)`` with ``n`` from :func:`grain_field`
    (the same on all three channels, so grayscale stays grayscale) and ``Y``
    the luma; the ``4Y(1-Y)`` envelope keeps pure black and white clean, as
    film grain and RapidRAW's midtone-masked grain do.
    """
    height, width = rgb.shape[:2]
    noise = grain_field(height, width, size=size, roughness=roughness, seed=seed)
    y = np.clip(luma(rgb), 0.0, 1.0)
    offset = GRAIN_STRENGTH * amount / 100.0 * noise * 4.0 * y * (1.0 - y)
    return (rgb + offset[..., None]).astype(np.float32)

"""Colour decompositions shared by the conventional enhancement methods.

Most of the ten conventional methods of Kosugi & Yamasaki's pseudo-users
(IEEE TCSVT 2023) enhance one brightness channel and put the colour back
afterwards: the HSV value ``V = max(R, G, B)`` (CLAHE, GCEHistMod, JieP, LIME,
NPEA, PIE, SRIE) or a luma (LLF).  Replacing ``V`` while keeping hue and
saturation is exactly a per-pixel rescaling of the three channels by
``V' / V``; this module implements that, the luma equivalent, the input check
every rule applies at its boundary, and the final clip to ``[0, 1]``.

All helpers are pure functions of their arguments.
"""

import numpy as np

#: MATLAB ``rgb2gray`` weights (ITU-R BT.601 luma), used by JieP and LLF.
REC601_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def check_rgb_image(image):
    """Validate a rule input and return it unchanged.

    Parameters
    ----------
    image : numpy.ndarray
        Candidate RGB image.

    Returns
    -------
    numpy.ndarray
        The same array, guaranteed to be float32 of shape ``(H, W, 3)`` with
        ``H, W >= 1`` and finite values in ``[0, 1]``.

    Raises
    ------
    ValueError
        If the array has the wrong type, dtype, shape or value range.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy.ndarray, got {type(image).__name__}")
    if image.dtype != np.float32:
        raise ValueError(f"expected dtype float32, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values")
    if image.min() < 0.0 or image.max() > 1.0:
        raise ValueError(
            f"expected values in [0, 1], got [{image.min():g}, {image.max():g}]")
    return image


def hsv_value(image):
    """HSV value channel ``V = max(R, G, B)`` as float64, shape ``(H, W)``."""
    return image.max(axis=2).astype(np.float64)


def luma(image, weights=REC601_WEIGHTS):
    """Weighted sum of the RGB channels as float64, shape ``(H, W)``.

    Parameters
    ----------
    image : numpy.ndarray
        RGB image, shape ``(H, W, 3)``.
    weights : tuple of float, optional
        Channel weights; the default is MATLAB's ``rgb2gray`` (BT.601).
    """
    return image.astype(np.float64) @ np.asarray(weights, dtype=np.float64)


def _rescale_channels(image, old, new):
    """Multiply RGB by ``new / old``; pixels with ``old == 0`` become grey ``new``."""
    rgb = image.astype(np.float64)
    positive = old > 0
    ratio = np.divide(new, old, out=np.zeros_like(old), where=positive)
    out = rgb * ratio[..., None]
    out[~positive] = new[~positive, None]
    return out


def replace_hsv_value(image, new_value):
    """Give ``image`` a new HSV value channel, keeping hue and saturation.

    Equivalent to ``hsv2rgb`` of ``rgb2hsv(image)`` with its V channel
    replaced (MATLAB / OpenCV semantics): hue and saturation are invariant
    under scaling, so each pixel's RGB is multiplied by ``new / old``.  Black
    pixels (``V = 0``, hue and saturation 0) become grey of the new value.

    Parameters
    ----------
    image : numpy.ndarray
        RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    new_value : numpy.ndarray
        New value channel, shape ``(H, W)``; values above 1 are allowed and
        saturate later in :func:`finish_rgb`.

    Returns
    -------
    numpy.ndarray
        float64 RGB image, not clipped.
    """
    return _rescale_channels(image, hsv_value(image), np.asarray(new_value, np.float64))


def replace_luma(image, new_luma, weights=REC601_WEIGHTS):
    """Rescale RGB so that its luma becomes ``new_luma`` (luminance colour mode).

    This is the colour handling of MATLAB ``locallapfilt(..., 'ColorMode',
    'luminance')`` and of Aubry's reference code: the filtered luma divided by
    the input luma multiplies all three channels.  Black pixels become grey.

    Returns
    -------
    numpy.ndarray
        float64 RGB image, not clipped.
    """
    return _rescale_channels(image, luma(image, weights), np.asarray(new_luma, np.float64))


def to_levels(channel):
    """Quantise values in ``[0, 1]`` to 8-bit codes (rounded), as ``uint8``."""
    return np.rint(np.clip(channel, 0.0, 1.0) * 255.0).astype(np.uint8)


def finish_rgb(rgb):
    """Clip an RGB result to ``[0, 1]`` and return it as float32.

    NaN (which no rule should produce) maps to 0 so the output contract of
    every rule, finite float32 in ``[0, 1]``, always holds.
    """
    out = np.nan_to_num(np.asarray(rgb, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)

"""Small numerical building blocks of the develop engine.

Transfer functions, luma, smooth masks, monotone curves and an edge-aware
smoothing filter, shared by the develop stages (``rules.develop_*``). All take
and return float32 numpy arrays and are vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.interpolate import PchipInterpolator

#: Rec. 709 / sRGB luma weights (ITU-R BT.709), summing to one.
REC709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)

#: Samples of a curve lookup table; fine enough that linear interpolation
#: between samples stays within about 1e-6 of a smooth curve.
CURVE_SAMPLES = 4096


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """``values ** exponent`` for positive float32 arrays (OpenCV's SIMD pow)."""
    return cv2.pow(np.ascontiguousarray(values, dtype=np.float32), exponent)


def srgb_to_linear(encoded: np.ndarray) -> np.ndarray:
    """sRGB electro-optical transfer function (IEC 61966-2-1).

    Parameters
    ----------
    encoded : ndarray
        Gamma-encoded values; the piecewise formula also extends above 1.

    Returns
    -------
    ndarray
        Linear-light values, float32.
    """
    encoded = np.asarray(encoded, dtype=np.float32)
    curved = _power((np.maximum(encoded, 0.04045) + 0.055) / 1.055, 2.4)
    return np.where(encoded <= 0.04045, encoded / np.float32(12.92), curved)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Inverse of :func:`srgb_to_linear` (IEC 61966-2-1), float32."""
    linear = np.asarray(linear, dtype=np.float32)
    curved = 1.055 * _power(np.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055
    return np.where(linear <= 0.0031308, linear * np.float32(12.92), curved)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 weighted sum of the last axis (HxWx3 -> HxW), float32."""
    return (rgb @ REC709_LUMA).astype(np.float32)


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """Largest of R, G, B (HxWx3 -> HxW); faster than ``max(axis=2)``."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_min(rgb: np.ndarray) -> np.ndarray:
    """Smallest of R, G, B (HxWx3 -> HxW)."""
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def channel_mean(rgb: np.ndarray) -> np.ndarray:
    """Mean of R, G, B (HxWx3 -> HxW)."""
    return (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) / np.float32(3.0)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Cubic Hermite step from 0 at ``edge0`` to 1 at ``edge1`` (GLSL smoothstep)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@dataclass(frozen=True)
class LookupTable:
    """A 1-D function sampled on a uniform grid over ``[start, stop]``.

    Calling it interpolates linearly between samples and holds the end
    values outside the grid; several times faster than ``np.interp``.
    """

    start: float
    stop: float
    table: np.ndarray

    @classmethod
    def sample(cls, function, start: float, stop: float,
               samples: int = CURVE_SAMPLES) -> LookupTable:
        """Tabulate ``function`` at ``samples`` points from ``start`` to ``stop``."""
        grid = np.linspace(start, stop, samples)
        return cls(start, stop, np.asarray(function(grid), dtype=np.float32))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        last = len(self.table) - 1
        position = (np.asarray(values, dtype=np.float32) - np.float32(self.start)) \
            * np.float32(last / (self.stop - self.start))
        position = np.clip(position, 0.0, last)
        index = np.minimum(position.astype(np.int32), last - 1)
        low = self.table[index]
        return low + (position - index) * (self.table[index + 1] - low)


def monotone_curve(xs: np.ndarray, ys: np.ndarray) -> LookupTable:
    """The monotone cubic through ``(xs, ys)`` as a lookup table.

    Parameters
    ----------
    xs, ys : ndarray
        Control points in [0, 1], ``xs`` strictly increasing.

    Returns
    -------
    LookupTable
        Outside ``[xs[0], xs[-1]]`` it is flat at the end values, as
        Lightroom's point curve is.

    Notes
    -----
    Piecewise cubic Hermite interpolation with Fritsch-Carlson slopes (scipy's
    ``PchipInterpolator``): monotone data give a monotone curve without
    overshoot, unlike a natural spline. Two points give a straight line.
    """
    if len(xs) > 2:
        curve = PchipInterpolator(xs, ys)
    else:
        def curve(grid):
            return np.interp(grid, xs, ys)
    return LookupTable.sample(lambda grid: np.clip(curve(grid), 0.0, 1.0), xs[0], xs[-1])


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window with mirrored borders."""
    size = 2 * radius + 1
    return cv2.boxFilter(image, -1, (size, size), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``source`` steered by a grey ``guide``.

    Parameters
    ----------
    guide, source : ndarray
        HxW float32 images.
    radius : int
        Window radius in pixels.
    eps : float
        Regularisation; edges with local variance well above ``eps`` are kept.

    Returns
    -------
    ndarray
        HxW float32.

    References
    ----------
    K. He, J. Sun, X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6), 2013,
    Algorithm 1 (box filters, O(N) in the radius).
    """
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(source, radius)
    cov_ip = box_mean(guide * source, radius) - mean_i * mean_p
    var_i = box_mean(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return (box_mean(a, radius) * guide + box_mean(b, radius)).astype(np.float32)


def apply_luminance_change(linear: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Scale linear RGB by ``new / old`` luminance, keeping chromaticity.

    Pixels with (near-)zero luminance have no defined ratio and are kept.
    """
    ratio = np.divide(new, old, out=np.ones_like(old), where=old > 1e-6)
    return (linear * ratio[..., None]).astype(np.float32)


#: Share of the room to the gamut boundary that chroma may use before it is compressed.
GAMUT_KNEE = 0.8


def gamut_extent(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """How far chroma reaches from grey ``y`` toward the RGB cube's boundary (HxWx1; 1 on it).

    The largest of ``c / (1 - y)`` over positive channel offsets ``c`` and
    ``-c / y`` over negative ones; above 1 a channel is outside [0, 1].
    """
    room_up = np.maximum(np.float32(1.0) - y[..., 0], np.float32(1e-6))
    room_down = np.maximum(y[..., 0], np.float32(1e-6))
    return np.maximum(channel_max(chroma) / room_up, -channel_min(chroma) / room_down)[..., None]


def compress_to_gamut(y: np.ndarray, chroma: np.ndarray, before: np.ndarray,
                      knee: float = GAMUT_KNEE) -> np.ndarray:
    """``y + chroma`` with the chroma shortened toward ``y`` so no channel newly reaches 0 or 1.

    Parameters
    ----------
    y : ndarray
        HxWx1 luma in [0, 1], float32; kept.
    chroma : ndarray
        HxWx3 offsets of the channels from ``y`` after a saturation change.
    before : ndarray
        HxWx3 offsets before the change; chroma is never compressed below
        the extent it had then.
    knee : float
        Extent (:func:`gamut_extent`), 0 < knee < 1, below which chroma is
        unchanged.

    Returns
    -------
    ndarray
        HxWx3 float32. Hue and luma are kept; only the length of the chroma
        changes, so an over-saturated colour keeps its hue instead of having
        one channel clipped on its own.

    Notes
    -----
    A pixel's extent ``e`` above its own knee ``k = min(max(knee, e0), 0.999)``
    (``e0``: its extent before the change) is mapped by the shoulder
    ``k + (1 - k) u / (1 + u)``, ``u = (e - k) / (1 - k)``, which has slope 1 at
    the knee and tends to 1 without reaching it; the chroma is scaled by
    the ratio of the new extent to the old. So a saturation increase
    never makes a colour duller than it was, and never pushes a channel
    out of [0, 1]. This is the distance-based compression of the ACES
    Reference Gamut Compression (Academy of Motion Picture Arts and Sciences,
    2021) with luma as the neutral axis and the RGB cube as the gamut.
    """
    extent = gamut_extent(y, chroma)
    start = np.clip(gamut_extent(y, before), np.float32(knee), np.float32(0.999))
    u = np.maximum(extent - start, np.float32(0.0)) / (np.float32(1.0) - start)
    compressed = start + (np.float32(1.0) - start) * u / (np.float32(1.0) + u)
    scale = np.where(extent > start, compressed / np.maximum(extent, np.float32(1e-6)), np.float32(1.0))
    return (y + chroma * scale).astype(np.float32)

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

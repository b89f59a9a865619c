"""LDR: contrast enhancement by the layered difference representation of 2-D histograms.

Lee, Lee & Kim, "Contrast Enhancement Based on Layered Difference
Representation of 2D Histograms", IEEE TIP 22(12), 2013.  One of the ten
conventional pseudo-users of Kosugi & Yamasaki (IEEE TCSVT 2023); this port
follows the authors' MATLAB ``LDR.m`` and its demo wrapper, which enhance the
luma of a BT.709 YUV decomposition.
"""

import numpy as np

from rules._color import check_rgb_image, finish_rgb

_LEVELS = 256

#: RGB -> (Y, U - 128, V - 128) matrix of the authors' ``rgb2yuv`` (BT.709).
_RGB_TO_YUV = np.array([[0.2126, 0.7152, 0.0722],
                        [-0.1146, -0.3854, 0.5],
                        [0.5, -0.4542, -0.0458]])


def _pair_histogram(luma):
    """Unordered 2-D histogram ``h[max, min]`` of vertically and horizontally adjacent pixels."""
    first = np.concatenate([luma[:-1, :].ravel(), luma[:, :-1].ravel()])
    second = np.concatenate([luma[1:, :].ravel(), luma[:, 1:].ravel()])
    pairs = np.maximum(first, second) * _LEVELS + np.minimum(first, second)
    return np.bincount(pairs, minlength=_LEVELS * _LEVELS).reshape(_LEVELS, _LEVELS)


def ldr_curve(luma, *, alpha=2.5):
    """Transformation function of LDR for an 8-bit luma channel.

    For every layer ``l = 1 .. 255`` (grey-level difference), the layer
    histogram ``h_l(i) = ln(1 + h[i + l, i])`` is spread over the ``l``
    output intervals it covers (full convolution with ``ones(l)``), offset by
    its minimum, divided by the number of ways ``U_l(k)`` each interval can be
    covered, and normalised to a difference vector ``d_l``.  Layers are
    combined with weights ``(s_l / max s)**alpha`` where ``s_l = sum h_l``;
    the curve is ``255 * cumsum(d)`` starting at 0.

    Parameters
    ----------
    luma : numpy.ndarray
        Integer channel with values in ``0 .. 255``, shape ``(H, W)``.
    alpha : float, optional
        Layer weighting exponent, as in :func:`ldr`.

    Returns
    -------
    numpy.ndarray
        float64 curve of length 256 from 0 to 255; the identity when the
        image has no pair of different neighbouring levels.
    """
    pair_histogram = _pair_histogram(luma.astype(np.int64))
    intervals = np.arange(1, _LEVELS)
    differences = np.zeros((_LEVELS - 1, _LEVELS - 1))
    masses = np.zeros(_LEVELS - 1)
    for layer in range(1, _LEVELS):
        layer_histogram = np.log1p(np.diagonal(pair_histogram, offset=-layer).astype(np.float64))
        masses[layer - 1] = layer_histogram.sum()
        if masses[layer - 1] == 0:
            continue
        spread = np.convolve(layer_histogram, np.ones(layer))
        coverage = np.minimum(intervals, _LEVELS - layer) - np.maximum(intervals - layer, 0)
        difference = (spread - spread.min()) / coverage
        if difference.sum() > 0:
            differences[:, layer - 1] = difference / difference.sum()
    identity = np.arange(_LEVELS, dtype=np.float64)
    if masses.max() == 0:
        return identity
    combined = differences @ (masses / masses.max()) ** alpha
    if combined.sum() == 0:
        return identity
    return 255.0 * np.concatenate([[0.0], np.cumsum(combined / combined.sum())])


def ldr(image, *, alpha=2.5):
    """Enhance contrast with the layered difference representation (LDR).

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    alpha : float, optional
        Exponent of the inter-layer weights ``(s_l / max s)**alpha``; larger
        values favour the layers with the most mass (small differences).
        2.5 is the paper's and the MATLAB demo's default.

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    Colour: as in the authors' demo, RGB (8-bit) goes to BT.709 YUV with
    every component rounded to 8 bits, the luma is mapped through the
    rounded curve, and RGB is rebuilt with the inverse matrix and saturated.
    The matrix is the BT.709 one (its chroma rows sum to zero, so grey
    stays grey).

    References
    ----------
    C. Lee, C. Lee, C.-S. Kim, "Contrast Enhancement Based on Layered
    Difference Representation of 2D Histograms", IEEE Trans. Image Process.
    22(12):5372-5384, 2013.
    """
    image = check_rgb_image(image)
    rgb = np.rint(image.astype(np.float64) * 255.0)
    yuv = np.clip(np.rint(rgb @ _RGB_TO_YUV.T + [0.0, 128.0, 128.0]), 0, 255)
    luma = yuv[..., 0].astype(np.int64)
    curve = ldr_curve(luma, alpha=alpha)
    yuv[..., 0] = np.floor(curve[luma] + 0.5)
    yuv[..., 1:] -= 128.0
    rgb_out = np.clip(np.rint(yuv @ np.linalg.inv(_RGB_TO_YUV).T), 0, 255)
    return finish_rgb(rgb_out / 255.0)

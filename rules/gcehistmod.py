"""GCEHistMod: global contrast enhancement by histogram modification.

Arici, Dikbas & Altunbasak, "A Histogram Modification Framework and Its
Application for Image Contrast Enhancement", IEEE TIP 18(9), 2009, in its
low-complexity form (Section V).  One of the ten conventional pseudo-users of
Kosugi & Yamasaki (IEEE TCSVT 2023); this port follows the C++/OpenCV
reference ``GCEHistMod.cpp`` of dengyueyun666/Image-Contrast-Enhancement.
"""

import numpy as np

from rules._color import check_rgb_image, finish_rgb, hsv_value, replace_hsv_value, to_levels

_LEVELS = 256


def gcehistmod_curve(levels, *, threshold=5, black=23, white=230, alpha=2.0, gain=10):
    """Tone curve (256-entry uint8 look-up table) of GCEHistMod for one channel.

    1. Along each row, ``d = |L(r, c) - L(r, c-2)|`` (``d = L`` for the first
       two columns).  ``k`` sums all ``d``; pixels with ``d > threshold``
       enter the histogram ``h``.
    2. Normalised gain ``kappa = k g / 2**ceil(log2(k g))`` in ``(0.5, 1]``.
    3. ``u = min(count / 256, 10)``; modified histogram
       ``round((1 - kappa) u + kappa h)``, divided by ``1 + alpha`` for bins
       ``<= black`` or ``>= white`` (black/white stretching), rounded.
    4. ``LUT = 255 * cumsum / sum`` with ``LUT[0] = 0``.

    Parameters
    ----------
    levels : numpy.ndarray
        uint8 channel, shape ``(H, W)``.
    threshold, black, white, alpha, gain
        As in :func:`gcehistmod`.

    Returns
    -------
    numpy.ndarray
        uint8 look-up table of length 256; the identity when no pixel passes
        the threshold (flat or black images).
    """
    values = levels.astype(np.int64)
    differences = values.copy()
    differences[:, 2:] = np.abs(values[:, 2:] - values[:, :-2])
    total = float(differences.sum())
    textured = differences > threshold
    histogram = np.bincount(values[textured], minlength=_LEVELS).astype(np.float64)
    count = int(textured.sum())
    scaled_gain = total * gain
    kappa = scaled_gain / 2.0 ** np.ceil(np.log2(scaled_gain)) if scaled_gain > 0 else 1.0
    uniform = min(count / 256.0, 10.0)
    modified = (1.0 - kappa) * uniform + kappa * histogram
    bins = np.arange(_LEVELS)
    stretched = (bins <= black) | (bins >= white)
    modified[stretched] /= 1.0 + alpha
    modified = np.floor(modified + 0.5)
    if modified.sum() == 0:
        return bins.astype(np.uint8)
    cdf = np.cumsum(modified / modified.sum())
    table = np.clip(np.floor(255.0 * cdf + 0.5), 0, 255)
    table[0] = 0
    return table.astype(np.uint8)


def gcehistmod(image, *, threshold=5, black=23, white=230, alpha=2.0, gain=10):
    """Enhance global contrast with Arici et al.'s low-complexity histogram modification.

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    threshold : int, optional
        Minimum two-pixel difference (8-bit levels) for a pixel to count in
        the histogram, so that flat regions do not dominate; 5.
    black, white : int, optional
        Bins ``<= black`` and ``>= white`` are damped (black and white
        stretching); 23 and 230.
    alpha : float, optional
        Damping of those bins, ``1 / (1 + alpha)``; 2.
    gain : int, optional
        Multiplier ``g`` of the activity measure in the adaptive weight
        ``kappa`` between histogram and uniform; 10.

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    Defaults are those of the C++ reference.  Colour: the curve is computed
    on and applied to the 8-bit HSV value (``BGR2HSV_FULL`` V in the
    reference); hue and saturation are kept exactly rather than through
    OpenCV's 8-bit HSV round trip.  The normalisation
    ``kappa = k g / 2**ceil(log2(k g))`` is the reference's reading of the
    paper.

    References
    ----------
    T. Arici, S. Dikbas, Y. Altunbasak, "A Histogram Modification Framework
    and Its Application for Image Contrast Enhancement", IEEE Trans. Image
    Process. 18(9):1921-1935, 2009.
    """
    image = check_rgb_image(image)
    levels = to_levels(hsv_value(image))
    table = gcehistmod_curve(levels, threshold=threshold, black=black, white=white,
                             alpha=alpha, gain=gain)
    return finish_rgb(replace_hsv_value(image, table[levels] / 255.0))

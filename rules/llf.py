"""LLF: local Laplacian filtering for detail enhancement.

Paris, Hasinoff & Kautz, "Local Laplacian Filters: Edge-aware Image
Processing with a Laplacian Pyramid", SIGGRAPH 2011, computed with the fast
algorithm of Aubry, Paris, Hasinoff, Kautz & Durand, "Fast Local Laplacian
Filters: Theory and Applications", ACM TOG 33(5), 2014.  One of the ten
conventional pseudo-users of Kosugi & Yamasaki (IEEE TCSVT 2023), most
likely produced with MATLAB's ``locallapfilt``, whose parameters (``sigma``,
``alpha``, ``beta``, luminance colour mode) this rule mirrors.
"""

import cv2
import numpy as np

from rules._color import REC601_WEIGHTS, check_rgb_image, finish_rgb, luma, replace_luma


def remap_detail(intensity, reference, *, sigma=0.4, alpha=0.5, beta=1.0, noise=0.01):
    """Paris et al.'s point-wise remapping ``r_g(i)`` around a reference level ``g``.

    For ``|i - g| <= sigma`` (details): ``g + sign(i - g) sigma f(|i - g| / sigma)``
    with ``f(x) = x**alpha``, blended towards the identity for differences below
    ``2 * noise`` by a smooth step between ``noise`` and ``2 * noise`` so that
    noise is not amplified.  Above ``sigma`` (edges):
    ``g + sign(i - g) (beta (|i - g| - sigma) + sigma)``.

    Parameters
    ----------
    intensity : numpy.ndarray
        Input levels in ``[0, 1]``.
    reference : float
        Reference level ``g``.
    sigma, alpha, beta : float, optional
        As in :func:`llf`.
    noise : float, optional
        Differences (in intensity units) treated as noise; 0.01 as in the paper.

    Returns
    -------
    numpy.ndarray
        Remapped levels, same shape.
    """
    difference = intensity - reference
    magnitude = np.abs(difference)
    step = np.clip((magnitude - noise) / noise, 0.0, 1.0)
    blend = step * step * (3.0 - 2.0 * step)
    ratio = np.minimum(magnitude / sigma, 1.0)
    detail = sigma * (blend * ratio ** alpha + (1.0 - blend) * ratio)
    edge = beta * (magnitude - sigma) + sigma
    return reference + np.sign(difference) * np.where(magnitude <= sigma, detail, edge)


def pyramid_depth(height, width):
    """Number of pyramid levels of Aubry's ``llf.m``, ``ceil(ln(min side) - ln 2) + 2``.

    Capped so that the coarsest level still has at least one pixel per
    halving (``floor(log2(min side)) + 1``); 1 for images one pixel thick,
    which then pass through unchanged.
    """
    side = min(height, width)
    aubry = int(np.ceil(np.log(side) - np.log(2.0))) + 2
    return max(1, min(aubry, int(np.floor(np.log2(side))) + 1))


def _gaussian_pyramid(image, depth):
    levels = [image]
    for _ in range(depth - 1):
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def _laplacian_pyramid(image, depth):
    gaussian = _gaussian_pyramid(image, depth)
    laplacian = [fine - cv2.pyrUp(coarse, dstsize=fine.shape[::-1])
                 for fine, coarse in zip(gaussian[:-1], gaussian[1:])]
    return laplacian + [gaussian[-1]]


def _collapse(pyramid):
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = detail + cv2.pyrUp(image, dstsize=detail.shape[::-1])
    return image


def local_laplacian(intensity, *, sigma=0.4, alpha=0.5, beta=1.0, intensity_levels=16):
    """Fast local Laplacian filter of a single channel (Aubry et al. 2014, Alg. 1).

    The remapping is sampled at ``intensity_levels`` reference levels ``g_j``
    evenly spaced in ``[0, 1]``; for each, the Laplacian pyramid of
    ``r_{g_j}(I)`` is built, and each output coefficient is the linear
    interpolation, between the two ``g_j`` bracketing the input's Gaussian
    pyramid value at that position, of those pyramids' coefficients.  The
    coarsest (residual) level is copied from the input.

    Parameters
    ----------
    intensity : numpy.ndarray
        float64 channel in ``[0, 1]``, shape ``(H, W)``.
    sigma, alpha, beta, intensity_levels
        As in :func:`llf`.

    Returns
    -------
    numpy.ndarray
        Filtered channel, float64, not clipped.
    """
    depth = pyramid_depth(*intensity.shape)
    gaussian = _gaussian_pyramid(intensity, depth)
    output = [np.zeros_like(level) for level in gaussian[:-1]] + [gaussian[-1]]
    references = np.linspace(0.0, 1.0, intensity_levels)
    spacing = references[1] - references[0]
    for reference in references:
        remapped = _laplacian_pyramid(
            remap_detail(intensity, reference, sigma=sigma, alpha=alpha, beta=beta), depth)
        for level in range(depth - 1):
            weight = np.maximum(1.0 - np.abs(gaussian[level] - reference) / spacing, 0.0)
            output[level] += weight * remapped[level]
    return _collapse(output)


def llf(image, *, sigma=0.4, alpha=0.5, beta=1.0, intensity_levels=16):
    """Enhance local detail with the (fast) local Laplacian filter.

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    sigma : float, optional
        Amplitude of edges in intensity units: differences below ``sigma``
        are details, above are edges (``locallapfilt``'s ``sigma``).  0.4 as
        in MATLAB's local-contrast example.
    alpha : float, optional
        Detail exponent: ``< 1`` enhances detail, ``> 1`` smooths.  0.5 as in
        the same example (Kosugi's values are not published).
    beta : float, optional
        Dynamic-range factor for edges: ``< 1`` compresses the tonal range;
        1 leaves it unchanged (``locallapfilt``'s default).
    intensity_levels : int, optional
        Number of reference levels of the fast algorithm (at least 2); 16
        keeps the sampling step (1/15) well below ``sigma``.

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    Colour: luminance mode, as ``locallapfilt``'s default and Aubry's code:
    the BT.601 luma is filtered and the RGB channels are multiplied by the
    ratio of filtered to original luma.

    References
    ----------
    S. Paris, S. W. Hasinoff, J. Kautz, "Local Laplacian Filters: Edge-aware
    Image Processing with a Laplacian Pyramid", ACM Trans. Graph. 30(4), 2011.
    M. Aubry, S. Paris, S. W. Hasinoff, J. Kautz, F. Durand, "Fast Local
    Laplacian Filters: Theory and Applications", ACM Trans. Graph. 33(5),
    2014.
    """
    image = check_rgb_image(image)
    if intensity_levels < 2:
        raise ValueError(f"intensity_levels must be at least 2, got {intensity_levels}")
    intensity = luma(image, REC601_WEIGHTS)
    filtered = local_laplacian(intensity, sigma=sigma, alpha=alpha, beta=beta,
                               intensity_levels=intensity_levels)
    return finish_rgb(replace_luma(image, filtered, REC601_WEIGHTS))

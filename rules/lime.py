"""LIME: low-light image enhancement via illumination map estimation.

Guo, Li & Ling, "LIME: Low-Light Image Enhancement via Illumination Map
Estimation", IEEE TIP 26(2), 2017.  One of the ten conventional pseudo-users
of Kosugi & Yamasaki (IEEE TCSVT 2023).

The initial illumination is the HSV value ``t_hat = max_c L_c``.  It is
refined with the paper's "sped-up solver" and weighting strategy III by one
sparse linear solve,

    (I + lam * sum_d D_d^T diag(w_d) D_d) t = t_hat,

then gamma-corrected, and every channel is divided by it.
"""

import cv2
import numpy as np

from rules._color import check_rgb_image, finish_rgb, hsv_value
from rules._sparse import forward_differences, solve_weighted

#: Relative residual at which the illumination solve stops; the output then
#: differs from that of a direct solve by a PSNR above 90 dB (benchmark).
SOLVER_RTOL = 1e-3


#: Forms of the strategy-III weights (see :func:`lime_weights`).
WEIGHTINGS = ("bounded", "paper")


def lime_weights(t_hat, *, sigma=2.0, eps=1e-3, weighting="bounded"):
    """Edge-aware smoothness weights of LIME's sped-up solver (strategy III).

    The paper (Guo et al., Eq. 21-23) writes ``w_d = W_d / (|D_d t_hat| + eps)``
    with ``W_d = sum_y G_sigma / (|sum_y G_sigma D_d t_hat| + eps)``, which for
    a normalised Gaussian is ``1 / ((|G_sigma * D_d t_hat| + eps) (|D_d t_hat| +
    eps))`` (``weighting="paper"``), bounded by ``1 / eps**2``. The default
    ``"bounded"`` adds ``eps`` once, to the product:
    ``1 / (|G_sigma * D_d t_hat| |D_d t_hat| + eps)``, bounded by ``1 / eps``;
    the two agree where the gradients are large and the bounded form keeps
    the system better conditioned in flat regions. ``D_d`` are the
    horizontal and vertical forward differences; the Gaussian is normalised
    and truncated at ``3 sigma``.

    Parameters
    ----------
    t_hat : numpy.ndarray
        Initial illumination in ``[0, 1]``, shape ``(H, W)``.
    sigma : float, optional
        Standard deviation of the Gaussian, in pixels.
    eps : float, optional
        Positive regulariser.
    weighting : str, optional
        ``"bounded"`` or ``"paper"`` (:data:`WEIGHTINGS`).

    Returns
    -------
    wx, wy : numpy.ndarray
        float64 weights in ``(0, 1/eps]`` (``"paper"``: ``(0, 1/eps**2]``);
        the last column of ``wx`` and last row of ``wy`` are 0 (no edge there).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"LIME weighting {weighting!r}: choose {' or '.join(WEIGHTINGS)}")
    gx, gy = forward_differences(np.asarray(t_hat, dtype=np.float64))
    size = 2 * int(np.ceil(3.0 * sigma)) + 1
    weights = []
    for grad in (gx, gy):
        smoothed = cv2.GaussianBlur(grad, (size, size), sigma, borderType=cv2.BORDER_REFLECT)
        if weighting == "paper":
            weights.append(1.0 / ((np.abs(smoothed) + eps) * (np.abs(grad) + eps)))
        else:
            weights.append(1.0 / (np.abs(smoothed) * np.abs(grad) + eps))
    wx, wy = weights
    wx[:, -1] = 0.0
    wy[-1, :] = 0.0
    return wx, wy


def lime_illumination(image, *, lam=0.15, sigma=2.0, eps=1e-3, weighting="bounded"):
    """Refined illumination map ``t`` of LIME, before gamma correction.

    Solves ``(I + lam * sum_d D_d^T diag(w_d) D_d) t = t_hat`` with
    ``t_hat = max_c image_c`` and ``w_d`` from :func:`lime_weights`, by
    conjugate gradients preconditioned with an exact DCT solve.

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    lam : float, optional
        Smoothness weight ``lambda``.
    sigma : float, optional
        Gaussian standard deviation of strategy III, in pixels.
    eps : float, optional
        Regulariser of the weights.
    weighting : str, optional
        Form of the weights, ``"bounded"`` or ``"paper"`` (:func:`lime_weights`).

    Returns
    -------
    numpy.ndarray
        float64 illumination, shape ``(H, W)``, in ``[0, 1]`` up to solver
        tolerance (the system matrix is an M-matrix with unit row sums, so the
        exact solution is a convex combination of ``t_hat``).
    """
    image = check_rgb_image(image)
    t_hat = hsv_value(image)
    wx, wy = lime_weights(t_hat, sigma=sigma, eps=eps, weighting=weighting)
    return solve_weighted(1.0, lam * wx, lam * wy, t_hat, x0=t_hat, rtol=SOLVER_RTOL)


def lime(image, *, gamma=0.7, lam=0.15, sigma=2.0, eps=1e-3, weighting="bounded"):
    """Enhance a low-light image with LIME (Guo et al., TIP 2017).

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    gamma : float, optional
        Gamma applied to the refined illumination, ``T <- T**gamma``.  0.7 is
        the value in Kosugi's own script for the official LIME demo
        (satoshi-kosugi/crowd-powered ``LIME/enhanceAll.m``), which most
        likely produced this pseudo-user; the BIMEF wrapper uses 0.8.
    lam : float, optional
        Smoothness weight ``lambda``; 0.15 in the official demo and in
        Kosugi's script.
    sigma : float, optional
        Standard deviation of the strategy-III Gaussian in pixels; 2 in both.
    eps : float, optional
        Small constant of the weights and of the final division; 1e-3.
    weighting : str, optional
        ``"bounded"`` (default) or the paper's own ``"paper"`` form of the
        strategy-III weights (:func:`lime_weights`).

    Returns
    -------
    numpy.ndarray
        Enhanced image ``L_c / max(T**gamma, eps)`` clipped to ``[0, 1]``,
        float32, same shape as ``image``.

    Notes
    -----
    Colour: every RGB channel is divided by the same illumination, so hue is
    kept.  The official demo optionally denoises the result with BM3D and
    recomposes it with the illumination; that step is not part of this rule.

    References
    ----------
    X. Guo, Y. Li, H. Ling, "LIME: Low-Light Image Enhancement via
    Illumination Map Estimation", IEEE Trans. Image Process. 26(2):982-993,
    2017.
    """
    illumination = lime_illumination(image, lam=lam, sigma=sigma, eps=eps, weighting=weighting)
    illumination = np.clip(illumination, 0.0, 1.0) ** gamma
    denominator = np.maximum(illumination, eps)[..., None]
    return finish_rgb(image.astype(np.float64) / denominator)

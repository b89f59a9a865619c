"""PIE: probabilistic simultaneous illumination and reflectance estimation.

Fu, Liao, Zeng, Huang, Zhang & Ding, "A Probabilistic Method for Image
Enhancement With Simultaneous Illumination and Reflectance Estimation", IEEE
TIP 24(12), 2015.  One of the ten conventional pseudo-users of Kosugi &
Yamasaki (IEEE TCSVT 2023); the parameters and the output step follow the
wrapper ``spl_xmu_probaEA_hsv.m`` of the authors' (compiled) code.

The HSV value ``S`` (0-255 scale) is decomposed as ``S ~ I * R`` by
minimising

    ||I R - S||^2 + alpha ||grad I||^2 + beta ||grad R||_1 + gamma ||I - I0||^2

with alternating updates: split Bregman for the total-variation reflectance
step and a screened Poisson step for the illumination, both solved exactly
with the DCT (Neumann boundary).
"""

import cv2
import numpy as np

from rules._color import check_rgb_image, finish_rgb, hsv_value, replace_hsv_value
from rules._sparse import (adjoint_differences, forward_differences, laplacian_eigenvalues,
                           solve_uniform)

#: Smallest illumination / reflectance used as a divisor (0-255 and 0-1 scales).
_ILLUMINATION_FLOOR = 1e-3
_REFLECTANCE_FLOOR = 1.0 / 255.0


def shrink(x, threshold):
    """Soft thresholding ``sign(x) * max(|x| - threshold, 0)``."""
    return np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0)


def pie_decompose(value, *, alpha=1000.0, beta=0.01, gamma=0.1, lam=10.0, stop=0.1,
                  max_iterations=50, prior_size=5):
    """Illumination ``I`` (0-255) and reflectance ``R`` (0-1) of Fu et al. 2015.

    Iteration, from ``R = 0``, ``b = d = 0`` and ``I = I0``:

    1. ``d = shrink(grad R + b, 1 / (2 lam))``;
    2. ``(1 + beta lam D^T D) R = S / I + beta lam D^T (d - b)``, then clip
       ``R`` to ``[0, 1]``;
    3. ``b <- b + grad R - d``;
    4. ``((1 + gamma) + alpha D^T D) I = gamma I0 + S / R``, then
       ``I <- max(I, S)``;

    until the relative change of ``sum R`` and of ``sum I`` are both at most
    ``stop``.

    Parameters
    ----------
    value : numpy.ndarray
        HSV value on the 0-255 scale, float64, shape ``(H, W)``.
    alpha, beta, gamma, lam, stop, max_iterations, prior_size
        As in :func:`pie`.

    Returns
    -------
    illumination, reflectance : numpy.ndarray
        float64, shape ``(H, W)``; ``illumination >= value``.
    """
    eigenvalues = laplacian_eigenvalues(value.shape)
    prior = cv2.blur(value, (prior_size, prior_size), borderType=cv2.BORDER_REFLECT)
    illumination = prior.copy()
    reflectance = np.zeros_like(value)
    bregman_x = np.zeros_like(value)
    bregman_y = np.zeros_like(value)
    for _ in range(max_iterations):
        previous_r, previous_i = reflectance.sum(), illumination.sum()
        gx, gy = forward_differences(reflectance)
        dx = shrink(gx + bregman_x, 1.0 / (2.0 * lam))
        dy = shrink(gy + bregman_y, 1.0 / (2.0 * lam))
        rhs = value / np.maximum(illumination, _ILLUMINATION_FLOOR) \
            + beta * lam * adjoint_differences(dx - bregman_x, dy - bregman_y)
        reflectance = np.clip(solve_uniform(rhs, 1.0, beta * lam, eigenvalues), 0.0, 1.0)
        gx, gy = forward_differences(reflectance)
        bregman_x += gx - dx
        bregman_y += gy - dy
        rhs = gamma * prior + value / np.maximum(reflectance, _REFLECTANCE_FLOOR)
        illumination = np.maximum(solve_uniform(rhs, 1.0 + gamma, alpha, eigenvalues), value)
        if _relative_change(reflectance.sum(), previous_r) <= stop \
                and _relative_change(illumination.sum(), previous_i) <= stop:
            break
    return illumination, reflectance


def _relative_change(current, previous):
    """``|current - previous| / previous``, infinite when ``previous`` is 0 and they differ."""
    if previous == 0:
        return 0.0 if current == 0 else np.inf
    return abs(current - previous) / abs(previous)


def pie(image, *, alpha=1000.0, beta=0.01, gamma=0.1, lam=10.0, stop=0.1, max_iterations=50,
        prior_size=5, output_gamma=2.2):
    """Enhance an image with Fu et al.'s probabilistic illumination/reflectance estimation.

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    alpha : float, optional
        Weight of the illumination smoothness ``||grad I||^2``; 1000.
    beta : float, optional
        Weight of the reflectance total variation ``||grad R||_1``; 0.01.
    gamma : float, optional
        Weight of the illumination prior ``||I - I0||^2``; 0.1.
    lam : float, optional
        Split-Bregman penalty; the shrinkage threshold is ``1 / (2 lam)``; 10.
    stop : float, optional
        Relative change of the sums of ``R`` and ``I`` that ends the
        iterations; 0.1.
    max_iterations : int, optional
        Safety cap on the iterations; 50 (convergence takes a handful).
    prior_size : int, optional
        Side of the box mean of ``S`` used as the illumination prior ``I0``
        and as the starting illumination; 5.
    output_gamma : float, optional
        Output ``V' = R * 255 * (I / 255)**(1 / output_gamma)``; 2.2.

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    ``alpha``, ``beta``, ``gamma``, ``lam``, ``stop`` and the output step are
    the values of the wrapper around the authors' compiled code.  The prior
    ``I0`` is not documented there; a local mean of ``S`` is a documented
    choice (as in public re-implementations).  The Fourier solves of the
    original are replaced by DCT solves (reflective boundary instead of
    periodic, so opposite borders do not bleed into each other).  Colour: the
    method works on the HSV value; hue and saturation are kept.

    References
    ----------
    X. Fu, Y. Liao, D. Zeng, Y. Huang, X.-P. Zhang, X. Ding, "A Probabilistic
    Method for Image Enhancement With Simultaneous Illumination and
    Reflectance Estimation", IEEE Trans. Image Process. 24(12):4965-4977,
    2015.
    """
    image = check_rgb_image(image)
    value = hsv_value(image) * 255.0
    illumination, reflectance = pie_decompose(
        value, alpha=alpha, beta=beta, gamma=gamma, lam=lam, stop=stop,
        max_iterations=max_iterations, prior_size=prior_size)
    adjusted = reflectance * (illumination / 255.0) ** (1.0 / output_gamma)
    return finish_rgb(replace_hsv_value(image, adjusted))

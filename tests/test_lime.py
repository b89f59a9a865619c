"""LIME's strategy-III weights: the default bounded form and the paper's own form."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from rules.lime import lime, lime_weights


def _t_hat() -> np.ndarray:
    return data.coffee()[::8, ::8].max(axis=2).astype(np.float64) / 255.0


def test_paper_weights_follow_guo_et_al_equations_21_to_23():
    t_hat, eps, sigma = _t_hat(), 1e-3, 2.0
    wx, _ = lime_weights(t_hat, sigma=sigma, eps=eps, weighting="paper")
    grad = np.zeros_like(t_hat)
    grad[:, :-1] = t_hat[:, 1:] - t_hat[:, :-1]
    size = 2 * int(np.ceil(3 * sigma)) + 1
    smoothed = cv2.GaussianBlur(grad, (size, size), sigma, borderType=cv2.BORDER_REFLECT)
    expected = 1.0 / ((np.abs(smoothed) + eps) * (np.abs(grad) + eps))
    np.testing.assert_allclose(wx[:, :-1], expected[:, :-1], rtol=1e-12)
    assert wx.max() <= 1 / eps**2


def test_the_two_forms_agree_on_edges_and_differ_in_flat_regions():
    t_hat, eps = _t_hat(), 1e-3
    bounded, _ = lime_weights(t_hat, eps=eps)
    paper, _ = lime_weights(t_hat, eps=eps, weighting="paper")
    assert bounded.max() <= 1 / eps
    edges = bounded[:, :-1] < 20  # strong gradients
    assert edges.any()
    np.testing.assert_allclose(paper[:, :-1][edges], bounded[:, :-1][edges], rtol=0.3)
    assert paper.max() > 10 * bounded.max()


def test_lime_takes_either_weighting():
    image = data.coffee()[::8, ::8].astype(np.float32) / 255.0 * 0.4
    bounded, paper = lime(image), lime(image, weighting="paper")
    assert paper.dtype == np.float32 and paper.min() >= 0.0 and paper.max() <= 1.0
    assert paper.mean() > image.mean() and not np.allclose(paper, bounded, atol=1e-3)
    with pytest.raises(ValueError, match="weighting 'fast'"):
        lime(image, weighting="fast")

"""The paper's image-quality metrics: PSNR, SSIM and CIE L*a*b* ΔE.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. IV-A, as the reference ``test.py`` computes
them: both images are resized to 512 x 512 RGB in [0, 1]; PSNR on those; SSIM
(``pytorch_msssim``, Gaussian window 11, σ 1.5) after average pooling by
``max(1, round(short side / 256))`` so the short side is about 256 px; ΔE the
mean over pixels of the Euclidean distance in CIE L*a*b* (D65, sRGB input, by
``skimage.color.rgb2lab``). Every function takes (B, 3, H, W) float tensors in
[0, 1] (the output is clamped to [0, 1] first) and returns one value per
image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _ssim
from skimage.color import rgb2lab

from .losses import psnr

__all__ = ["METRICS", "SSIM_SIDE", "delta_e", "psnr", "ssim", "score"]

#: Metric names, each with ``True`` when higher is better.
METRICS = {"psnr": True, "ssim": True, "delta_e": False}

#: Short side (pixels) SSIM is computed at, after average pooling.
SSIM_SIDE = 256


def ssim(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM in [-1, 1] (1 = identical) after pooling to about :data:`SSIM_SIDE` px."""
    factor = max(1, round(min(output.shape[-2:]) / SSIM_SIDE))
    output, target = output.float().clamp(0.0, 1.0), target.float()
    if factor > 1:
        output, target = F.avg_pool2d(output, factor), F.avg_pool2d(target, factor)
    return _ssim(output, target, data_range=1.0, size_average=False)


def delta_e(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean CIE76 ΔE: Euclidean distance in L*a*b* (L* in [0, 100]) averaged over pixels."""
    def lab(images: torch.Tensor) -> np.ndarray:
        return rgb2lab(images.detach().float().clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy())

    distance = np.sqrt(((lab(output) - lab(target)) ** 2).sum(-1)).reshape(output.shape[0], -1).mean(1)
    return torch.from_numpy(distance).float()


def score(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of :data:`METRICS` per image, as CPU float tensors (B,)."""
    return {"psnr": psnr(output, target).cpu(), "ssim": ssim(output, target).cpu(),
            "delta_e": delta_e(output, target)}

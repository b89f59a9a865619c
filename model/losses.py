"""Losses and image metrics of masked style modeling training.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III: step 1 trains the style embedding and
the stylized enhancer with

    L = L1(x + delta, y) + 0.4 * perceptual + 0.01 * TV(delta; x)

and step 2 the content embedding, masked token and transformer with an L1
loss in PCA coordinates of the style space (:mod:`model.pca`). Images here
are ImageNet-normalised (B, 3, H, W) tensors, as the networks see them
(:func:`model.networks.normalize`); ``delta`` is the enhancer's residual in
that space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Weights of the perceptual and edge-aware TV terms (reference ``LossPienet``).
PERCEPTUAL_WEIGHT = 0.4
TV_WEIGHT = 0.01

#: Side at which the perceptual embedding sees output and target (pixels).
PERCEPTUAL_SIZE = 256


def edge_aware_tv(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Total variation of ``delta`` weighted by ``exp(-|gradient of x|)``.

    The mean absolute vertical plus the mean absolute horizontal difference
    of ``delta``, each difference weighted by ``exp(-|same difference of
    x|)``: the residual may change across the input's edges but should be
    smooth inside flat regions.
    """
    weight_y = torch.exp(-(x[:, :, 1:, :] - x[:, :, :-1, :]).abs())
    weight_x = torch.exp(-(x[:, :, :, 1:] - x[:, :, :, :-1]).abs())
    tv_y = ((delta[:, :, 1:, :] - delta[:, :, :-1, :]) * weight_y).abs().mean()
    tv_x = ((delta[:, :, :, 1:] - delta[:, :, :, :-1]) * weight_x).abs().mean()
    return tv_y + tv_x


class PerceptualLoss(nn.Module):
    """L1 between L2-normalised embeddings of the output and the target at 256 x 256.

    ``embedding`` is a frozen network mapping (B, 3, 256, 256) normalised
    images to L2-normalised vectors (:class:`model.reference.PerceptualEmbedding`,
    the reference's PieNet embedding). As in the reference ``LossPienet``, the
    output is embedded in train mode (batch statistics, and the embedding's
    BatchNorm running statistics move) and the target in eval mode.
    """

    def __init__(self, embedding: nn.Module):
        super().__init__()
        self.embedding = embedding.requires_grad_(False)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = (PERCEPTUAL_SIZE, PERCEPTUAL_SIZE)
        self.embedding.train()
        output_embedding = self.embedding(F.interpolate(output, size=size, mode="bilinear", align_corners=False))
        self.embedding.eval()
        with torch.no_grad():
            target_embedding = self.embedding(F.interpolate(target, size=size, mode="bilinear", align_corners=False))
        return F.l1_loss(output_embedding, target_embedding)


def step1_loss(x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, perceptual: PerceptualLoss | None = None,
               *, perceptual_weight: float = PERCEPTUAL_WEIGHT, tv_weight: float = TV_WEIGHT
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The step-1 loss and its terms.

    Parameters
    ----------
    x, y : torch.Tensor
        Normalised input and target, (B, 3, H, W).
    delta : torch.Tensor
        The enhancer's residual, same shape; the output is ``x + delta``.
    perceptual : PerceptualLoss, optional
        Without it the perceptual term is left out (no pretrained embedding).

    Returns
    -------
    loss : torch.Tensor
        Scalar, ``l1 + perceptual_weight * perceptual + tv_weight * tv``.
    terms : dict
        ``l1``, ``perceptual`` (0 when off) and ``tv`` as floats.
    """
    output = x + delta
    l1 = F.l1_loss(output, y)
    tv = edge_aware_tv(x, delta)
    loss = l1 + tv_weight * tv
    perceptual_value = torch.zeros((), device=x.device)
    if perceptual is not None:
        perceptual_value = perceptual(output, y)
        loss = loss + perceptual_weight * perceptual_value
    return loss, {"l1": l1.item(), "perceptual": perceptual_value.item(), "tv": tv.item()}


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [0, 1] (output clamped to [0, 1] first)."""
    error = (output.float().clamp(0.0, 1.0) - target.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / error.clamp_min(1e-12))

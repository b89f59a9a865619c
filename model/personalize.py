"""A user's preferred pairs applied to new photographs at their own resolution.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III-C: the enhancer runs at the model's
image side S (512 px in the paper; :func:`model.inference.enhance`). A photo
of several megapixels is enhanced at S and the change is carried back to the
photo's own size by one of :data:`FULL_RESOLUTION` methods:

* ``residual``: the residual ``enhanced - resize(x)`` upsampled bilinearly
  and added to the full-size input (cheapest; the residual's own detail is
  lost, the input's detail is kept);
* ``guided``: a per-pixel local affine colour transform ``y = A(p) x + b(p)``
  (3x3 ``A`` and 3 ``b`` per pixel) fitted at S between ``resize(x)`` and the
  enhanced image with box filters, as He et al.'s colour guided filter, then
  ``A`` and ``b`` upsampled bilinearly and applied to the full-size input
  (the fast guided filter);
* ``network``: the enhancer itself run on the full-size photo, padded by
  reflection to a multiple of 32 and cropped back (the most faithful, and by
  far the most expensive: about 24x the multiply-adds of ``residual`` at 12
  MP for the small networks, and memory that grows with the photo).

Every output is clamped to [0, 1]. Measured against ``network`` at the
photo's size on the bundled sample photographs with the small networks
trained briefly (``python tests/bench/bench_enhance.py``), ``guided`` is
closer than ``residual`` for a modest extra cost, so it is the default of
:class:`Personalizer`; the figures are in the README's ``pie enhance``
section.

References
----------
K. He, J. Sun, X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6), 2013.
K. He, J. Sun, "Fast Guided Filter", arXiv:1505.00996, 2015.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inference import METHODS, PreferredSet, as_unit, encode_preferred, enhance, load, predict_styles, resize
from .networks import MSM, denormalize, normalize
from .pca import StylePCA

#: Ways of carrying the model-size enhancement to the photo's own size.
FULL_RESOLUTION = ("residual", "guided", "network")

#: The default of :class:`Personalizer` and ``pie enhance``, chosen by PSNR against
#: ``network`` (``python tests/bench/bench_enhance.py``; figures in the README).
DEFAULT_FULL_RESOLUTION = "guided"

#: Guided filter window radius at a 512-px model side, pixels (scaled with the side).
#: A quarter of the side: on the bundled sample photographs (the small networks
#: at 128 px trained 150 steps) radii of 1/32, 1/16, 1/8 and 1/4 of the side gave
#: 30.4, 30.8, 31.2 and 31.8 dB PSNR against ``network`` (``residual``: 29.7 dB).
GUIDED_RADIUS = 128

#: Guided filter regulariser on the local colour covariance ([0, 1] RGB units squared);
#: 1e-4, 1e-5 and 1e-6 differed by under 0.1 dB, 1e-5 the best.
GUIDED_EPS = 1e-5


def _check(full: torch.Tensor, small: torch.Tensor, enhanced: torch.Tensor) -> None:
    if full.ndim != 4 or full.shape[1] != 3:
        raise ValueError(f"full-size images must be (B, 3, H, W), got {tuple(full.shape)}")
    if small.shape != enhanced.shape or small.shape[:2] != full.shape[:2]:
        raise ValueError(f"resized input {tuple(small.shape)} and enhanced {tuple(enhanced.shape)} do not match "
                         f"the full-size images {tuple(full.shape)}")


def _upsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def residual(full: torch.Tensor, small: torch.Tensor, enhanced: torch.Tensor) -> torch.Tensor:
    """``full + upsample(enhanced - small)``, clamped.

    Parameters
    ----------
    full : torch.Tensor
        (B, 3, H, W) [0, 1] float input at its own size.
    small : torch.Tensor
        (B, 3, S, S) the input as the enhancer saw it (:func:`model.inference.resize`).
    enhanced : torch.Tensor
        (B, 3, S, S) the enhancer's output for ``small`` (unclamped).

    Returns
    -------
    torch.Tensor
        (B, 3, H, W) float in [0, 1].
    """
    _check(full, small, enhanced)
    return (full + _upsample(enhanced - small, full.shape[-2:])).clamp_(0.0, 1.0)


def _window_sums(images: torch.Tensor, radius: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over ``i - radius .. i + radius`` along ``dim`` (cut at the border) by a cumulative sum, and their counts."""
    length = images.shape[dim]
    zero = torch.zeros_like(images.narrow(dim, 0, 1))
    totals = torch.cat([zero, images.cumsum(dim)], dim)
    index = torch.arange(length, device=images.device)
    high, low = (index + radius + 1).clamp(max=length), (index - radius).clamp(min=0)
    return totals.index_select(dim, high) - totals.index_select(dim, low), (high - low).to(images.dtype)


def _box(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r + 1)^2 window around each pixel, windows cut at the border (He et al.'s N).

    Two cumulative sums, so the cost does not grow with ``radius``.
    """
    rows, row_counts = _window_sums(images, radius, -2)
    sums, column_counts = _window_sums(rows, radius, -1)
    return sums / (row_counts[:, None] * column_counts[None, :])


def guided_coefficients(small: torch.Tensor, enhanced: torch.Tensor, *, radius: int = GUIDED_RADIUS,
                        eps: float = GUIDED_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel affine colour transform ``enhanced ≈ A small + b``, window-averaged (colour guided filter).

    Parameters
    ----------
    small, enhanced : torch.Tensor
        (B, 3, h, w) guide (the resized input) and target (the enhancer's output).
    radius : int
        Box window radius, pixels at this size.
    eps : float
        Added to the diagonal of each window's colour covariance.

    Returns
    -------
    A : torch.Tensor
        (B, 3, 3, h, w): ``A[:, j, i]`` weighs input channel i in output channel j.
    b : torch.Tensor
        (B, 3, h, w) offsets.

    Notes
    -----
    For each window, ``a_j = (Σ + eps U)^-1 cov(I, p_j)`` and
    ``b_j = mean(p_j) - a_j · mean(I)``; then ``A`` and ``b`` are averaged
    over the windows covering each pixel (He et al., Alg. 2, in 3x3 form),
    solved for all pixels at once with ``torch.linalg.solve``.
    """
    guide, target = small.float(), enhanced.float()
    batch, _, height, width = guide.shape
    mean_i, mean_p = _box(guide, radius), _box(target, radius)
    # Second moments: I_i I_k for the covariance, I_i p_j for the cross terms.
    corr_ii = _box((guide[:, :, None] * guide[:, None]).flatten(1, 2), radius).view(batch, 3, 3, height, width)
    corr_ip = _box((guide[:, :, None] * target[:, None]).flatten(1, 2), radius).view(batch, 3, 3, height, width)
    sigma = corr_ii - mean_i[:, :, None] * mean_i[:, None]  # [i, k]
    cross = corr_ip - mean_i[:, :, None] * mean_p[:, None]  # [i, j]
    sigma = sigma.permute(0, 3, 4, 1, 2) + eps * torch.eye(3, device=guide.device, dtype=guide.dtype)
    solved = torch.linalg.solve(sigma, cross.permute(0, 3, 4, 1, 2))  # (B, h, w, 3 [i], 3 [j])
    a = solved.permute(0, 4, 3, 1, 2)  # (B, 3 [j], 3 [i], h, w)
    b = mean_p - (a * mean_i[:, None]).sum(2)
    a = _box(a.flatten(1, 2), radius).view(batch, 3, 3, height, width)
    return a, _box(b, radius)


def guided(full: torch.Tensor, small: torch.Tensor, enhanced: torch.Tensor, *, radius: int | None = None,
           eps: float = GUIDED_EPS) -> torch.Tensor:
    """The enhancement as a local affine colour transform fitted at the model size, applied at full size.

    Parameters
    ----------
    full, small, enhanced : torch.Tensor
        As :func:`residual`.
    radius : int, optional
        Window radius at the model size; default :data:`GUIDED_RADIUS` scaled
        by ``S / 512`` (at least 1).
    eps : float
        Regulariser, :data:`GUIDED_EPS`.

    Returns
    -------
    torch.Tensor
        (B, 3, H, W) float in [0, 1].

    Notes
    -----
    ``A`` and ``b`` are upsampled one channel at a time and accumulated, so
    the full-size memory is the input, the output and one channel. A photo
    already at the model size gets the enhancer's output itself.
    """
    _check(full, small, enhanced)
    if full.shape[-2:] == small.shape[-2:]:
        return enhanced.clamp(0.0, 1.0)
    if radius is None:
        radius = max(1, round(GUIDED_RADIUS * small.shape[-1] / 512))
    a, b = guided_coefficients(small, enhanced, radius=radius, eps=eps)
    size = full.shape[-2:]
    out = torch.empty_like(full, dtype=torch.float32)
    for j in range(3):
        channel = _upsample(b[:, j:j + 1], size)
        for i in range(3):
            channel = channel.addcmul_(_upsample(a[:, j, i:i + 1], size), full[:, i:i + 1])
        out[:, j:j + 1] = channel
    return out.clamp_(0.0, 1.0)


@torch.no_grad()
def network(model: MSM, full: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """The enhancer run on the full-size images: reflection-padded to a multiple of 32, cropped back, clamped.

    Parameters
    ----------
    model : MSM
        The trained networks (only the enhancer runs).
    full : torch.Tensor
        (B, 3, H, W) [0, 1] float images on the model's device.
    styles : torch.Tensor
        (B, 512) styles (:func:`model.inference.predict_styles`).

    Returns
    -------
    torch.Tensor
        (B, 3, H, W) float in [0, 1].
    """
    height, width = full.shape[-2:]
    pad_h, pad_w = -height % 32, -width % 32
    x = normalize(full.float())
    if pad_h or pad_w:
        # Reflection needs the pad to be shorter than the side; tiny images fall back to edge replication.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    out = denormalize(x + model.enhancer(x, styles).float())
    return out[..., :height, :width].clamp_(0.0, 1.0)


def as_image_tensor(image) -> torch.Tensor:
    """A numpy HxWx3 (uint8, uint16 or [0, 1] float) or torch (3, H, W) image as a (1, 3, H, W) [0, 1] float tensor."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be HxWx3 RGB, got shape {image.shape}")
        if image.dtype == np.uint16:
            tensor = torch.from_numpy(image.astype(np.float32) / 65535.0)
        elif image.dtype == np.uint8:
            tensor = torch.from_numpy(np.ascontiguousarray(image))
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return as_unit(tensor.permute(2, 0, 1)[None])
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be (3, H, W) RGB, got shape {tuple(image.shape)}")
        return as_unit(image[None])
    raise TypeError(f"an image must be a numpy array or a torch tensor, not {type(image).__name__}")


class Personalizer:
    """One user's enhancement: a trained model, a style method and the user's encoded preferred pairs.

    >>> personalizer = Personalizer.from_checkpoint("pie-data/msm/model.pt").fit(pairs)
    >>> enhanced = personalizer.enhance(photo)  # HxWx3 float in [0, 1], photo's size

    Parameters
    ----------
    model : MSM
        Trained networks in eval mode.
    pca : StylePCA or None
        The style PCA (needed by ``msm``).
    method : str
        Style predictor: ``msm`` (the paper's), ``mean-style`` or ``weighted-average``.
    full_resolution : str
        One of :data:`FULL_RESOLUTION`; default :data:`DEFAULT_FULL_RESOLUTION`.
    """

    def __init__(self, model: MSM, pca: StylePCA | None, *, method: str = "msm",
                 full_resolution: str = DEFAULT_FULL_RESOLUTION):
        if method not in METHODS[1:]:
            raise ValueError(f"unknown style method {method!r}; choose from {', '.join(METHODS[1:])}")
        if full_resolution not in FULL_RESOLUTION:
            raise ValueError(f"unknown full-resolution method {full_resolution!r}; "
                             f"choose from {', '.join(FULL_RESOLUTION)}")
        if method == "msm" and pca is None:
            raise ValueError("the msm method needs the style PCA; this model has none")
        self.model, self.pca = model.eval(), pca
        self.method, self.full_resolution = method, full_resolution
        self.preferred: PreferredSet | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str = "cpu", method: str = "msm",
                        full_resolution: str = DEFAULT_FULL_RESOLUTION) -> "Personalizer":
        """Load pie's ``model.pt`` or a reference-layout folder (:func:`model.inference.load`).

        ``device`` may be ``auto`` (CUDA when available). Raises ``ValueError``
        naming the file when it is unusable (for ``msm``, also when it has no PCA).
        """
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, pca = load(path, device)
        if method == "msm" and pca is None:
            raise ValueError(f"{path}: no style PCA, which the msm method needs; use mean-style or weighted-average")
        return cls(model, pca, method=method, full_resolution=full_resolution)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fit(self, pairs: Iterable[tuple]) -> "Personalizer":
        """Encode the user's preferred (original, retouched) pairs once; returns self.

        Each image is resized to the embedding side as it arrives, so a
        generator of large photos is held one pair at a time. Raises
        ``ValueError`` when there is no pair.
        """
        side = self.model.config.embed_size
        inputs, targets = [], []
        for original, retouched in pairs:
            inputs.append(resize(as_image_tensor(original).to(self.device), side))
            targets.append(resize(as_image_tensor(retouched).to(self.device), side))
        if not inputs:
            raise ValueError("fit needs at least one preferred (original, retouched) pair")
        self.preferred = encode_preferred(self.model, torch.cat(inputs), torch.cat(targets))
        return self

    def _preferred(self) -> PreferredSet:
        if self.preferred is None:
            raise ValueError("no preferred pairs yet: call fit(pairs) before enhance")
        return self.preferred

    @torch.no_grad()
    def enhance_tensors(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """(1, 3, H, W) [0, 1] tensors of any sizes -> enhanced tensors of the same sizes, on the model's device.

        The styles and the model-size enhancement run as one batch; the
        full-resolution step runs per image.
        """
        preferred = self._preferred()
        images = [image.to(self.device).float() for image in images]
        if not images:
            return []
        side = self.model.config.image_size
        small = torch.cat([resize(image, side) for image in images])
        if self.full_resolution == "network":
            styles = predict_styles(self.model, self.pca, preferred, small, self.method)
            return [network(self.model, image, styles[k:k + 1]) for k, image in enumerate(images)]
        enhanced = enhance(self.model, self.pca, preferred, small, self.method)
        carry = residual if self.full_resolution == "residual" else guided
        return [carry(image, small[k:k + 1], enhanced[k:k + 1]) for k, image in enumerate(images)]

    def enhance(self, image) -> np.ndarray:
        """One photo (numpy HxWx3 uint8/uint16/float, or torch (3, H, W)) -> HxWx3 float32 in [0, 1], same size."""
        return self.enhance_batch([image])[0]

    def enhance_batch(self, images: Sequence) -> list[np.ndarray]:
        """Several photos, of any sizes, as :meth:`enhance`, the model-size work batched."""
        out = self.enhance_tensors([as_image_tensor(image) for image in images])
        return [result[0].permute(1, 2, 0).cpu().numpy() for result in out]

"""Styles of new images from a user's preferred pairs, and the enhancement they give.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III-C: a user is given by N preferred
(original, retouched) pairs. Each pair is encoded once into a style
``s_i = E_s(x_i, y_i)`` and a content ``c_i = E_c(x_i)`` (:class:`PreferredSet`);
the style of a new image ``x`` is then predicted by one of :data:`METHODS`
and the stylized enhancer gives ``x + G(x, s)`` at the model's image size.

* ``msm``: the transformer over the preferred (style, content) tokens and
  the masked token with the content of ``x`` (the paper's method);
* ``mean-style``: the mean preferred style for every image, content-blind
  (the PieNet-style baseline of Table I);
* ``weighted-average``: ``Σ cos(c, c_i) · s_i / N``, the preferred styles
  weighted by content similarity (the ablation of Table IV, "weighted
  average" instead of the transformer);
* ``identity``: the input itself, unchanged (no model involved).

Images enter as uint8 or [0, 1] float (B, 3, H, W) RGB tensors of any size
and are resized (bilinear, not aspect-preserving, as the reference) to the
embedding side for the embeddings and to the image side for the enhancer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .networks import MSM, MSMConfig, denormalize, normalize
from .pca import StylePCA

#: Style predictors, in the order they are reported.
METHODS = ("identity", "mean-style", "weighted-average", "msm")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), bilinear (no-op when already that size)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def as_unit(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 or float (B, 3, H, W) -> float32 in [0, 1] on ``device``."""
    images = images.to(device) if device is not None else images
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@dataclass
class PreferredSet:
    """One user's preferred pairs, encoded: ``styles`` and ``contents`` (N, D) on the model's device."""

    styles: torch.Tensor
    contents: torch.Tensor

    def __len__(self) -> int:
        return self.styles.shape[0]


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[MSM, StylePCA | None]:
    """A trained model in eval mode on ``device`` and its PCA, from pie's ``model.pt`` or a reference folder.

    A folder in the reference layout records its network sizes only when pie
    wrote it (:data:`model.reference.CONFIG_FILE`); otherwise the paper
    config is tried first, then the small one. Raises ``ValueError``
    (``CheckpointError`` or ``WeightsError``) naming the file.
    """
    from .reference import WeightsError, read_reference, read_reference_config
    from .train import load_model

    path = Path(path)
    if not path.is_dir():
        model, pca, _ = load_model(path, device)
        return model, pca
    recorded = read_reference_config(path)
    first_error = None
    for config in [recorded] if recorded else [MSMConfig.paper(), MSMConfig.small()]:
        try:
            model, pca = read_reference(path, config)
        except WeightsError as error:
            first_error = first_error or error
            continue
        return model.to(device).eval(), pca
    raise first_error


def _device(model: MSM) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_preferred(model: MSM, inputs: torch.Tensor, targets: torch.Tensor, *,
                     batch_size: int = 32) -> PreferredSet:
    """Encode N preferred (original, retouched) pairs (N, 3, H, W), ``batch_size`` at a time."""
    if inputs.shape[0] == 0 or inputs.shape != targets.shape:
        raise ValueError(f"preferred pairs: need N >= 1 inputs and targets of one shape, got "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    device, embed = _device(model), model.config.embed_size
    styles, contents = [], []
    for start in range(0, inputs.shape[0], batch_size):
        x = normalize(resize(as_unit(inputs[start:start + batch_size], device), embed))
        y = normalize(resize(as_unit(targets[start:start + batch_size], device), embed))
        styles.append(model.style_embedding(x, y).float())
        contents.append(model.content_embedding(x).float())
    return PreferredSet(torch.cat(styles), torch.cat(contents))


@torch.no_grad()
def contents_of(model: MSM, images: torch.Tensor) -> torch.Tensor:
    """Content embeddings (B, D) of ``images`` (B, 3, H, W)."""
    return model.content_embedding(normalize(resize(as_unit(images, _device(model)), model.config.embed_size))).float()


@torch.no_grad()
def styles_from_contents(model: MSM, pca: StylePCA | None, preferred: PreferredSet, contents: torch.Tensor,
                         method: str = "msm") -> torch.Tensor:
    """Styles (B, D) for images of content embeddings ``contents`` (B, D), by ``method``.

    ``method`` is one of ``mean-style``, ``weighted-average`` or ``msm`` (see
    the module docstring); ``msm`` needs the style PCA of step 2.
    """
    batch = contents.shape[0]
    if method == "mean-style":
        return preferred.styles.mean(0, keepdim=True).expand(batch, -1)
    if method == "weighted-average":
        weights = F.cosine_similarity(contents[:, None], preferred.contents[None], dim=-1)  # (B, N)
        return weights @ preferred.styles / len(preferred)
    if method != "msm":
        raise ValueError(f"unknown style method {method!r}; choose from {', '.join(METHODS[1:])}")
    if pca is None:
        raise ValueError("the msm method needs the style PCA of step 2; this model has none")
    tokens = torch.cat([preferred.styles.expand(batch, -1, -1), model.masked_token(batch)[:, None]], 1)
    all_contents = torch.cat([preferred.contents.expand(batch, -1, -1), contents[:, None]], 1)
    return pca.to_style(model.transformer(tokens, all_contents).float())


@torch.no_grad()
def predict_styles(model: MSM, pca: StylePCA | None, preferred: PreferredSet, images: torch.Tensor,
                   method: str = "msm") -> torch.Tensor:
    """Styles (B, D) of ``images`` (B, 3, H, W) for one of ``mean-style``, ``weighted-average``, ``msm``."""
    # mean-style is content-blind: only the batch size of its contents is read
    contents = torch.empty(images.shape[0], 0) if method == "mean-style" else contents_of(model, images)
    return styles_from_contents(model, pca, preferred, contents, method)


@torch.no_grad()
def enhance_with_styles(model: MSM, images: torch.Tensor, styles: torch.Tensor | list[torch.Tensor]):
    """``x + G(x, s)`` as [0, 1] float (B, 3, S, S) at the model's image side S, unclamped.

    ``styles`` may be a list of (B, D) styles: the enhancer's encoder then
    runs once and a list of results comes back, one per style.
    """
    x_norm = normalize(resize(as_unit(images, _device(model)), model.config.image_size))
    features = model.enhancer.encode(x_norm)
    results = [denormalize(x_norm + model.enhancer.decode(features, s, x_norm.shape[-2:]).float())
               for s in (styles if isinstance(styles, list) else [styles])]
    return results if isinstance(styles, list) else results[0]


@torch.no_grad()
def enhance(model: MSM, pca: StylePCA | None, preferred: PreferredSet, images: torch.Tensor,
            method: str = "msm") -> torch.Tensor:
    """Enhanced ``images`` (B, 3, H, W) as [0, 1] float (B, 3, S, S) at the model's image side S, unclamped.

    ``identity`` returns the resized input. The result minus the resized
    input is the enhancer's residual in [0, 1] RGB units, which
    :mod:`model.personalize` carries to full resolution.
    """
    if method == "identity":
        return resize(as_unit(images, _device(model)), model.config.image_size)
    return enhance_with_styles(model, images, predict_styles(model, pca, preferred, images, method))

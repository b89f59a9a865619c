"""PCA of the style space, fitted between the two training steps.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III: the transformer predicts a style in
PCA coordinates of the style embeddings of the training pairs, each
coordinate divided by its standard deviation (whitened), so that every
principal direction weighs the same in the L1 loss. With unit principal
directions ``components`` (K, D), their standard deviations ``std`` (K,) and
the mean style ``mean`` (D,):

* training target: ``project(s) = (s - mean) @ components.T``;
* loss: ``L1(prediction * std, project(s))``;
* inference: ``to_style(prediction) = (prediction * std) @ components + mean``.

The fit is exact and streaming: sums and the scatter matrix of the
embeddings are accumulated in float64 (and can be summed across DDP ranks),
then the covariance (divided by n - 1, as scikit-learn) is diagonalised with
``torch.linalg.eigh``. This equals scikit-learn's ``PCA(n_components=K)``
(components, explained variance, mean) up to floating-point rounding, with
the same sign convention (the largest-magnitude entry of each component is
positive). With fewer samples than dimensions the trailing directions have
zero variance and contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StylePCA:
    """A fitted style PCA.

    Attributes
    ----------
    mean : torch.Tensor
        (D,) mean style.
    components : torch.Tensor
        (K, D) orthonormal principal directions, largest variance first.
    std : torch.Tensor
        (K,) standard deviation of the styles along each direction (>= 0).
    samples : int
        Number of styles the PCA was fitted on.
    """

    mean: torch.Tensor
    components: torch.Tensor
    std: torch.Tensor
    samples: int = 0

    def project(self, styles: torch.Tensor) -> torch.Tensor:
        """(B, D) styles -> (B, K) PCA coordinates (not yet divided by ``std``)."""
        return (styles - self.mean.to(styles)) @ self.components.to(styles).T

    def to_style(self, whitened: torch.Tensor) -> torch.Tensor:
        """(B, K) whitened coordinates (a transformer prediction) -> (B, D) styles."""
        return (whitened * self.std.to(whitened)) @ self.components.to(whitened) + self.mean.to(whitened)

    def loss(self, whitened: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """Step-2 loss: L1 between ``whitened * std`` and the projection of the true ``styles``."""
        return torch.nn.functional.l1_loss(whitened * self.std.to(whitened), self.project(styles.float()))

    def state_dict(self) -> dict:
        return {"mean": self.mean.float().cpu(), "components": self.components.float().cpu(),
                "std": self.std.float().cpu(), "samples": int(self.samples)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StylePCA":
        mean, components, std = state["mean"], state["components"], state["std"]
        if mean.ndim != 1 or components.ndim != 2 or std.shape != components.shape[:1] \
                or components.shape[1] != mean.shape[0]:
            raise ValueError(f"inconsistent PCA shapes: mean {tuple(mean.shape)}, components "
                             f"{tuple(components.shape)}, std {tuple(std.shape)}")
        return cls(mean.float(), components.float(), std.float(), int(state.get("samples", 0)))


class CovarianceAccumulator:
    """Streaming sums for an exact PCA of (B, D) batches of styles."""

    def __init__(self, dim: int):
        self.count = torch.zeros((), dtype=torch.float64)
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, styles: torch.Tensor) -> None:
        batch = styles.detach().to("cpu", torch.float64)
        self.count += batch.shape[0]
        self.total += batch.sum(0)
        self.scatter += batch.T @ batch

    def tensors(self) -> list[torch.Tensor]:
        """The three running sums, e.g. to ``all_reduce`` across ranks in place."""
        return [self.count, self.total, self.scatter]

    def fit(self, components: int | None = None) -> StylePCA:
        """The PCA of everything accumulated, with ``components`` directions (default D).

        Raises
        ------
        ValueError
            Fewer than two styles, or more components than dimensions.
        """
        n = int(self.count.item())
        dim = self.total.shape[0]
        k = dim if components is None else int(components)
        if n < 2:
            raise ValueError(f"PCA needs at least 2 style embeddings, got {n}")
        if not 1 <= k <= dim:
            raise ValueError(f"PCA components must be 1..{dim}, got {k}")
        mean = self.total / n
        covariance = (self.scatter - n * torch.outer(mean, mean)) / (n - 1)
        covariance = (covariance + covariance.T) / 2
        variance, vectors = torch.linalg.eigh(covariance)  # ascending
        variance, vectors = variance.flip(0)[:k], vectors.flip(1)[:, :k].T
        largest = vectors.abs().argmax(1)
        signs = torch.sign(vectors[torch.arange(k), largest])
        vectors = vectors * torch.where(signs == 0, 1.0, signs)[:, None]
        return StylePCA(mean.float(), vectors.float(), variance.clamp_min(0).sqrt().float(), n)

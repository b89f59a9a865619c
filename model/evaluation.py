"""The paper's evaluation protocol, with its baselines on the same draws.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. IV-A and Table I, as the reference
``test.py`` runs it: for every test user and every N of ``num_preferred``
(20, 50, 100), ``draws`` (10) preferred sets of N pairs are drawn from the
user's preferred pool; each set is encoded once and every unseen image of the
user is enhanced from it by each method of :data:`model.inference.METHODS`
and scored at ``size`` x ``size`` (512) by :mod:`model.metrics`. A user's
score for one draw is the mean over its unseen images; the reported figure
is the mean ± standard deviation over the draws of the mean over users.

Draws are, as in the reference, consecutive disjoint blocks of the pool
(draw i = pool items i·N .. i·N + N - 1), continued cyclically from the
start when the pool holds fewer than N · draws pairs (the reference instead
replaces that user's list by random choices), or seeded random samples
without replacement (``mode="random"``). A user with fewer than N pool pairs
is left out at that N.

Images are held as uint8 at ``size`` (the unseen pairs) and at the model's
embedding side (the preferred pairs). When the model's image side is not
``size``, its residual is carried to ``size`` by bilinear upsampling
(:func:`model.personalize.residual`, as for full-resolution photos).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from . import inference
from .metrics import METRICS, score
from .networks import MSM
from .pca import StylePCA
from .personalize import residual

#: The paper's preferred-set sizes and draws per size.
NUM_PREFERRED = (20, 50, 100)
DRAWS = 10
#: Side (pixels) of the square images PSNR and ΔE are computed at.
EVAL_SIZE = 512
DRAW_MODES = ("consecutive", "random")


@dataclass
class TestUser:
    """One test user: its pairs, loadable by index, and which are preferred pool and which unseen.

    ``load(indices, side)`` returns (inputs, targets) uint8 (n, 3, side,
    side) as :func:`held` makes them from the images at the evaluation side;
    ``pool`` are the indices preferred sets are drawn from; ``unseen`` the
    fixed indices scored, or None for every index not in the draw.
    """

    __test__ = False  # not a pytest test class

    user: str
    keys: list[str]
    load: Callable[[Sequence[int], int], tuple[torch.Tensor, torch.Tensor]]
    pool: list[int]
    unseen: list[int] | None = None

    def needed(self, settings: "Settings") -> tuple[set[int], set[int]]:
        """Indices (preferred, unseen) that an evaluation with ``settings`` loads."""
        preferred: set[int] = set()
        for n in settings.num_preferred:
            for chosen in draw_sets(self.pool, n, settings.draws, settings.mode, settings.seed, self.user) or ():
                preferred.update(chosen)
        unseen = set(self.unseen) if self.unseen is not None else set(range(len(self.keys)))
        return preferred, unseen


def held(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 or [0, 1] float (n, 3, H, W) -> uint8 (n, 3, side, side): the one resize every test image takes."""
    if images.dtype == torch.uint8 and tuple(images.shape[-2:]) == (side, side):
        return images
    return inference.resize(inference.as_unit(images), side).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def memory_loader(inputs: torch.Tensor, targets: torch.Tensor) -> Callable:
    """A :attr:`TestUser.load` over pairs already held as uint8 at the evaluation side."""
    def load(indices: Sequence[int], side: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = list(indices)
        return held(inputs[chosen], side), held(targets[chosen], side)

    return load


@dataclass(frozen=True)
class Settings:
    """What an evaluation run measures; two runs with equal settings give equal numbers."""

    num_preferred: tuple[int, ...] = NUM_PREFERRED
    draws: int = DRAWS
    mode: str = "consecutive"
    seed: int = 0
    size: int = EVAL_SIZE
    methods: tuple[str, ...] = inference.METHODS
    batch_size: int = 16
    examples: int = 3

    def __post_init__(self):
        if self.mode not in DRAW_MODES:
            raise ValueError(f"draw mode {self.mode!r}: choose {' or '.join(DRAW_MODES)}")
        unknown = [method for method in self.methods if method not in inference.METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(inference.METHODS)}")
        if not self.num_preferred or min(self.num_preferred) < 1 or self.draws < 1:
            raise ValueError("num_preferred and draws must be positive")

    def to_dict(self) -> dict:
        """The settings that change numbers (not the batch size), for result keys."""
        return {"num_preferred": list(self.num_preferred), "draws": self.draws, "mode": self.mode,
                "seed": self.seed, "size": self.size, "methods": list(self.methods)}


def draw_sets(pool: Sequence[int], n: int, draws: int, mode: str = "consecutive", seed: int = 0,
              user: str = "") -> list[list[int]] | None:
    """``draws`` preferred sets of ``n`` items of ``pool``, or None when the pool holds fewer than ``n``."""
    if len(pool) < n:
        return None
    if mode == "random":
        rng = random.Random(f"{seed}/{user}/{n}")
        return [sorted(rng.sample(list(pool), n)) for _ in range(draws)]
    return [[pool[(i * n + j) % len(pool)] for j in range(n)] for i in range(draws)]


@dataclass
class UserResult:
    """One user's scores: ``scores[n][method][metric]`` is one value per draw (mean over unseen images)."""

    user: str
    unseen: int
    scores: dict[int, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    #: uint8 (rows, 3, h, w) per column (input, each method, target) of a few unseen images, first draw, smallest N
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"user": self.user, "unseen": self.unseen, "skipped": self.skipped,
                "scores": {str(n): methods for n, methods in self.scores.items()}}

    @classmethod
    def from_dict(cls, values: dict) -> "UserResult":
        return cls(values["user"], int(values["unseen"]),
                   {int(n): methods for n, methods in values["scores"].items()}, list(values.get("skipped", [])))


def _preferred(model: MSM, user: TestUser, indices: list[int]) -> inference.PreferredSet:
    return inference.encode_preferred(model, *user.load(indices, model.config.embed_size))


@torch.no_grad()
def evaluate_user(model: MSM, pca: StylePCA | None, user: TestUser, settings: Settings) -> UserResult:
    """Every N, draw and method of ``settings`` on one user (see the module docstring)."""
    device = next(model.parameters()).device
    result = UserResult(user.user, 0)
    fixed_unseen = user.unseen
    for n in settings.num_preferred:
        sets = draw_sets(user.pool, n, settings.draws, settings.mode, settings.seed, user.user)
        unseen_any = fixed_unseen if fixed_unseen is not None else user.pool
        if sets is None or not unseen_any:
            result.skipped.append(n)
            continue
        per_method = {method: {metric: [] for metric in METRICS} for method in settings.methods}
        for draw, chosen in enumerate(sets):
            preferred = _preferred(model, user, chosen)
            unseen = fixed_unseen if fixed_unseen is not None else sorted(set(range(len(user.keys))) - set(chosen))
            result.unseen = max(result.unseen, len(unseen))
            sums = {method: {metric: 0.0 for metric in METRICS} for method in settings.methods}
            for start in range(0, len(unseen), settings.batch_size):
                inputs, targets = user.load(unseen[start:start + settings.batch_size], settings.size)
                x_full, y = inference.as_unit(inputs, device), inference.as_unit(targets, device)
                x_model = inference.resize(x_full, model.config.image_size)
                contents = inference.contents_of(model, x_model)
                styled = [method for method in settings.methods if method != "identity"]
                styles = [inference.styles_from_contents(model, pca, preferred, contents, m) for m in styled]
                enhanced = inference.enhance_with_styles(model, x_model, styles) if styled else []
                outputs = {method: x_full for method in settings.methods if method == "identity"}
                outputs.update({method: residual(x_full, x_model, out) for method, out in zip(styled, enhanced)})
                for method in settings.methods:
                    for metric, values in score(outputs[method], y).items():
                        sums[method][metric] += float(values.sum())
                if draw == 0 and n == min(settings.num_preferred) and start == 0 and settings.examples:
                    result.examples = _examples(x_full, outputs, y, settings.examples)
            for method in settings.methods:
                for metric in METRICS:
                    per_method[method][metric].append(sums[method][metric] / len(unseen))
        result.scores[n] = per_method
    return result


def _examples(inputs: torch.Tensor, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
              rows: int) -> dict[str, torch.Tensor]:
    def held(images: torch.Tensor) -> torch.Tensor:
        return images[:rows].clamp(0, 1).mul(255).round().to(torch.uint8).cpu()

    return {"input": held(inputs), **{method: held(out) for method, out in outputs.items()
                                      if method != "identity"}, "target": held(targets)}


def evaluate(model: MSM, pca: StylePCA | None, users: Iterable[TestUser], settings: Settings,
             done: Iterable[str] = ()) -> Iterator[UserResult]:
    """:func:`evaluate_user` for each user not in ``done`` (already evaluated), in turn."""
    model.eval()
    done = frozenset(done)
    for user in users:
        if user.user not in done:
            yield evaluate_user(model, pca, user, settings)


# ---------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: Sequence[UserResult], settings: Settings) -> dict:
    """Mean ± std over draws of the per-draw mean over users, for every N, method and metric.

    Returns ``{"table": {n: {method: {metric: {"mean", "std"}}}, "users": {n:
    count}}, "per_user": {user: {n: {method: {metric: {"mean", "std"}}}}}``
    (``n`` as a string, for JSON).
    """
    table, counts, per_user = {}, {}, {}
    for n in settings.num_preferred:
        scored = [result for result in results if n in result.scores]
        counts[str(n)] = len(scored)
        if not scored:
            continue
        table[str(n)] = {}
        for method in settings.methods:
            table[str(n)][method] = {}
            for metric in METRICS:
                per_draw = [statistics.fmean(result.scores[n][method][metric][draw] for result in scored)
                            for draw in range(settings.draws)]
                mean, std = _mean_std(per_draw)
                table[str(n)][method][metric] = {"mean": mean, "std": std}
    for result in results:
        per_user[result.user] = {str(n): {method: {metric: dict(zip(("mean", "std"), _mean_std(values)))
                                                   for metric, values in metrics.items()}
                                          for method, metrics in methods.items()}
                                 for n, methods in result.scores.items()}
    return {"settings": settings.to_dict(), "users": counts, "table": table, "per_user": per_user}


def format_table(summary: dict) -> str:
    """The aggregate as a fixed-width text table: one row per N and method."""
    header = f"{'N':>4}  {'method':<17} {'users':>5}  {'PSNR (dB)':>14}  {'SSIM':>15}  {'ΔE':>14}"
    lines = [header, "-" * len(header)]
    for n, methods in summary["table"].items():
        for method, metrics in methods.items():
            psnr, ssim, delta_e = (metrics[name] for name in METRICS)
            lines.append(f"{n:>4}  {method:<17} {summary['users'][n]:>5}  "
                         f"{psnr['mean']:>6.2f} ± {psnr['std']:<5.2f}  {ssim['mean']:>6.4f} ± {ssim['std']:<6.4f}  "
                         f"{delta_e['mean']:>6.2f} ± {delta_e['std']:<5.2f}")
    return "\n".join(lines)

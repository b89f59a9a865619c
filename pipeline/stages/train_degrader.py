"""``pie train-degrader``: DSN trained on the rule pairs, enhanced → original (resumable, with a loss log).

The degrading network of Kosugi & Yamasaki, "Personalized Image Enhancement
Featuring Masked Style Modeling" (IEEE TCSVT 2023, Sec. III-B) learns to undo
the 25 rule-based pseudo-users on the prepared FiveK originals
(:func:`pipeline.stages.degrade.rule_pairs`); ``pie degrade`` then applies it
to the crawled photos. The trainer itself is :func:`degrader.train.train`;
this module picks the configuration, the pairs and the checkpoint, and keeps
the loss history (:class:`LossLog`) beside the checkpoint so ``pie status``
and ``pie report`` can read it from the workspace.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from manifests.jsonl import JsonlStore
from manifests.workspace import Workspace

if TYPE_CHECKING:
    from degrader.dsn import DSNConfig
    from degrader.train import ConfigurationMismatch, TrainConfig

#: ``--model`` sizes, each a :class:`degrader.dsn.DSNConfig` constructor.
MODEL_SIZES = ("paper", "small", "tiny")

#: Most lines a :class:`LossLog` writes over a run, besides its validation steps.
LOSS_LOG_LINES = 500


class NoPairs(ValueError):
    """The workspace holds no rule pair to train on."""


def model_config(size: str, *, blocks: int | None = None, channels: int | None = None,
                 subnet_channels: int | None = None) -> DSNConfig:
    """The DSN of ``size`` (one of :data:`MODEL_SIZES`) with the given overrides.

    ``channels`` is the feature width, split in half by each coupling block.
    Raises ``ValueError`` for an impossible combination.
    """
    from degrader.dsn import DSNConfig

    overrides = {"coupling_blocks": blocks, "subnet_channels": subnet_channels}
    if channels is not None:
        overrides.update(feature_channels=channels, split_channels=channels // 2)
    return dataclasses.replace(getattr(DSNConfig, size)(), **{k: v for k, v in overrides.items() if v is not None})


def mismatch_advice(error: ConfigurationMismatch) -> str:
    """One line for a checkpoint of another configuration: what differs, and how to resume it or train another."""
    from degrader.dsn import DSNConfig

    sizes = [size for size in MODEL_SIZES if dataclasses.asdict(getattr(DSNConfig, size)()) == error.saved_model]
    same = "the settings it was trained with" + (f" (--model {sizes[0]} ...)" if sizes else "")
    return f"{error}; resume it with {same}, or train another with --out FILE"


def loss_log_path(checkpoint: Path) -> Path:
    """The loss log beside a checkpoint: ``ROOT/degrader/dsn.pt`` logs to ``ROOT/degrader/dsn.metrics.jsonl``."""
    return Path(checkpoint).with_name(f"{Path(checkpoint).stem}.metrics.jsonl")


class LossLog:
    """An ``on_log(step, metrics)`` callback appending one JSON line per logged step.

    Logs every ``max(1, steps // LOSS_LOG_LINES)``-th step and every step
    that carries validation metrics (keys starting with ``val_``), each line
    ``{"step": int, <metric>: float, ...}`` with non-finite values as null.
    A resumed run appends the steps it repeats again; readers keep the last
    line of each step (:func:`pipeline.stages.status.read_loss_log`).
    """

    def __init__(self, path: Path, steps: int):
        self.store = JsonlStore(path)
        self.every = max(1, steps // LOSS_LOG_LINES)

    def __call__(self, step: int, metrics: dict) -> None:
        validated = any(key.startswith("val_") for key in metrics)
        if step % self.every and not validated:
            return
        row = {"step": int(step)}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value) if math.isfinite(value) else None
        self.store.append([row])


@dataclass
class TrainDegraderSummary:
    """What a run trained on and its last validation figures (PSNR in dB)."""

    checkpoint: Path
    steps: int
    pairs: int
    held_out: int
    last: dict = field(default_factory=dict)

    def line(self) -> str:
        psnr = (f"; validation PSNR degrade {self.last['val_psnr_degrade']:.2f} dB, enhance "
                f"{self.last['val_psnr_enhance']:.2f} dB" if "val_psnr_degrade" in self.last else "")
        return (f"train-degrader: {self.steps} steps on {self.pairs} pairs ({self.held_out} held out) -> "
                f"{self.checkpoint}{psnr}")


def run_train_degrader(workspace: Workspace, config: TrainConfig, checkpoint: Path | None = None, *,
                       valid_fraction: float = 0.1, vgg16: Path | None = None, device: str = "cpu",
                       on_log: Callable[[int, dict], None] | None = None,
                       on_problem: Callable[[str], None] | None = None) -> TrainDegraderSummary:
    """Train (or resume) DSN on the workspace's rule pairs into ``checkpoint`` (default ``ROOT/degrader/dsn.pt``).

    ``valid_fraction`` (0-1) of the originals are held out for validation;
    ``vgg16`` is a local torchvision VGG16 weights file whose first two
    convolutions become the fixed encoder. Every logged step goes to the loss
    log beside the checkpoint and then to ``on_log``; ``on_problem`` hears
    of each rule output left out of the pairs, before training starts.

    Raises :class:`NoPairs` without rule pairs,
    :class:`degrader.train.ConfigurationMismatch` for a checkpoint of another
    configuration, and ``ValueError`` (``CheckpointError``, ``ImageError``)
    for an unusable checkpoint or image.
    """
    from degrader.dsn import encoder_from_vgg16
    from degrader.train import train

    from .degrade import rule_pairs

    pairs, valid, problems = rule_pairs(workspace, valid_fraction=valid_fraction, min_side=config.crop_size)
    for problem in problems if on_problem is not None else ():
        on_problem(problem)
    if not len(pairs):
        raise NoPairs("no training pairs: run `pie rules` first")
    checkpoint = Path(checkpoint or workspace.degrader_checkpoint())
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    summary = TrainDegraderSummary(checkpoint, config.steps, len(pairs), len(valid))
    loss_log = LossLog(loss_log_path(checkpoint), config.steps)

    def logged(step: int, metrics: dict) -> None:
        loss_log(step, metrics)
        summary.last.update(metrics)
        if on_log is not None:
            on_log(step, metrics)

    filters = encoder_from_vgg16(vgg16) if vgg16 is not None else None
    train(config, pairs, valid, checkpoint, encoder_filters=filters, device=device, on_log=logged)
    return summary

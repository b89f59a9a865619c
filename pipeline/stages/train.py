"""``pie train``: masked style modeling from the workspace's shards (see :mod:`model.train`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.train import TrainConfig, TrainData

log = logging.getLogger("pie.train")

#: ``--step`` values and the trainer parts each runs.
STEP_PARTS = {"1": ("step1",), "pca": ("pca",), "2": ("step2",), "all": ("step1", "pca", "step2")}


def preset_users() -> frozenset[str]:
    """The pseudo-users of the built-in Lightroom-like presets, which validate step 1 as in the reference."""
    from manifests.samples import rule_user
    from rules.registry import builtin_rules

    return frozenset(rule_user(name) for name, rule in builtin_rules().items() if rule.kind == "preset")


def read_data(shards: str) -> TrainData:
    """The shards under ``shards`` (a folder or URL holding ``index.json``), step 1 validated on the presets."""
    from model.train import TrainData

    return TrainData.from_index(shards, preset_users())


def data_report(data: TrainData, shards: str) -> str:
    """What a run would read: shards, users and pairs per split, step-1 validation users."""
    from model.data import shard_entries

    lines = [f"data: {shards}"]
    found: set[str] = set()
    for split in ("train", "valid"):
        entries = shard_entries(shards, split)
        users = {user for entry in entries for user in entry.get("users") or ()}
        if split == "train":
            found = users & data.step1_valid_users
        lines.append(f"  {split:<5} {len(entries):>5} shards {sum(e.get('samples', 0) for e in entries):>9,} pairs "
                     f"{len(users):>6,} users")
    lines.append(f"  step-1 validation: {len(found)} preset users in {len(data.step1_valid_urls)} train shards")
    return "\n".join(lines)


def model_report(config: TrainConfig, num_preferred: int = 20) -> str:
    """Parameters and multiply-accumulates per module for one image at ``config.model.image_size``."""
    from model.complexity import format_table, inference_macs, parameter_counts
    from model.networks import MSM

    counts = parameter_counts(MSM(config.model))
    macs = inference_macs(config.model, num_preferred=num_preferred)
    return (f"model: {config.model.image_size}-px image, N = {num_preferred} preferred pairs\n"
            + format_table(counts, macs))


def load_perceptual(path: Path | None):
    """The perceptual embedding from a local file, or None (the term off), saying which once."""
    if path is None:
        log.warning("no --perceptual file: the perceptual loss term is off")
        return None
    from model.reference import load_perceptual as load

    return load(path)


def backbone_loader(path: Path | None):
    """A callable loading local ResNet-18 weights into a new model, or None (random initialisation)."""
    if path is None:
        log.warning("no --backbone file: the ResNet-18 backbones start from random weights")
        return None
    from model.reference import load_backbone

    return lambda model: load_backbone(model, path)

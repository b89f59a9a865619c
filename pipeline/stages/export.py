"""``pie export --layout reference``: a pie dataset in the reference implementation's folder layout.

The public masked-style-modeling code (satoshi-kosugi/masked-style-modeling,
``dataset/loader.py``) trains from folders, one per user and split, with the
inputs in a sibling folder named ``<user>_input`` and the same file name in
both::

    OUT/train/<user>/<name>        retouched photo or rule output (target)
    OUT/train/<user>_input/<name>  pseudo original or prepared FiveK original (input)
    OUT/valid/...  OUT/valid_ref/...

Flickr users are named as its download script names them (``@`` → ``_``,
e.g. ``100015017_N04``), rule users by the rule's name; a file is named after
the photo id or image name with the target's extension (the reference reads
with ``cv2.imread``, which goes by content, so a PNG input under a ``.jpg``
name loads as it is). Files are hard links into the workspace where the file
system allows, copies otherwise; a rerun leaves files that are already there
with the right size alone.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from manifests.files import PARTIAL_MARK, file_sha256
from manifests.workspace import Workspace

from .shard.plan import Pair, Skipped, collect_pairs

#: Layouts ``pie export`` can write.
LAYOUTS = ("reference",)


def reference_paths(pair: Pair) -> tuple[Path, Path]:
    """Target and input paths of ``pair`` relative to the export folder."""
    meta = pair.meta
    if meta["source"] == "flickr":
        folder, stem = meta["user"].replace("@", "_"), meta["photo_id"]
    else:
        folder, stem = meta["rule"], meta["name"]
    name = stem + (Path(pair.target_file).suffix.lower() or ".png")
    split = Path(meta["split"])
    return split / folder / name, split / f"{folder}_input" / name


def _place(source: Path, target: Path, sha256: str) -> str:
    """Hard-link (or copy) ``source`` to ``target``; returns ``linked``, ``copied`` or ``kept``.

    A ``target`` that is already ``source`` (the same inode) or has its SHA-256 is kept.
    """
    try:
        if os.path.samefile(source, target) or file_sha256(target) == sha256:
            return "kept"
        target.unlink()
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "linked"
    except OSError:  # another file system, or links not supported
        temporary = target.with_name(f".{target.name}{PARTIAL_MARK}{os.getpid()}")
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        return "copied"


@dataclass
class ExportSummary:
    """What a ``pie export`` run did."""

    files: Counter = field(default_factory=Counter)
    pairs: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def line(self) -> str:
        return (f"export: {self.pairs} pairs ({self.files['linked']} files linked, {self.files['copied']} copied, "
                f"{self.files['kept']} already there); {len(self.skipped)} pairs skipped")


def export_reference(workspace: Workspace, out: Path, only: str | None = None) -> ExportSummary:
    """Write every pair of ``workspace`` into ``out`` in the reference layout."""
    pairs, skipped = collect_pairs(workspace, only)
    summary = ExportSummary(pairs=len(pairs), skipped=skipped)
    out = Path(out)
    for pair in pairs:
        target, input_ = reference_paths(pair)
        summary.files[_place(workspace.resolve_relative(pair.target_file), out / target,
                             pair.meta["target_sha256"])] += 1
        summary.files[_place(workspace.resolve_relative(pair.input_file), out / input_,
                             pair.meta["input_sha256"])] += 1
    return summary

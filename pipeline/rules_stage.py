"""``pie rules``: every (FiveK original, rule) pair as a Dask task.

Outputs go to ``ROOT/rules/<RULE>/<name>.png`` (8-bit, lossless) with one
record per output in ``ROOT/manifests/rules/<RULE>.jsonl``: the source file and
its SHA-256, the rule, its kind and parameters, the output's size and SHA-256.
A pair whose latest record is ``ok`` and whose output file is present with the
recorded size is skipped, so reruns are idempotent and a killed run resumes.
A source that cannot be decoded gets a ``failed`` record with a one-line
reason and the stage goes on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from manifests import ids
from manifests.files import write_atomic
from manifests.jsonl import latest_by
from manifests.records import utc_now
from manifests.workspace import Workspace
from rules.registry import Rule

from .imageio import ImageError, decode_image, encode_png, float_to_uint8, shrink_to_max_side

log = logging.getLogger("pie.rules")

RULE_SCHEMA = "pie.rule-output/1"
SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


class RulesInputError(ValueError):
    """An unusable ``--fivek`` folder or ``--names`` file; the message names it."""


@dataclass(frozen=True)
class SourceImage:
    """One original: its name (output file stem) and path."""

    name: str
    path: Path


def find_sources(folder: Path, names_file: Path | None = None) -> tuple[list[SourceImage], list[str]]:
    """The originals in ``folder`` (optionally only those named in ``names_file``).

    Returns the sources sorted by name and one-line problems (unusable names,
    names listed but not found).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RulesInputError(f"{folder}: not a folder")
    problems: list[str] = []
    found: dict[str, SourceImage] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in SOURCE_SUFFIXES or not path.is_file():
            continue
        if not ids.RULE_NAME_PATTERN.fullmatch(path.stem):
            problems.append(f"{path}: file name cannot be used as an output name; skipped")
            continue
        if path.stem in found:
            problems.append(f"{path}: another file is also named {path.stem}; skipped")
            continue
        found[path.stem] = SourceImage(path.stem, path)
    if names_file is not None:
        try:
            wanted = [line.strip() for line in Path(names_file).read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesInputError(f"{names_file}: cannot read ({exc})") from None
        wanted = [name for name in wanted if name and not name.startswith("#")]
        problems += [f"{names_file}: {name} not found in {folder}" for name in wanted if name not in found]
        found = {name: found[name] for name in wanted if name in found}
    return sorted(found.values(), key=lambda source: source.name), problems


def load_source(path: Path, max_side: int | None) -> tuple[np.ndarray, str]:
    """float32 RGB [0, 1] of an original, shrunk to ``max_side`` (area filter), and its file SHA-256."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return shrink_to_max_side(decode_image(data, str(path)).as_float(), max_side), digest


def run_pair(root: str, source: SourceImage, rule: Rule, max_side: int | None) -> dict:
    """Apply one rule to one original and write the output (a Dask task; no shared state)."""
    workspace = Workspace(Path(root))
    output = workspace.rule_output(rule.name, source.name)
    record = {"schema": RULE_SCHEMA, "rule": rule.name, "kind": rule.kind, "reference": rule.reference,
              "parameters": rule.parameters, "name": source.name, "source": str(source.path),
              "source_sha256": None, "max_side": max_side, "file": workspace.relative(output), "width": None,
              "height": None, "bytes": None, "sha256": None, "status": "ok", "reason": None, "seconds": None,
              "created_at": None}
    started = time.perf_counter()
    try:
        image, record["source_sha256"] = load_source(source.path, max_side)
        pixels = float_to_uint8(rule(image))
        data = encode_png(pixels)
    except (ImageError, OSError) as exc:
        record.update(status="failed", reason=str(exc).splitlines()[0], file=None)
    except Exception as exc:  # a rule that fails on one image must not stop the stage
        record.update(status="failed", reason=f"{rule.name} failed: {exc.__class__.__name__}: {exc}"[:300],
                      file=None)
    else:
        write_atomic(output, data)
        record.update(width=int(pixels.shape[1]), height=int(pixels.shape[0]), bytes=len(data),
                      sha256=hashlib.sha256(data).hexdigest())
    record.update(seconds=round(time.perf_counter() - started, 4), created_at=utc_now())
    return record


@dataclass
class RulesSummary:
    """What a ``pie rules`` run did."""

    done: Counter = field(default_factory=Counter)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"rules: {self.done['ok']} outputs written, {self.skipped} already done, "
                f"{self.done['failed']} failed, {len(self.problems)} input problems in {self.seconds:.1f} s")


def pending_pairs(workspace: Workspace, sources: list[SourceImage], rules: dict[str, Rule],
                  max_side: int | None) -> tuple[list[tuple[SourceImage, Rule]], int]:
    """Pairs still to do, and how many are already done."""
    pending, done = [], 0
    for rule in rules.values():
        latest = latest_by(workspace.rules_manifest(rule.name).read().records, "name")
        for source in sources:
            record = latest.get(source.name)
            if record and record.get("status") == "ok" and record.get("max_side") == max_side \
                    and record.get("parameters") == rule.parameters and _output_present(workspace, record):
                done += 1
            else:
                pending.append((source, rule))
    return pending, done


def _output_present(workspace: Workspace, record: dict) -> bool:
    try:
        return workspace.resolve_relative(record["file"]).stat().st_size == record["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_rules(workspace: Workspace, sources: list[SourceImage], rules: dict[str, Rule], *, client,
              max_side: int | None = None, on_done: Callable[[dict], None] | None = None,
              flush_every: int = 64) -> RulesSummary:
    """Run every pending (source, rule) pair on the Dask ``client``; records are appended as results arrive."""
    from distributed import as_completed

    started = time.monotonic()
    summary = RulesSummary()
    pending, summary.skipped = pending_pairs(workspace, sources, rules, max_side)
    buffered: dict[str, list[dict]] = {}

    def flush() -> None:
        for rule_name, records in buffered.items():
            workspace.rules_manifest(rule_name).append(records)
        buffered.clear()

    futures = [client.submit(run_pair, str(workspace.root), source, rule, max_side, pure=False,
                             key=f"rule-{rule.name}-{source.name}-{time.monotonic_ns()}")
               for source, rule in pending]
    count = 0
    try:
        for future in as_completed(futures):
            record = future.result()
            future.release()
            buffered.setdefault(record["rule"], []).append(record)
            summary.done[record["status"]] += 1
            if record["status"] != "ok":
                log.warning("%s/%s: %s", record["rule"], record["name"], record["reason"])
            if on_done:
                on_done(record)
            count += 1
            if count % flush_every == 0:
                flush()
    finally:
        flush()
        for future in futures:
            future.cancel()
    summary.seconds = time.monotonic() - started
    return summary


def selected_rules(rules: dict[str, Rule], only: Iterable[str] | None) -> dict[str, Rule]:
    """``rules`` restricted to the names in ``only``; unknown names raise ValueError."""
    if not only:
        return rules
    names = [name.strip() for name in only if name.strip()]
    unknown = [name for name in names if name not in rules]
    if unknown:
        raise ValueError(f"--only: unknown rule {unknown[0]!r} (see `pie rules list`)")
    return {name: rules[name] for name in names}

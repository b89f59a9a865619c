"""``pie rules``: FiveK originals prepared once, then every (original, rule) pair, as Dask tasks.

Phase 1 keeps each original exactly as the rules see it (decoded, EXIF
orientation applied, converted to RGB, shrunk to ``--max-side``, rounded to
8 bits) in ``ROOT/fivek/<name>.png`` with one record per image in
``ROOT/manifests/fivek.jsonl``: the source file's path, size, mtime and SHA-256,
``max_side``, and the PNG's size and SHA-256. It is redone only when the PNG is
missing, ``max_side`` changed, or the source's bytes changed (size and mtime
first, then its SHA-256, so a touched but identical file is not redone).

Phase 2 applies each rule to the pixels of that PNG and writes
``ROOT/rules/<RULE>/<name>.png`` (8-bit, lossless) with one record per output in
``ROOT/manifests/rules/<RULE>.jsonl``: the source and its SHA-256, the prepared
original it read (``input_file``, ``input_sha256``, ``input_bytes``), the rule,
its kind and parameters, the output's size and SHA-256. A pair is skipped when
its latest record is ``ok``, its output is present with the recorded size, and
it was made with the same parameters and ``max_side`` from the current prepared
original, so reruns are idempotent and a killed run resumes. A record written
before prepared originals were kept is upgraded instead (input fields added,
output kept) when its source SHA-256 is unchanged. A source that cannot be
decoded gets ``failed`` records with a one-line reason and the stage goes on.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from manifests import ids
from manifests.files import file_sha256, remove_partials, write_atomic
from manifests.jsonl import JsonlStore, latest_by
from manifests.records import utc_now
from manifests.workspace import Workspace
from rules.registry import Rule

from ..imageio import ImageError, decode_image, encode_png, float_to_uint8, shrink_to_max_side

log = logging.getLogger("pie.rules")

RULE_SCHEMA = "pie.rule-output/1"
PREPARED_SCHEMA = "pie.prepared-original/1"
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
    folder = Path(folder).absolute()
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


#: Largest prepared original the rules take, in pixels: the float32 working copies of the heavier
#: rules need about 30 bytes a pixel several times over, a few GB at this size. Larger originals
#: are refused unless ``--max-side`` shrinks them first.
MAX_RULE_PIXELS = 40_000_000


def prepared_pixels(data: bytes, source: str, max_side: int | None) -> np.ndarray:
    """uint8 RGB ``H x W x 3`` of an original's file bytes, as the rules see it.

    Decoded with EXIF orientation applied and any mode converted to RGB, shrunk
    in float (area filter) so the longest side is at most ``max_side`` pixels
    (``None``: full size), then rounded to 8 bits. Raises ImageError, also
    for an original of more than :data:`MAX_RULE_PIXELS` after shrinking.
    """
    pixels = float_to_uint8(shrink_to_max_side(decode_image(data, source).as_float(), max_side))
    if pixels.shape[0] * pixels.shape[1] > MAX_RULE_PIXELS:
        raise ImageError(f"{source}: {pixels.shape[1]}x{pixels.shape[0]} is more than the rules take "
                         f"({MAX_RULE_PIXELS / 1e6:.0f} MP); give --max-side")
    return pixels


def load_source(path: Path, max_side: int | None) -> tuple[np.ndarray, str]:
    """float32 RGB [0, 1] of an original as the stage prepares it, and its file SHA-256."""
    data = Path(path).read_bytes()
    pixels = prepared_pixels(data, str(path), max_side)
    return pixels.astype(np.float32) / np.float32(255.0), hashlib.sha256(data).hexdigest()


def _prepared_record(workspace: Workspace, source: SourceImage, max_side: int | None) -> dict:
    return {"schema": PREPARED_SCHEMA, "name": source.name, "source": str(Path(source.path).absolute()),
            "source_sha256": None, "source_bytes": None, "source_mtime_ns": None, "max_side": max_side,
            "file": workspace.relative(workspace.prepared_original(source.name)), "width": None, "height": None,
            "bytes": None, "sha256": None, "status": "ok", "reason": None, "created_at": None}


def failed_original(root: str, source: SourceImage, max_side: int | None, reason: str) -> dict:
    """The failed prepared record of ``source`` whose task did not return (``reason`` says why)."""
    record = _prepared_record(Workspace(Path(root)), source, max_side)
    record.update(status="failed", reason=f"{source.path}: {reason}", file=None, created_at=utc_now())
    return record


def failed_pair(prepared: dict, rule: Rule, reason: str) -> dict:
    """The failed record of ``rule`` on ``prepared``'s image whose task did not return."""
    return rule_record(prepared, rule, status="failed", reason=f"{rule.name} on {prepared['name']}: {reason}",
                       seconds=0.0, created_at=utc_now())


def prepare_original(root: str, source: SourceImage, max_side: int | None) -> dict:
    """Keep one original as ``ROOT/fivek/<name>.png`` and return its record (a Dask task; no shared state)."""
    workspace = Workspace(Path(root))
    target = workspace.prepared_original(source.name)
    path = Path(source.path).absolute()
    record = _prepared_record(workspace, source, max_side)
    try:
        mtime_ns = path.stat().st_mtime_ns  # taken before reading: a change while reading shows next run
        data = path.read_bytes()
        record.update(source_sha256=hashlib.sha256(data).hexdigest(), source_bytes=len(data),
                      source_mtime_ns=mtime_ns)
        pixels = prepared_pixels(data, str(path), max_side)
        png = encode_png(pixels)
    except (ImageError, OSError) as exc:
        record.update(status="failed", reason=str(exc).splitlines()[0], file=None)
    else:
        write_atomic(target, png)
        record.update(width=int(pixels.shape[1]), height=int(pixels.shape[0]), bytes=len(png),
                      sha256=hashlib.sha256(png).hexdigest())
    record["created_at"] = utc_now()
    return record


def rule_record(prepared: dict, rule: Rule, **fields) -> dict:
    """A rule record of ``rule`` on the image of the ``prepared`` record, with ``fields`` set."""
    return {"schema": RULE_SCHEMA, "rule": rule.name, "kind": rule.kind, "reference": rule.reference,
            "parameters": rule.parameters, "name": prepared["name"], "source": prepared["source"],
            "source_sha256": prepared["source_sha256"], "max_side": prepared["max_side"],
            "input_file": prepared["file"], "input_sha256": None, "input_bytes": None, "file": None, "width": None,
            "height": None, "bytes": None, "sha256": None, "status": "ok", "reason": None, "seconds": None,
            "created_at": None, **fields}


def run_pair(root: str, prepared: dict, rule: Rule) -> dict:
    """Apply one rule to the PNG of an ``ok`` prepared record and write the output (a Dask task; no shared state)."""
    workspace = Workspace(Path(root))
    output = workspace.rule_output(rule.name, prepared["name"])
    record = rule_record(prepared, rule, file=workspace.relative(output))
    started = time.perf_counter()
    try:
        path = workspace.resolve_relative(prepared["file"])
        data = path.read_bytes()
        record.update(input_sha256=hashlib.sha256(data).hexdigest(), input_bytes=len(data))
        pixels = float_to_uint8(rule(decode_image(data, str(path)).as_float()))
        png = encode_png(pixels)
    except (ImageError, OSError) as exc:
        record.update(status="failed", reason=str(exc).splitlines()[0], file=None)
    except Exception as exc:  # a rule that fails on one image must not stop the stage
        record.update(status="failed", reason=f"{rule.name} failed: {exc.__class__.__name__}: {exc}"[:300],
                      file=None)
    else:
        write_atomic(output, png)
        record.update(width=int(pixels.shape[1]), height=int(pixels.shape[0]), bytes=len(png),
                      sha256=hashlib.sha256(png).hexdigest())
    record.update(seconds=round(time.perf_counter() - started, 4), created_at=utc_now())
    return record


@dataclass
class RulesSummary:
    """What a ``pie rules`` run did: rule records and prepared-original records written, by status."""

    done: Counter = field(default_factory=Counter)
    skipped: int = 0
    upgraded: int = 0
    prepared: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"rules: {self.done['ok']} outputs written, {self.skipped} already done, {self.upgraded} upgraded, "
                f"{self.done['failed']} failed; {self.prepared['ok']} originals prepared, "
                f"{self.prepared['failed']} unreadable; {len(self.problems)} input problems in {self.seconds:.1f} s")


def pending_originals(workspace: Workspace, sources: list[SourceImage],
                      max_side: int | None) -> tuple[list[SourceImage], dict[str, dict], list[dict]]:
    """Sources to prepare, the up-to-date prepared records of the others by name, and records to append.

    A prepared original is up to date when its latest record is ``ok`` with the
    same ``max_side``, its PNG has the recorded size, and the source still holds
    the bytes it was made from. The records to append are those of sources
    touched or moved without change: the new path and mtime, so the source is
    not hashed again next time.
    """
    latest = latest_by(workspace.prepared_manifest().read().records, "name")
    to_prepare, current, refreshed = [], {}, []
    for source in sources:
        record = latest.get(source.name)
        if record and record.get("status") == "ok" and record.get("max_side") == max_side \
                and _file_present(workspace, record):
            record = _unchanged_source(Path(source.path).absolute(), record)
        else:
            record = None
        if record is None:
            to_prepare.append(source)
            continue
        current[source.name] = record
        if record is not latest[source.name]:
            refreshed.append(record)
    return to_prepare, current, refreshed


def _unchanged_source(path: Path, record: dict) -> dict | None:
    """``record`` (path and mtime brought up to date) if ``path`` holds the bytes it was made from, else None."""
    try:
        stat = path.stat()
        if stat.st_size != record.get("source_bytes"):
            return None
        if stat.st_mtime_ns == record.get("source_mtime_ns") and str(path) == record.get("source"):
            return record
        if file_sha256(path) != record.get("source_sha256"):
            return None
    except OSError:
        return None
    return {**record, "source": str(path), "source_mtime_ns": stat.st_mtime_ns}


def pending_pairs(workspace: Workspace, prepared: dict[str, dict], rules: dict[str, Rule],
                  max_side: int | None) -> tuple[list[tuple[dict, Rule]], list[dict], int]:
    """Pairs of the prepared originals still to do, upgraded copies of old records, and how many are done.

    ``prepared`` holds the current ``ok`` prepared record of each image. An
    ``ok`` record without ``input_sha256`` (written before prepared originals
    were kept) whose output is otherwise up to date and whose source SHA-256 is
    that of the prepared original is upgraded, not recomputed.
    """
    pending, upgraded, done = [], [], 0
    for rule in rules.values():
        latest = latest_by(workspace.rules_manifest(rule.name).read().records, "name")
        for name, original in prepared.items():
            record = latest.get(name)
            if not (record and record.get("status") == "ok" and record.get("max_side") == max_side
                    and record.get("parameters") == rule.parameters and _file_present(workspace, record)):
                pending.append((original, rule))
            elif record.get("input_sha256") == original["sha256"]:
                done += 1
            elif record.get("input_sha256") is None and record.get("source_sha256") == original["source_sha256"]:
                upgraded.append({**record, "input_file": original["file"], "input_sha256": original["sha256"],
                                 "input_bytes": original["bytes"]})
            else:
                pending.append((original, rule))
    return pending, upgraded, done


def _file_present(workspace: Workspace, record: dict) -> bool:
    try:
        return workspace.resolve_relative(record["file"]).stat().st_size == record["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


class _Appender:
    """Records buffered per manifest, appended every ``every`` records and on :meth:`flush`."""

    def __init__(self, every: int):
        self.every, self.count = every, 0
        self.buffered: dict[Path, tuple[JsonlStore, list[dict]]] = {}

    def add(self, store: JsonlStore, record: dict) -> None:
        self.buffered.setdefault(store.path, (store, []))[1].append(record)
        self.count += 1
        if self.count % self.every == 0:
            self.flush()

    def flush(self) -> None:
        for store, records in self.buffered.values():
            store.append(records)
        self.buffered.clear()


def _run_tasks(client, tasks: list[tuple[str, Callable, tuple, Callable[[str], dict]]],
               on_result: Callable[[dict], None]) -> None:
    """Run ``(key, function, args, failed)`` tasks on ``client``, calling ``on_result`` as each result arrives.

    A task that raises or takes its worker down (out of memory, say: Dask
    gives up on it with ``KilledWorker``) gives ``failed(reason)``, a failed
    record, instead of ending the stage.
    """
    from distributed import as_completed

    if not tasks:
        return
    futures = {client.submit(function, *args, pure=False, key=f"{key}-{time.monotonic_ns()}"): failed
               for key, function, args, failed in tasks}
    try:
        for future in as_completed(list(futures)):
            try:
                result = future.result()
            except Exception as exc:  # the worker died or the task raised: that image fails, the rest go on
                result = futures[future](f"task failed: {exc.__class__.__name__}: {exc}".splitlines()[0][:300])
            future.release()
            on_result(result)
    finally:
        for future in futures:
            future.cancel()


def run_rules(workspace: Workspace, sources: list[SourceImage], rules: dict[str, Rule], *, client,
              max_side: int | None = None, on_done: Callable[[dict], None] | None = None,
              flush_every: int = 64) -> RulesSummary:
    """Prepare the originals, then run every pending (original, rule) pair on the Dask ``client``.

    Records are appended in the driver as results arrive; ``on_done`` is called
    with every rule record written for a pair (not with upgraded ones).
    Temporaries that a killed run left in ``fivek/`` and ``rules/`` are
    removed first.
    """
    started = time.monotonic()
    summary = RulesSummary()
    for folder in ("fivek", "rules"):
        remove_partials(workspace.root / folder)
    root = str(workspace.root)
    appender = _Appender(flush_every)
    to_prepare, prepared, refreshed = pending_originals(workspace, sources, max_side)
    workspace.prepared_manifest().append(refreshed)

    def pair_done(record: dict) -> None:
        appender.add(workspace.rules_manifest(record["rule"]), record)
        summary.done[record["status"]] += 1
        if record["status"] != "ok":
            log.warning("%s/%s: %s", record["rule"], record["name"], record["reason"])
            workspace.rule_output(record["rule"], record["name"]).unlink(missing_ok=True)  # no longer its output
        if on_done:
            on_done(record)

    def original_done(record: dict) -> None:
        appender.add(workspace.prepared_manifest(), record)
        summary.prepared[record["status"]] += 1
        if record["status"] == "ok":
            prepared[record["name"]] = record
            return
        workspace.prepared_original(record["name"]).unlink(missing_ok=True)  # made from bytes no longer there
        for rule in rules.values():
            pair_done(rule_record(record, rule, status="failed", reason=record["reason"], seconds=0.0,
                                  created_at=utc_now()))

    try:
        _run_tasks(client, [(f"prepare-{source.name}", prepare_original, (root, source, max_side),
                             functools.partial(failed_original, root, source, max_side))
                            for source in to_prepare], original_done)
        appender.flush()
        pending, upgraded, summary.skipped = pending_pairs(workspace, prepared, rules, max_side)
        for record in upgraded:
            appender.add(workspace.rules_manifest(record["rule"]), record)
        summary.upgraded = len(upgraded)
        _run_tasks(client, [(f"rule-{rule.name}-{original['name']}", run_pair, (root, original, rule),
                             functools.partial(failed_pair, original, rule))
                            for original, rule in pending], pair_done)
    finally:
        appender.flush()
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

"""``pie rules``: FiveK originals prepared once, then every (original, rule) pair, as Dask tasks.

Phase 1 keeps each original exactly as the rules see it (decoded, EXIF
orientation applied, converted to RGB, shrunk to ``--max-side``, rounded to
8 bits) in ``ROOT/fivek/<name>.png`` with one record per image in
``ROOT/manifests/fivek.jsonl``: the source file's path, size, mtime and SHA-256,
``max_side``, and the PNG's size and SHA-256. It is redone only when the PNG is
missing or no longer has the recorded size and SHA-256, ``max_side`` changed,
or the source's bytes changed (size and mtime first, then its SHA-256, so a
touched but identical file is not redone).

Phase 2 runs one task per image: it reads and decodes that PNG once, applies
every pending rule to its pixels and writes ``ROOT/rules/<RULE>/<name>.png``
(8-bit, lossless, zlib level 1) with one record per output in
``ROOT/manifests/rules/<RULE>.jsonl``: the source and its SHA-256, the prepared
original it read (``input_file``, ``input_sha256``, ``input_bytes``), the rule,
its kind and parameters, the output's size and SHA-256. A pair is done when
its latest record is ``ok``, was made with the same parameters and
``max_side`` from the current prepared original (``input_sha256`` equal to
that PNG's SHA-256), and its output file still has the recorded size and
SHA-256; anything else is redone, so a replaced original or an output
corrupted at the same size is made again, reruns are idempotent and a killed
run resumes. A record written before prepared originals were kept is upgraded
instead (input fields added, output kept) when its source SHA-256 is unchanged
and its output is intact. A rule that raises gives a ``failed`` record for
that image and rule only; a task that takes its worker down is retried rule
by rule, so only the pair that killed it fails. A source that cannot be
decoded gets ``failed`` records with a one-line reason and the stage goes on.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import Counter, deque
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
from .fivek.decode import decode_original
from .fivek.layout import source_files

log = logging.getLogger("pie.rules")

RULE_SCHEMA = "pie.rule-output/1"
PREPARED_SCHEMA = "pie.prepared-original/1"
SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dng")

#: zlib level of the PNGs the stage writes: level 1 encodes a 512 x 341 rule output about a quarter
#: faster than level 3 for about 2% more bytes (tests/bench/bench_rules.py).
PNG_COMPRESSION = 1


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
    for path in source_files(folder):
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

    Decoded with EXIF orientation applied and any mode converted to RGB (a DNG
    developed, an ICC-tagged file converted to sRGB: :mod:`.fivek.decode`), shrunk
    in float (area filter) so the longest side is at most ``max_side`` pixels
    (``None``: full size), then rounded to 8 bits. Raises ImageError, also
    for an original of more than :data:`MAX_RULE_PIXELS` after shrinking.
    """
    pixels = float_to_uint8(shrink_to_max_side(decode_original(data, source).pixels, max_side))
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
        png = encode_png(pixels, PNG_COMPRESSION)
    except (ImageError, OSError) as exc:
        record.update(status="failed", reason=str(exc).splitlines()[0], file=None)
    else:
        write_atomic(target, png)
        record.update(width=int(pixels.shape[1]), height=int(pixels.shape[0]), bytes=len(png),
                      sha256=hashlib.sha256(png).hexdigest())
    record["created_at"] = utc_now()
    return record


def _prepare_one(root: str, source: SourceImage, max_side: int | None) -> list[dict]:
    return [prepare_original(root, source, max_side)]


def _failed_original_list(root: str, source: SourceImage, max_side: int | None, reason: str) -> list[dict]:
    return [failed_original(root, source, max_side, reason)]


def rule_record(prepared: dict, rule: Rule, **fields) -> dict:
    """A rule record of ``rule`` on the image of the ``prepared`` record, with ``fields`` set."""
    return {"schema": RULE_SCHEMA, "rule": rule.name, "kind": rule.kind, "reference": rule.reference,
            "parameters": rule.parameters, "name": prepared["name"], "source": prepared["source"],
            "source_sha256": prepared["source_sha256"], "max_side": prepared["max_side"],
            "input_file": prepared["file"], "input_sha256": None, "input_bytes": None, "file": None, "width": None,
            "height": None, "bytes": None, "sha256": None, "status": "ok", "reason": None, "seconds": None,
            "created_at": None, **fields}


def run_image(root: str, prepared: dict, rules: list[Rule]) -> list[dict]:
    """Apply ``rules`` to the PNG of an ``ok`` prepared record and write their outputs (a Dask task).

    The PNG is read, hashed and decoded once; each rule's output is encoded
    and written on its own, and a rule that raises gives a ``failed`` record
    for that rule only. Returns one record per rule, in order. No shared state.
    """
    workspace = Workspace(Path(root))
    started = time.perf_counter()
    try:
        path = workspace.resolve_relative(prepared["file"])
        data = path.read_bytes()
        pixels = decode_image(data, str(path)).as_float()
    except (ImageError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        seconds = round(time.perf_counter() - started, 4)
        return [rule_record(prepared, rule, status="failed", reason=reason, seconds=seconds, created_at=utc_now())
                for rule in rules]
    pixels.setflags(write=False)  # shared by the rules: one that writes into its input fails alone
    read = {"input_sha256": hashlib.sha256(data).hexdigest(), "input_bytes": len(data)}
    shared = time.perf_counter() - started  # reading and decoding, shared by the rules
    records = []
    for rule in rules:
        started = time.perf_counter()
        output = workspace.rule_output(rule.name, prepared["name"])
        record = rule_record(prepared, rule, file=workspace.relative(output), **read)
        try:
            result = float_to_uint8(rule(pixels))
            png = encode_png(result, PNG_COMPRESSION)
            write_atomic(output, png)
        except (ImageError, OSError) as exc:
            record.update(status="failed", reason=str(exc).splitlines()[0], file=None)
        except Exception as exc:  # a rule that fails on one image must not stop the stage
            record.update(status="failed", reason=f"{rule.name} failed: {exc.__class__.__name__}: {exc}"[:300],
                          file=None)
        else:
            record.update(width=int(result.shape[1]), height=int(result.shape[0]), bytes=len(png),
                          sha256=hashlib.sha256(png).hexdigest())
        record.update(seconds=round(time.perf_counter() - started + shared / len(rules), 4), created_at=utc_now())
        records.append(record)
    return records


def run_pair(root: str, prepared: dict, rule: Rule) -> dict:
    """Apply one rule to the PNG of an ``ok`` prepared record and write the output (:func:`run_image` of one)."""
    return run_image(root, prepared, [rule])[0]


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
    same ``max_side``, its PNG has the recorded size and SHA-256, and the source still holds
    the bytes it was made from. The records to append are those of sources
    touched or moved without change: the new path and mtime, so the source is
    not hashed again next time.
    """
    latest = latest_by(workspace.prepared_manifest().read().records, "name")
    to_prepare, current, refreshed = [], {}, []
    for source in sources:
        record = prepared_up_to_date(workspace, latest.get(source.name), Path(source.path).absolute(), max_side)
        if record is None:
            to_prepare.append(source)
            continue
        current[source.name] = record
        if record is not latest[source.name]:
            refreshed.append(record)
    return to_prepare, current, refreshed


def prepared_up_to_date(workspace: Workspace, record: dict | None, path: Path,
                        max_side: int | None) -> dict | None:
    """``record`` (source path and mtime brought up to date) if its PNG and its source are as it says, else None.

    Up to date: status ``ok``, the same ``max_side``, the PNG of the recorded
    size and SHA-256, and the source at ``path`` of the recorded size and
    mtime or, failing that, of the recorded SHA-256 (a touched but identical
    file). Shared by ``pie rules`` and ``pie fivek``.
    """
    if not record or record.get("status") != "ok" or record.get("max_side") != max_side \
            or not _file_intact(workspace, record):
        return None
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

    ``prepared`` holds the current ``ok`` prepared record of each image. A pair
    is done when its latest record is ``ok`` with the rule's parameters and
    ``max_side``, its ``input_sha256`` is the prepared original's SHA-256, and
    its output file has the recorded size and SHA-256 (hashing an output costs
    well under a millisecond per 512-px image, next to seconds for the rules).
    An ``ok`` record without ``input_sha256`` (written before prepared
    originals were kept) whose output is otherwise intact and whose source
    SHA-256 is that of the prepared original is upgraded, not recomputed.
    """
    pending, upgraded, done = [], [], 0
    for rule in rules.values():
        latest = latest_by(workspace.rules_manifest(rule.name).read().records, "name")
        for name, original in prepared.items():
            record = latest.get(name)
            if not (record and record.get("status") == "ok" and record.get("max_side") == max_side
                    and record.get("parameters") == rule.parameters
                    and record.get("input_sha256") in (original["sha256"], None)
                    and _file_intact(workspace, record)):
                pending.append((original, rule))
            elif record.get("input_sha256") == original["sha256"]:
                done += 1
            elif record.get("source_sha256") == original["source_sha256"]:
                upgraded.append({**record, "input_file": original["file"], "input_sha256": original["sha256"],
                                 "input_bytes": original["bytes"]})
            else:
                pending.append((original, rule))
    return pending, upgraded, done


def _file_intact(workspace: Workspace, record: dict) -> bool:
    """Whether the file of ``record`` has its recorded size and SHA-256 (size first: no read when it differs)."""
    try:
        path = workspace.resolve_relative(record["file"])
        return path.stat().st_size == record["bytes"] and file_sha256(path) == record["sha256"]
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


@dataclass(frozen=True)
class _Task:
    """One Dask task: ``function(*args)`` returns a list of records; ``failed(reason)`` stands in for them.

    ``split`` gives smaller tasks doing the same work, tried one by one when
    this one takes its worker down, or nothing when it cannot be split.
    """

    key: str
    function: Callable[..., list[dict]]
    args: tuple
    failed: Callable[[str], list[dict]]
    split: Callable[[], list["_Task"]] = lambda: []


def _run_tasks(client, tasks: list[_Task], on_result: Callable[[dict], None]) -> None:
    """Run ``tasks`` on ``client``, calling ``on_result`` with each record as results arrive.

    A task that raises or takes its worker down (out of memory, say: Dask
    gives up on it with ``KilledWorker``, and on every other task the worker
    held) is run again as its ``split`` tasks once the other tasks are done,
    one at a time with nothing else on the cluster, so that a part which
    kills its worker takes no other work with it; one that cannot be split
    gives its ``failed`` records instead of ending the stage.
    """
    from distributed import as_completed

    retries: deque[_Task] = deque()

    def submit(task: _Task):
        return client.submit(task.function, *task.args, pure=False, key=f"{task.key}-{time.monotonic_ns()}")

    def outcome(task: _Task, future) -> list[dict]:
        try:
            records = future.result()
        except Exception as exc:  # the worker died or the task raised: that work fails, the rest go on
            parts = task.split()
            retries.extend(parts)
            records = [] if parts else task.failed(
                f"task failed: {exc.__class__.__name__}: {exc}".splitlines()[0][:300])
        future.release()
        return records

    submitted = {submit(task): task for task in tasks}
    try:
        for future in as_completed(list(submitted)):
            for record in outcome(submitted.pop(future), future):
                on_result(record)
        while retries:
            task = retries.popleft()
            future = submit(task)
            submitted[future] = task
            for record in outcome(task, future):
                on_result(record)
            del submitted[future]
    finally:
        for future in submitted:
            future.cancel()


def _image_task(root: str, original: dict, rules: list[Rule]) -> _Task:
    """The task applying ``rules`` to one prepared original; it splits into one task per rule."""
    def failed(reason: str) -> list[dict]:
        return [failed_pair(original, rule, reason) for rule in rules]

    def split() -> list[_Task]:
        return [_image_task(root, original, [rule]) for rule in rules] if len(rules) > 1 else []

    names = rules[0].name if len(rules) == 1 else f"{len(rules)}-rules"
    return _Task(f"rules-{names}-{original['name']}", run_image, (root, original, rules), failed, split)


def run_rules(workspace: Workspace, sources: list[SourceImage], rules: dict[str, Rule], *, client,
              max_side: int | None = None, on_done: Callable[[dict], None] | None = None,
              flush_every: int = 64) -> RulesSummary:
    """Prepare the originals, then run every pending (original, rule) pair on the Dask ``client``.

    The pending pairs of one image make one task (:func:`run_image`), so
    the image is read and decoded once for all its rules. Records are
    appended in the driver as results arrive; ``on_done`` is called with
    every rule record written for a pair (not with upgraded ones). Temporaries that a killed run left in ``fivek/`` and ``rules/`` are
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
        _run_tasks(client, [_Task(f"prepare-{source.name}", _prepare_one, (root, source, max_side),
                                  functools.partial(_failed_original_list, root, source, max_side))
                            for source in to_prepare], original_done)
        appender.flush()
        pending, upgraded, summary.skipped = pending_pairs(workspace, prepared, rules, max_side)
        for record in upgraded:
            appender.add(workspace.rules_manifest(record["rule"]), record)
        summary.upgraded = len(upgraded)
        by_image: dict[str, tuple[dict, list[Rule]]] = {}
        for original, rule in pending:
            by_image.setdefault(original["name"], (original, []))[1].append(rule)
        _run_tasks(client, [_image_task(root, original, image_rules) for original, image_rules in by_image.values()],
                   pair_done)
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

"""``pie fivek``: FiveK originals and the experts' versions kept once as sRGB PNGs, with records.

Originals go where ``pie rules`` keeps its prepared originals,
``ROOT/fivek/<name>.png``, with records of the same format in
``ROOT/manifests/fivek.jsonl`` (:mod:`pipeline.stages.rules`), plus how the
file became sRGB (``colour``, ``profile``; see :mod:`.decode`). ``pie rules``
then finds them up to date and reads the same pixels. An expert's version of
an image goes to ``ROOT/fivek/experts/<X>/<name>.png``, named as the original
of the same FiveK id, with one record per image in
``ROOT/manifests/fivek-experts.jsonl`` (keyed by ``key`` = ``X/name``) that
also carries the image's ``split`` (``train`` or ``test``, :func:`.layout.held_out_names`).

A file is redone only when its PNG is missing, ``max_side`` changed or the
source's bytes changed (size and mtime first, then its SHA-256); a changed
split alone appends a new record without decoding. A file that cannot be used
gets a ``failed`` record whose one-line reason names it, and the stage goes on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from manifests import ids
from manifests.files import remove_partials, write_atomic
from manifests.jsonl import latest_by
from manifests.records import utc_now
from manifests.workspace import Workspace

from ...imageio import ImageError, encode_png, float_to_uint8, shrink_to_max_side
from ..rules import MAX_RULE_PIXELS, PNG_COMPRESSION, PREPARED_SCHEMA, SourceImage, pending_originals, \
    prepared_up_to_date
from .decode import COLOUR_ASSUMED_SRGB, decode_original
from .layout import TEST_COUNT, expert_files, fivek_id, held_out_names

log = logging.getLogger("pie.fivek")

EXPERT_SCHEMA = "pie.fivek-expert/1"


@dataclass(frozen=True)
class Job:
    """One file to prepare: its source, output PNG (relative to ROOT) and the record fields that identify it."""

    name: str
    path: Path
    output: str
    fields: dict


def original_job(workspace: Workspace, source: SourceImage) -> Job:
    """The job of an original: ``ROOT/fivek/<name>.png``, recorded as ``pie rules`` records prepared originals."""
    return Job(source.name, Path(source.path).absolute(), workspace.relative(workspace.prepared_original(source.name)),
               {"schema": PREPARED_SCHEMA})


def prepared_png(data: bytes, source: str, max_side: int | None) -> tuple[bytes, np.ndarray, dict]:
    """PNG bytes, uint8 pixels and colour fields of a FiveK file, decoded to sRGB and shrunk as ``pie rules`` does.

    Shrunk in float (area filter) so the longest side is at most ``max_side``
    pixels (``None``: full size), then rounded to 8 bits. Raises ImageError.
    """
    original = decode_original(data, source)
    pixels = float_to_uint8(shrink_to_max_side(original.pixels, max_side))
    if pixels.shape[0] * pixels.shape[1] > MAX_RULE_PIXELS:
        raise ImageError(f"{source}: {pixels.shape[1]}x{pixels.shape[0]} is more than the rules take "
                         f"({MAX_RULE_PIXELS / 1e6:.0f} MP); give --max-side")
    return encode_png(pixels, PNG_COMPRESSION), pixels, {"colour": original.colour, "profile": original.profile}


def blank_record(job: Job, max_side: int | None) -> dict:
    """The record of ``job`` before its file is read: the prepared-original fields of ``pie rules`` and colour."""
    return {**job.fields, "name": job.name, "source": str(job.path), "source_sha256": None, "source_bytes": None,
            "source_mtime_ns": None, "max_side": max_side, "file": job.output, "width": None, "height": None,
            "bytes": None, "sha256": None, "colour": None, "profile": None, "status": "ok", "reason": None,
            "created_at": None}


def failed_record(job: Job, max_side: int | None, reason: str) -> dict:
    """A ``failed`` record of ``job`` whose one-line ``reason`` names the file."""
    record = blank_record(job, max_side)
    record.update(status="failed", reason=reason.splitlines()[0] if reason else f"{job.path}: failed", file=None,
                  created_at=utc_now())
    return record


def prepare(root: str, job: Job, max_side: int | None) -> dict:
    """Decode one file, write its PNG under ``root`` and return its record (a Dask task; no shared state)."""
    workspace = Workspace(Path(root))
    record = blank_record(job, max_side)
    try:
        mtime_ns = job.path.stat().st_mtime_ns  # taken before reading: a change while reading shows next run
        data = job.path.read_bytes()
        record.update(source_sha256=hashlib.sha256(data).hexdigest(), source_bytes=len(data),
                      source_mtime_ns=mtime_ns)
        png, pixels, colour = prepared_png(data, str(job.path), max_side)
    except (ImageError, OSError) as exc:
        reason = str(exc) if isinstance(exc, ImageError) else f"{job.path}: cannot read ({exc.strerror or exc})"
        record.update(status="failed", reason=reason.splitlines()[0], file=None)
    else:
        write_atomic(workspace.resolve_relative(job.output), png)
        record.update(colour, width=int(pixels.shape[1]), height=int(pixels.shape[0]), bytes=len(png),
                      sha256=hashlib.sha256(png).hexdigest())
    record["created_at"] = utc_now()
    return record


def expert_jobs(workspace: Workspace, experts: dict[str, Path], names_by_id: dict[str, str]
                ) -> tuple[list[Job], list[str]]:
    """One job per file of each expert's folder, named as the original of the same FiveK id; and problems."""
    jobs, problems = [], []
    for letter, folder in experts.items():
        files, found_problems = expert_files(folder)
        problems += found_problems
        for key, path in files.items():
            name = names_by_id.get(key, path.stem)
            if not ids.RULE_NAME_PATTERN.fullmatch(name):
                problems.append(f"{path}: file name cannot be used as an output name; skipped")
                continue
            output = workspace.relative(workspace.fivek_expert(letter, name))
            jobs.append(Job(name, path.absolute(), output,
                            {"schema": EXPERT_SCHEMA, "expert": letter, "key": f"{letter}/{name}", "split": None}))
    return jobs, problems


def pending_experts(workspace: Workspace, jobs: list[Job], max_side: int | None) -> tuple[list[Job], list[dict], int]:
    """Expert jobs to run, records to append (source moved or touched, split changed), and how many are current."""
    latest = latest_by(workspace.fivek_experts_manifest().read().records, "key")
    pending, refreshed, current = [], [], 0
    for job in jobs:
        previous = latest.get(job.fields["key"])
        record = prepared_up_to_date(workspace, previous, job.path, max_side)
        if record is None:
            pending.append(job)
            continue
        current += 1
        record = {**record, "split": job.fields["split"]}
        if record != previous:
            refreshed.append(record)
    return pending, refreshed, current


@dataclass
class FiveKSummary:
    """What a ``pie fivek`` run did, by kind of file (``originals``, ``experts``) and status."""

    done: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    assumed_srgb: int = 0
    splits: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.done["originals failed"] + self.done["experts failed"]

    def line(self) -> str:
        return (f"fivek: {self.done['originals ok']} originals prepared, {self.skipped['originals']} already done, "
                f"{self.done['originals failed']} failed; {self.done['experts ok']} expert images prepared, "
                f"{self.skipped['experts']} already done, {self.done['experts failed']} failed "
                f"(test split {self.splits['test']}, train {self.splits['train']}); "
                f"{self.assumed_srgb} without a colour profile taken as sRGB; "
                f"{len(self.problems)} input problems in {self.seconds:.1f} s")


def run_fivek(workspace: Workspace, sources: list[SourceImage], experts: dict[str, Path], *,
              max_side: int | None = None, test_list: Path | None = None, test_count: int = TEST_COUNT,
              client=None, on_done: Callable[[dict], None] | None = None) -> FiveKSummary:
    """Prepare the pending originals and expert versions, on the Dask ``client`` or (None) in this process.

    Records are appended as results arrive; ``on_done`` is called with the
    record of each file prepared (or failed) now. The experts' split is
    computed over the names of ``sources`` and of the experts' files
    (:func:`.layout.held_out_names`). Temporaries a killed run left in
    ``ROOT/fivek`` are removed first.
    """
    started = time.monotonic()
    summary = FiveKSummary()
    remove_partials(workspace.root / "fivek")
    originals_store, experts_store = workspace.prepared_manifest(), workspace.fivek_experts_manifest()

    to_prepare, current, refreshed = pending_originals(workspace, sources, max_side)
    originals_store.append(refreshed)
    summary.skipped["originals"] = len(current)

    names_by_id = {fivek_id(name): name for name in latest_by(originals_store.read().records, "name")}
    names_by_id.update({fivek_id(source.name): source.name for source in sources})
    jobs, summary.problems = expert_jobs(workspace, experts, names_by_id)
    test = held_out_names(sorted({source.name for source in sources} | {job.name for job in jobs}), test_list,
                          test_count)
    jobs = [Job(job.name, job.path, job.output, {**job.fields, "split": "test" if job.name in test else "train"})
            for job in jobs]
    summary.splits.update(job.fields["split"] for job in jobs)
    pending, refreshed, summary.skipped["experts"] = pending_experts(workspace, jobs, max_side)
    experts_store.append(refreshed)

    work = [original_job(workspace, source) for source in to_prepare] + pending
    for record in _results(str(workspace.root), work, max_side, client):
        kind = "experts" if record["schema"] == EXPERT_SCHEMA else "originals"
        (experts_store if kind == "experts" else originals_store).append([record])
        summary.done[f"{kind} {record['status']}"] += 1
        if record["status"] != "ok":
            log.warning("%s", record["reason"])
            target = workspace.fivek_expert(record["expert"], record["name"]) if kind == "experts" \
                else workspace.prepared_original(record["name"])
            target.unlink(missing_ok=True)  # made from bytes no longer there
        elif record["colour"] == COLOUR_ASSUMED_SRGB:
            summary.assumed_srgb += 1
            log.info("%s: no ICC profile; taken as sRGB", record["source"])
        if on_done:
            on_done(record)
    summary.seconds = time.monotonic() - started
    return summary


def _results(root: str, jobs: list[Job], max_side: int | None, client) -> Iterator[dict]:
    """The record of every job as it finishes; a task that raises or whose worker dies gives a failed record."""
    if client is None:
        for job in jobs:
            yield prepare(root, job, max_side)
        return
    from distributed import as_completed

    futures = {client.submit(prepare, root, job, max_side, pure=False): job for job in jobs}
    try:
        for future in as_completed(list(futures)):
            try:
                record = future.result()
            except Exception as exc:  # the worker died or the task raised: that file fails, the rest go on
                job = futures[future]
                record = failed_record(job, max_side, f"{job.path}: task failed: {exc.__class__.__name__}: {exc}")
            future.release()
            yield record
    finally:
        for future in futures:
            future.cancel()


def expert_test_users(workspace: Workspace, experts: Iterable[str]) -> list[tuple[str, Path, Path, frozenset[str]]]:
    """``(user, originals folder, expert folder, test names)`` of each expert prepared by ``pie fivek``.

    The user is ``fivek-expert<X>``; the test names are those recorded with
    ``split`` ``test``. Raises ValueError naming the manifest for an expert
    with no prepared image.
    """
    store = workspace.fivek_experts_manifest()
    latest = [record for record in latest_by(store.read().records, "key").values() if record.get("status") == "ok"]
    users = []
    for letter in experts:
        records = [record for record in latest if record.get("expert") == letter]
        if not records:
            raise ValueError(f"{store.path}: no prepared image of expert {letter}; run `pie fivek --expert "
                             f"{letter}=DIR` first")
        test = frozenset(record["name"] for record in records if record.get("split") == "test")
        users.append((f"fivek-expert{letter}", workspace.root / "fivek",
                      workspace.fivek_expert(letter, records[0]["name"]).parent, test))
    return users

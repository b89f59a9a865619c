"""``pie train-degrader`` and ``pie degrade``: DSN from rule outputs to originals, then over the crawl.

Kosugi & Yamasaki (TCSVT 2023, Sec. IV-A) make pseudo originals of the Flickr
photos with DSN (Zhao et al., ICCV 2021) trained the opposite way round: from
the 25 rule-based outputs back to their FiveK originals. This module gives the
degrader package its data (it never reads files itself) and runs inference
over the crawl:

* training pairs are every ``ok`` rule output with the prepared original it
  was made from (``ROOT/fivek/<name>.png``, the record's ``input_file``), read
  from the rules manifests, so both images of a pair are exactly what the rule
  read and wrote; about 10% of the original images (by hash of their name) are
  held out for validation;
* ``degrade`` writes ``ROOT/degraded/<nsid>/<photo_id>.jpg`` (quality 95) or
  ``.png`` and appends the photo's record with a ``degraded`` object (file,
  sha256, format, the checkpoint's weights digest). Batches run in-process on
  a GPU, or as Dask tasks with one torch thread per worker on CPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterable

import numpy as np

from manifests.files import file_sha256, remove_partials, write_atomic
from manifests.jsonl import latest_by
from manifests.workspace import Workspace

from ..imageio import ImageError, encode_jpeg, encode_png, read_image

log = logging.getLogger("pie.degrade")

VALID_FRACTION = 0.10


# Training pairs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RulePair:
    """One training pair: a rule output and the prepared original (``ROOT/fivek/<name>.png``) it was made from."""

    output: Path
    original: Path
    name: str
    rule: str


class RulePairs:
    """A :class:`degrader.train.PairSource` over rule outputs; originals cached (LRU, ``cache_size`` images)."""

    def __init__(self, pairs: list[RulePair], cache_size: int = 64):
        self.pairs = pairs
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.pairs)

    def _original(self, pair: RulePair) -> np.ndarray:
        if pair.original in self._cache:
            self._cache.move_to_end(pair.original)
            return self._cache[pair.original]
        image = read_image(pair.original).as_uint8()
        self._cache[pair.original] = image
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(enhanced, original)``, both uint8 RGB ``H x W x 3`` of the same size."""
        pair = self.pairs[index]
        return read_image(pair.output).as_uint8(), self._original(pair)

    def name(self, index: int) -> str:
        """``<rule>/<image>`` of pair ``index``."""
        return f"{self.pairs[index].rule}/{self.pairs[index].name}"


def _held_out(name: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"pie-degrader-valid/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def rule_pairs(workspace: Workspace, *, valid_fraction: float = VALID_FRACTION,
               min_side: int = 1) -> tuple[RulePairs, RulePairs, list[str]]:
    """Training and validation pairs from the rules manifests, and one-line problems.

    A rule output is used with the prepared original its record names
    (``input_file``) when that is still the current prepared original of its
    image (same SHA-256 as the latest ``ok`` record in ``manifests/fivek.jsonl``);
    the others are left out and counted in one problem per manifest. Every
    original name falls in one split, so no original is seen in both. At least
    one name is held out when there are two or more.
    """
    manifest_dir = workspace.root / "manifests" / "rules"
    prepared = latest_by(workspace.prepared_manifest().read().records, "name")
    problems: list[str] = []
    by_name: dict[str, list[RulePair]] = {}
    for path in sorted(manifest_dir.glob("*.jsonl")) if manifest_dir.is_dir() else []:
        read = workspace.rules_manifest(path.stem).read()
        problems += read.problems
        stale = 0
        for record in latest_by(read.records, "name").values():
            if record.get("status") != "ok":
                continue
            current = prepared.get(record["name"]) or {}
            if not record.get("input_file") or current.get("status") != "ok" \
                    or current.get("sha256") != record.get("input_sha256"):
                stale += 1
                continue
            try:
                output = workspace.resolve_relative(record["file"])
                original = workspace.resolve_relative(record["input_file"])
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{path.name} {record.get('name')}: {exc}")
                continue
            if min(record.get("width") or 0, record.get("height") or 0) < min_side:
                problems.append(f"{record['file']}: smaller than the {min_side}-px crop; left out")
                continue
            by_name.setdefault(record["name"], []).append(RulePair(output, original, record["name"], record["rule"]))
        if stale:
            problems.append(f"{path.name}: {stale} outputs without their current prepared original in fivek/ "
                            "left out; rerun `pie rules`")
    names = sorted(by_name)
    held = [name for name in names if _held_out(name, valid_fraction)]
    if not held and len(names) >= 2:
        held = [min(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())]
    train = [pair for name in names if name not in held for pair in by_name[name]]
    valid = [pair for name in held for pair in by_name[name]]
    return RulePairs(train), RulePairs(valid), problems


# Degrading the crawl --------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradeJob:
    """One photo to degrade: where it is and where its pseudo original goes (paths relative to ROOT)."""

    user: str
    photo_id: str
    source: str
    target: str


def pending_jobs(workspace: Workspace, digest: str, image_format: str) -> tuple[list[DegradeJob], int]:
    """Kept Flickr photos without an up-to-date pseudo original, and how many are up to date."""
    jobs, done = [], 0
    suffix = ".png" if image_format == "png" else ".jpg"
    for nsid in workspace.crawled_users():
        for record in latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").values():
            if record.get("status") != "ok":
                continue
            degraded = record.get("degraded") or {}
            target = workspace.degraded_photo(nsid, record["photo_id"], suffix)
            if degraded.get("model") == digest and degraded.get("source_sha256") == record.get("sha256") \
                    and _matches(target, degraded.get("sha256")):
                done += 1
                continue
            jobs.append(DegradeJob(nsid, record["photo_id"], record["file"], workspace.relative(target)))
    return jobs, done


def _matches(path: Path, sha256: str | None) -> bool:
    try:
        return sha256 is not None and file_sha256(path) == sha256
    except OSError:
        return False


_MODELS: dict = {}


def _model(checkpoint: str, device: str):
    """The degrader of ``checkpoint``, loaded once per process."""
    from degrader.train import load_degrader

    key = (checkpoint, os.stat(checkpoint).st_mtime_ns, device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_degrader(checkpoint, device)
    return _MODELS[key]


def degrade_jobs(root: str, checkpoint: str, jobs: list[DegradeJob], *, device: str = "cpu",
                 image_format: str = "jpeg", quality: int = 95, max_batch_pixels: int = 2**21,
                 single_thread: bool = False) -> list[dict]:
    """Degrade a batch of photos and write the pseudo originals (a Dask task, or called in-process).

    Returns one result per job: ``{"user", "photo_id", "status", "reason", "degraded"}``.
    """
    if single_thread:
        from ..cluster import single_thread as pin_threads

        pin_threads()
    workspace = Workspace(Path(root))
    model, digest = _model(checkpoint, device)
    results, images, ready = [], [], []
    for job in jobs:
        try:
            decoded = read_image(workspace.resolve_relative(job.source))
            images.append(decoded.as_uint8())
            ready.append(job)
        except (ImageError, ValueError) as exc:
            results.append({"user": job.user, "photo_id": job.photo_id, "status": "failed",
                            "reason": str(exc).splitlines()[0]})
    outputs = _degrade_each_finite(model, images, device, max_batch_pixels)
    for job, pixels in zip(ready, outputs):
        if pixels is None:
            results.append({"user": job.user, "photo_id": job.photo_id, "status": "failed",
                            "reason": f"{job.source}: the degrader gave NaN or infinite values for this photo"})
            continue
        data = encode_png(pixels) if image_format == "png" else encode_jpeg(pixels, quality)
        write_atomic(workspace.resolve_relative(job.target), data)
        results.append({"user": job.user, "photo_id": job.photo_id, "status": "ok", "reason": None,
                        "degraded": {"file": job.target, "sha256": hashlib.sha256(data).hexdigest(),
                                     "format": image_format, "model": digest}})
    return results


def _degrade_each_finite(model, images: list, device: str, max_batch_pixels: int) -> list:
    """``degrade_batch`` of ``images``; where a batch has non-finite output, photo by photo, None for each bad one."""
    from degrader.infer import NonFiniteOutput, degrade_batch

    try:
        return degrade_batch(model, images, device, max_batch_pixels=max_batch_pixels) if images else []
    except NonFiniteOutput:
        outputs = []
        for image in images:
            try:
                outputs.append(degrade_batch(model, [image], device, max_batch_pixels=max_batch_pixels)[0])
            except NonFiniteOutput:
                outputs.append(None)
        return outputs


def batches_by_size(workspace: Workspace, jobs: list[DegradeJob], batch_size: int) -> list[list[DegradeJob]]:
    """Jobs grouped so that each batch holds photos of one size where possible (JPEG headers only)."""
    from PIL import Image

    def size_of(job: DegradeJob) -> tuple[int, int]:
        try:
            with Image.open(workspace.resolve_relative(job.source)) as image:
                return image.size
        except (OSError, ValueError):
            return (0, 0)

    ordered = sorted(jobs, key=lambda job: (size_of(job), job.user, job.photo_id))
    return [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]


@dataclass
class DegradeSummary:
    """What a ``pie degrade`` run did."""

    statuses: Counter = field(default_factory=Counter)
    skipped: int = 0
    seconds: float = 0.0
    digest: str = ""

    def line(self) -> str:
        rate = self.statuses["ok"] / self.seconds if self.seconds else 0.0
        return (f"degrade: {self.statuses['ok']} pseudo originals written ({rate:.1f}/s), {self.skipped} already "
                f"done, {self.statuses['failed']} failed; model {self.digest[:12]}")


def run_degrade(workspace: Workspace, checkpoint: Path, *, device: str = "cpu",
                client_factory: Callable[[], ContextManager] | None = None, image_format: str = "jpeg",
                quality: int = 95, batch_size: int = 8,
                on_done: Callable[[int], None] | None = None) -> DegradeSummary:
    """Degrade every pending photo: in-process on ``device``, or on a Dask client (CPU).

    ``client_factory`` makes the client as a context manager (e.g.
    :func:`pipeline.cluster.dask_client`); it is called only when there is
    work, so a run with nothing to do returns at once.
    """
    from degrader.train import load_degrader

    started = time.monotonic()
    summary = DegradeSummary()
    remove_partials(workspace.root / "degraded")  # left by a killed run
    _, summary.digest = load_degrader(checkpoint, "cpu")  # fails early on a bad checkpoint
    jobs, summary.skipped = pending_jobs(workspace, summary.digest, image_format)
    batches = batches_by_size(workspace, jobs, batch_size)
    records = {nsid: latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id")
               for nsid in {job.user for job in jobs}}
    kwargs = dict(device=device, image_format=image_format, quality=quality)
    with contextlib.ExitStack() as stack:
        if client_factory is None or not batches:
            result_batches: Iterable[list[dict]] = (
                degrade_jobs(str(workspace.root), str(checkpoint), batch, **kwargs) for batch in batches)
        else:
            from distributed import as_completed

            client = stack.enter_context(client_factory())
            futures = [client.submit(degrade_jobs, str(workspace.root), str(checkpoint), batch, single_thread=True,
                                     pure=False, **kwargs) for batch in batches]
            result_batches = (future.result() for future in as_completed(futures))
        _record_results(workspace, records, result_batches, summary, on_done)
    summary.seconds = time.monotonic() - started
    return summary


def _record_results(workspace: Workspace, records: dict, result_batches: Iterable[list[dict]],
                    summary: DegradeSummary, on_done: Callable[[int], None] | None) -> None:
    """Append a record with its ``degraded`` entry for every photo written, batch by batch."""
    for results in result_batches:
        appended: dict[str, list[dict]] = {}
        for result in results:
            summary.statuses[result["status"]] += 1
            if result["status"] != "ok":
                log.warning("%s/%s: %s", result["user"], result["photo_id"], result["reason"])
                continue
            record = records[result["user"]][result["photo_id"]]
            degraded = {**result["degraded"], "source_sha256": record["sha256"]}
            appended.setdefault(result["user"], []).append({**record, "degraded": degraded})
        for nsid, new_records in appended.items():
            workspace.flickr_manifest(nsid).append(new_records)
        if on_done:
            on_done(len(results))

"""``pie shard``: the pairs of a workspace as user-grouped WebDataset tar shards, written on Dask.

Each planned shard (:mod:`pipeline.stages.shard.plan`) is one Dask task that reads
its pairs from the workspace, checks both files against the SHA-256 of their
records, and writes ``OUT/<split>-NNNNNN.tar`` with
:class:`pipeline.stages.shard.tar_writer.TarStream` (the bytes ``webdataset.TarWriter``
would write, at a fraction of the cost, hashed as they are written) under a
hidden temporary name (``.<name>.part-<pid>-<id>``), renamed when complete.
Tars are reproducible: members sorted within a sample, fixed mtime,
owner ``pie`` (uid/gid 0) and mode 0444, so the same inputs give byte-identical
shards whatever the worker count.

Resume: after a shard is renamed into place its state (the plan digest, the
shard's size and hashes) is written to ``OUT/.pie-state/<name>.json``. A rerun
keeps a shard whose state matches the new plan, rewrites the rest, removes
shards the plan no longer has and stale temporaries, and only then writes
``index.json`` and the ``wids`` indexes; the old index is removed before any
shard changes, so an index never names a shard that is not complete and current.

``OUT`` may be any fsspec URL; nothing here assumes a local path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

from manifests.files import PARTIAL_MARK
from manifests.samples import SHARD_INDEX_SCHEMA, SHARD_SPLITS, image_extension
from manifests.workspace import Workspace

from .plan import Pair, ShardPlan, Skipped
from .tar_writer import TarStream

log = logging.getLogger("pie.shard")

INDEX_NAME = "index.json"
STATE_DIR = ".pie-state"
#: Modification time of every tar member: 2000-01-01T00:00:00Z.
TAR_MTIME = 946_684_800


def wids_index_name(split: str) -> str:
    """File name of the ``wids`` shard index of one split, e.g. ``wids-train.json``."""
    return f"wids-{split}.json"


class UnusablePair(ValueError):
    """A pair whose files no longer match its records; the message is one line."""


def _member(workspace: Workspace, relative: str, sha256: str, role: str) -> tuple[str, bytes]:
    try:
        data = workspace.resolve_relative(relative).read_bytes()
    except (OSError, ValueError) as exc:
        raise UnusablePair(f"{role} file {relative} cannot be read ({exc.__class__.__name__})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UnusablePair(f"{relative} does not match the SHA-256 of its record")
    extension = image_extension(data)
    if extension is None:
        raise UnusablePair(f"{relative} is not a JPEG, PNG, WebP or TIFF file")
    return f"{role}.{extension}", data


def sample_of(workspace: Workspace, pair: Pair) -> dict:
    """The WebDataset sample of ``pair``: key, ``input.<ext>``, ``target.<ext>`` and ``json`` (all bytes)."""
    sample = {"__key__": pair.key, "json": pair.json_bytes}
    for role, relative, digest in (("input", pair.input_file, pair.meta["input_sha256"]),
                                   ("target", pair.target_file, pair.meta["target_sha256"])):
        name, data = _member(workspace, relative, digest, role)
        sample[name] = data
    return sample


def _fsync(handle) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.fsync(handle.fileno())


def _write_json_atomic(fs, path: str, value) -> None:
    folder = posixpath.dirname(path)
    fs.makedirs(folder, exist_ok=True)
    temporary = posixpath.join(folder, f".{posixpath.basename(path)}{PARTIAL_MARK}{uuid.uuid4().hex}")
    with fs.open(temporary, "wb") as handle:
        handle.write(json.dumps(value, indent=1, sort_keys=True).encode("utf-8") + b"\n")
        handle.flush()
        _fsync(handle)
    fs.mv(temporary, path)


def write_shard(root: str, out: str, plan: ShardPlan) -> dict:
    """Write one shard and its state file (a Dask task); returns the shard's state.

    Pairs whose files no longer match their records are left out and listed
    under ``skipped``; the shard is still complete for the rest.
    """
    from fsspec.core import url_to_fs

    fs, base = url_to_fs(out)
    workspace = Workspace(Path(root))
    temporary = posixpath.join(base, f".{plan.name}{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    written, skipped, users = 0, [], {}
    with fs.open(temporary, "wb") as raw:
        with TarStream(raw, mtime=TAR_MTIME, mode=0o444, uname="pie", gname="pie") as tar:
            for pair in plan.pairs:
                try:
                    sample = sample_of(workspace, pair)
                except UnusablePair as exc:
                    skipped.append(Skipped(pair.key, str(exc)).line())
                    continue
                tar.add_sample(sample)
                written += 1
                users[pair.user] = users.get(pair.user, 0) + 1
    fs.mv(temporary, posixpath.join(base, plan.name))
    state = {"name": plan.name, "split": plan.split, "digest": plan.digest, "samples": written,
             "users": list(users), "user_samples": users,
             "bytes": tar.bytes, "sha256": tar.sha256.hexdigest(),
             "skipped": skipped}
    _write_json_atomic(fs, posixpath.join(base, STATE_DIR, f"{plan.name}.json"), state)
    return state


@dataclass
class ShardSummary:
    """What a ``pie shard`` run did."""

    written: int = 0
    kept: int = 0
    removed: int = 0
    samples: int = 0
    users: int = 0
    bytes: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    index: str = ""

    def line(self) -> str:
        rate = self.bytes_written / 1e6 / self.seconds if self.seconds else 0.0
        return (f"shard: {self.written} shards written ({rate:.1f} MB/s), {self.kept} kept, {self.removed} removed; "
                f"{self.samples} samples of {self.users} users, {self.bytes / 1e6:.1f} MB in "
                f"{self.written + self.kept} shards; {len(self.skipped)} pairs skipped; index {self.index}")


def _read_state(fs, path: str) -> dict | None:
    try:
        with fs.open(path, "rb") as handle:
            state = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _is_current(fs, base: str, plan: ShardPlan) -> dict | None:
    """The saved state of ``plan``'s shard when the shard on disk is that of the same plan, else None."""
    state = _read_state(fs, posixpath.join(base, STATE_DIR, f"{plan.name}.json"))
    if state is None or state.get("digest") != plan.digest:
        return None
    try:
        size = fs.size(posixpath.join(base, plan.name))
    except (OSError, FileNotFoundError):
        return None
    return state if size == state.get("bytes") else None


def _is_shard_name(name: str) -> bool:
    stem, _, number = name.removesuffix(".tar").rpartition("-")
    return name.endswith(".tar") and stem in SHARD_SPLITS and len(number) == 6 and number.isdigit()


def _listing(fs, folder: str) -> list[str]:
    try:
        return [posixpath.basename(path.rstrip("/")) for path in fs.ls(folder, detail=False)]
    except (OSError, FileNotFoundError):
        return []


def remove_temporaries(fs, base: str) -> int:
    """Delete leftovers of interrupted writes in ``base`` and its state folder; return how many."""
    removed = 0
    for folder in (base, posixpath.join(base, STATE_DIR)):
        for name in _listing(fs, folder):
            if name.startswith(".") and PARTIAL_MARK in name:
                fs.rm(posixpath.join(folder, name))
                removed += 1
    return removed


def build_index(states: list[dict], skipped: list[str]) -> dict:
    """The ``index.json`` document: every shard, totals per split and overall, and what was skipped."""
    shards = [{key: state[key] for key in ("name", "split", "samples", "users", "user_samples", "bytes", "sha256")
               if key in state} for state in states]
    splits = {split: {"shards": sum(s["split"] == split for s in shards),
                      "samples": sum(s["samples"] for s in shards if s["split"] == split),
                      "users": len({u for s in shards if s["split"] == split for u in s["users"]}),
                      "bytes": sum(s["bytes"] for s in shards if s["split"] == split)}
              for split in SHARD_SPLITS}
    totals = {key: sum(part[key] for part in splits.values()) for key in ("shards", "samples", "users", "bytes")}
    return {"schema": SHARD_INDEX_SCHEMA, "format": "webdataset", "members": ["input.<ext>", "target.<ext>", "json"],
            "shards": shards, "splits": splits, "totals": totals, "skipped": sorted(skipped)}


def build_wids_index(states: list[dict], split: str) -> dict:
    """The ``wids`` shard index (``wids-shard-index-v1``) of one split, URLs relative to the index.

    It has no ``md5sum`` fields (optional in the format), so wids does not hash
    every shard again on open; ``index.json`` carries each shard's SHA-256.
    """
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"pie-{split}",
            "shardlist": [{"url": state["name"], "nsamples": state["samples"], "filesize": state["bytes"]}
                          for state in states if state["split"] == split]}


def run_shard(workspace: Workspace, plans: list[ShardPlan], skipped: list[Skipped], out: str, *,
              client_factory: Callable[[], ContextManager] | None = None,
              on_done: Callable[[dict], None] | None = None) -> ShardSummary:
    """Write the shards of ``plans`` that are missing or stale into ``out`` and index them.

    ``client_factory`` opens a Dask client (a context manager); it is called
    only when some shard has to be written. Without it shards are written in
    this process.
    """
    from fsspec.core import url_to_fs

    started = time.monotonic()
    summary = ShardSummary(index=posixpath.join(out.rstrip("/"), INDEX_NAME))
    fs, base = url_to_fs(out)
    fs.makedirs(posixpath.join(base, STATE_DIR), exist_ok=True)
    remove_temporaries(fs, base)
    states: dict[str, dict] = {}
    pending: list[ShardPlan] = []
    for plan in plans:
        state = _is_current(fs, base, plan)
        if state is None:
            pending.append(plan)
        else:
            states[plan.name] = state
    planned = {plan.name for plan in plans}
    extra = sorted(name for name in _listing(fs, base) if _is_shard_name(name) and name not in planned)
    index_files = [INDEX_NAME, *(wids_index_name(split) for split in SHARD_SPLITS)]
    if pending or extra:
        for name in index_files:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm(posixpath.join(base, name))
    summary.kept = len(states)
    if pending:
        if client_factory is None:
            results = (write_shard(str(workspace.root), out, plan) for plan in pending)
            _collect(results, states, summary, on_done)
        else:
            from distributed import as_completed

            with client_factory() as client:
                futures = [client.submit(write_shard, str(workspace.root), out, plan, pure=False,
                                         key=f"shard-{plan.name}-{uuid.uuid4().hex[:8]}") for plan in pending]
                _collect((future.result() for future in as_completed(futures)), states, summary, on_done)
    for name in extra:
        fs.rm(posixpath.join(base, name))
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(posixpath.join(base, STATE_DIR, f"{name}.json"))
    summary.removed = len(extra)
    ordered = [states[plan.name] for plan in plans]
    summary.skipped = [item.line() for item in skipped] + [line for state in ordered for line in state["skipped"]]
    _write_json_atomic(fs, posixpath.join(base, INDEX_NAME), build_index(ordered, summary.skipped))
    for split in SHARD_SPLITS:
        _write_json_atomic(fs, posixpath.join(base, wids_index_name(split)), build_wids_index(ordered, split))
    summary.samples = sum(state["samples"] for state in ordered)
    summary.users = len({user for state in ordered for user in state["users"]})
    summary.bytes = sum(state["bytes"] for state in ordered)
    summary.seconds = time.monotonic() - started
    return summary


def _collect(results, states: dict, summary: ShardSummary, on_done) -> None:
    for state in results:
        states[state["name"]] = state
        summary.written += 1
        summary.bytes_written += state["bytes"]
        if on_done:
            on_done(state)


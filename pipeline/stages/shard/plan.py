"""What ``pie shard`` writes: the pairs of a workspace and how they are packed into shards.

Everything here is decided in one process from the manifests alone (plus a
``stat`` per file), so the plan, and therefore every shard's bytes, is the same
whatever the number of Dask workers that later write it.

* A Flickr pair is a photo whose latest record is ``ok`` and carries a
  ``degraded`` entry made from the photo's current bytes (input = the pseudo
  original, target = the downloaded file). A rule pair is an ``ok`` rule output
  with its prepared original (input = ``fivek/<name>.png``, target = the output).
* Pairs are grouped by user; users are ordered Flickr first (by NSID), then
  the rule users (by name), pairs within a user by photo id or image name.
* Users are packed greedily into shards of at most ``maxcount`` samples and
  ``maxsize`` bytes; a user is split across consecutive shards only when it
  alone does not fit in one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property

from manifests.jsonl import latest_by
from manifests.samples import SHARD_SPLITS, flickr_sample, rule_sample, sample_key, shard_split
from manifests.workspace import Workspace

#: Bump when the bytes a plan produces change, so existing shards are rewritten.
FORMAT_VERSION = 1
_TAR_BLOCK = 512
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Pair:
    """One sample to write: its key, metadata and the two files (relative to ROOT)."""

    key: str
    user: str
    split: str
    input_file: str
    target_file: str
    meta: dict = field(hash=False, compare=False)
    nbytes: int = 0

    @cached_property
    def json_bytes(self) -> bytes:
        """The ``json`` member (serialised once)."""
        return canonical_json(self.meta)


@dataclass(frozen=True)
class Skipped:
    """A pair that cannot be sharded, and why (one line)."""

    what: str
    reason: str

    def line(self) -> str:
        return f"{self.what}: {self.reason}"


@dataclass
class ShardPlan:
    """One shard to write: its name, split and pairs in order, and a digest of everything it will hold."""

    name: str
    split: str
    pairs: list[Pair]

    @cached_property
    def digest(self) -> str:
        """SHA-256 (computed once) over the format version and every pair's key, files, hashes and metadata."""
        digest = hashlib.sha256(f"pie-shard/{FORMAT_VERSION}/{self.name}\n".encode())
        for pair in self.pairs:
            digest.update(pair.key.encode() + b"\0" + pair.input_file.encode() + b"\0"
                          + pair.target_file.encode() + b"\0" + pair.json_bytes + b"\n")
        return digest.hexdigest()


def canonical_json(value) -> bytes:
    """``value`` as UTF-8 JSON with sorted keys: the same data always gives the same bytes."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")


def parse_size(text: str | int) -> int:
    """Bytes from ``256MB``, ``1.5GiB``, ``4096`` (SI and binary units); ValueError otherwise."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size such as 256MB or 1GiB")
    value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return value


def _file_size(workspace: Workspace, relative: str) -> int | None:
    """Size of a workspace file, None when it is missing; a path outside the workspace raises ValueError."""
    try:
        return workspace.resolve_relative(relative).stat().st_size
    except OSError:
        return None


def _member_bytes(size: int) -> int:
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _pair(workspace: Workspace, meta: dict, input_file: str, target_file: str,
          target_bytes: int | None) -> Pair | Skipped:
    key = sample_key(meta)
    sizes = {}
    for role, relative in (("input", input_file), ("target", target_file)):
        size = _file_size(workspace, relative)
        if size is None:
            return Skipped(key, f"{role} file {relative} is missing")
        sizes[role] = size
    if target_bytes is not None and sizes["target"] != target_bytes:
        return Skipped(key, f"{target_file} has {sizes['target']} bytes, its record says {target_bytes}")
    nbytes = sum(_member_bytes(size) for size in (sizes["input"], sizes["target"], len(canonical_json(meta))))
    return Pair(key, meta["user"], shard_split(meta["split"]), input_file, target_file, meta, nbytes)


def flickr_pairs(workspace: Workspace) -> tuple[list[Pair], list[Skipped]]:
    """Every kept Flickr photo with a current pseudo original, and the kept photos that cannot be used."""
    pairs: list[Pair] = []
    skipped: list[Skipped] = []
    for nsid in workspace.crawled_users():
        read = workspace.flickr_manifest(nsid).read()
        skipped += [Skipped(str(workspace.flickr_manifest(nsid).path), problem) for problem in read.problems]
        latest = latest_by(read.records, "photo_id")
        for photo_id in sorted(latest, key=lambda value: (len(value), value)):
            record = latest[photo_id]
            if record.get("status") != "ok":
                continue
            what = f"{nsid}/{photo_id}"
            degraded = record.get("degraded")
            if not isinstance(degraded, dict) or not degraded.get("file"):
                skipped.append(Skipped(what, "no pseudo original; run `pie degrade`"))
                continue
            if degraded.get("source_sha256") != record.get("sha256"):
                skipped.append(Skipped(what, "pseudo original made from other bytes of the photo; "
                                             "run `pie degrade`"))
                continue
            try:
                result = _pair(workspace, flickr_sample(record), degraded["file"], record["file"], record.get("bytes"))
            except (KeyError, TypeError, ValueError) as exc:
                result = Skipped(what, f"record unusable: {exc}")
            (pairs if isinstance(result, Pair) else skipped).append(result)
    return pairs, skipped


def rule_pairs(workspace: Workspace) -> tuple[list[Pair], list[Skipped]]:
    """Every ``ok`` rule output with its prepared original, and those that cannot be used."""
    pairs: list[Pair] = []
    skipped: list[Skipped] = []
    folder = workspace.root / "manifests" / "rules"
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            store = workspace.rules_manifest(path.stem)
        except ValueError as exc:
            skipped.append(Skipped(str(path), str(exc)))
            continue
        read = store.read()
        skipped += [Skipped(str(path), problem) for problem in read.problems]
        latest = latest_by(read.records, "name")
        for name in sorted(latest):
            record = latest[name]
            if record.get("status") != "ok":
                continue
            what = f"rules/{path.stem}/{name}"
            if not record.get("input_file") or not record.get("input_sha256"):
                skipped.append(Skipped(what, "no prepared original recorded; rerun `pie rules`"))
                continue
            try:
                result = _pair(workspace, rule_sample(record), record["input_file"], record["file"],
                               record.get("bytes"))
            except (KeyError, TypeError, ValueError) as exc:
                result = Skipped(what, f"record unusable: {exc}")
            (pairs if isinstance(result, Pair) else skipped).append(result)
    return pairs, skipped


def collect_pairs(workspace: Workspace, only: str | None = None) -> tuple[list[Pair], list[Skipped]]:
    """The pairs of ``workspace`` (``only``: ``flickr`` or ``rules``) in shard order, and what was skipped."""
    pairs: list[Pair] = []
    skipped: list[Skipped] = []
    for source, collect in (("flickr", flickr_pairs), ("rules", rule_pairs)):
        if only in (None, source):
            found, missed = collect(workspace)
            pairs += found
            skipped += missed
    return pairs, skipped


def pack(pairs: list[Pair], *, maxcount: int = 1000, maxsize: int = 256 * 10**6) -> list[ShardPlan]:
    """Pack ``pairs`` (already in shard order) into shards, per split, keeping users contiguous.

    A shard holds at most ``maxcount`` samples and about ``maxsize`` bytes of
    tar members; a user starts a new shard when it does not fit in the current
    one, and only a user larger than a whole shard is split across shards.
    """
    if maxcount < 1 or maxsize < 1:
        raise ValueError("maxcount and maxsize must be positive")
    plans: list[ShardPlan] = []
    for split in SHARD_SPLITS:
        groups: dict[str, list[Pair]] = {}
        for pair in pairs:
            if pair.split == split:
                groups.setdefault(pair.user, []).append(pair)
        current: list[Pair] = []
        size = 0

        def close() -> None:
            nonlocal current, size
            if current:
                plans.append(ShardPlan(f"{split}-{sum(p.split == split for p in plans):06d}.tar", split, current))
            current, size = [], 0

        for group in groups.values():
            group_size = sum(pair.nbytes for pair in group)
            if current and (len(current) + len(group) > maxcount or size + group_size > maxsize):
                close()
            for pair in group:  # only a user larger than a shard reaches a full shard here
                if current and (len(current) >= maxcount or size + pair.nbytes > maxsize):
                    close()
                current.append(pair)
                size += pair.nbytes
        close()
    return plans


def workspace_plan(workspace: Workspace, *, only: str | None = None, maxcount: int = 1000,
                   maxsize: int = 256 * 10**6) -> tuple[list[ShardPlan], list[Skipped]]:
    """The shards ``pie shard`` writes for ``workspace``, and the pairs it cannot use."""
    pairs, skipped = collect_pairs(workspace, only)
    return pack(pairs, maxcount=maxcount, maxsize=maxsize), skipped


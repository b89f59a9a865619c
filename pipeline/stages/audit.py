"""``pie audit``: the whole workspace, including what :mod:`manifests.audit` cannot see.

:func:`manifests.audit.audit` checks manifests against files. This module adds
two checks that need more than the standard library:

* **Pseudo originals against their checkpoint.** Every ``degraded`` entry
  records the ``weights_digest`` of the DSN that made it (Kosugi & Yamasaki,
  TCSVT 2023, Sec. IV-A: pseudo originals are the degrader's output). A pseudo
  original whose digest differs from that of the current checkpoint
  (``ROOT/degrader/dsn.pt``) was made by another model: ``pie degrade`` must
  run again.
* **Shards against ``index.json`` and the records** (``--shards``). Each
  listed shard must be present with the indexed byte size, SHA-256, sample
  count and users, and be a complete tar (read with ``tarfile``, so a
  truncated shard is reported instead of raising; members are grouped into
  samples by ``webdataset``'s own key rule). Each sample must be a pair the
  current records make (no orphan), with both members, member bytes matching
  the SHA-256 in its ``json``, a ``json`` equal to what its current record
  gives, an allowed licence, and its record's split. Every pair the records
  make must be in some shard. A photo may not appear twice, under two users, in
  both splits, nor may a train target be byte-identical to, or within
  :data:`pipeline.stages.crawl.dedupe.NEAR_DUPLICATE_BITS` pHash bits of, a
  valid target. Near duplicates are looked up with the crawl's
  :class:`~pipeline.stages.crawl.dedupe.DuplicateIndex` (multi-index hashing,
  sub-linear per lookup); only Flickr targets are hashed, since the valid
  split holds only Flickr users and rule outputs come from FiveK.

Reading cost: every shard is read twice (SHA-256 and tar parse; the second
read comes from the page cache), one sample held at a time. A Flickr target
whose bytes the crawl recorded with a ``phash`` reuses that hash; any other is
decoded for it (6 to 8 ms a 640 x 427 JPEG on one core, most of the audit's time).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from manifests.audit import AuditReport, audit
from manifests.files import PARTIAL_MARK, file_sha256
from manifests.jsonl import latest_by
from manifests.licenses import OPEN_LICENSE_IDS
from manifests.samples import SHARD_SPLITS, flickr_sample, rule_sample, sample_key, shard_split
from manifests.workspace import OutsideWorkspaceError, Workspace

from .shard.plan import collect_pairs
from .shard.write import INDEX_NAME, STATE_DIR, wids_index_name

_END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)


def display(workspace: Workspace, path: Path) -> str:
    """``path`` relative to ROOT when it is inside the workspace, else as given."""
    try:
        return workspace.relative(path)
    except OutsideWorkspaceError:
        return str(path)


def audit_workspace(workspace: Workspace, *, licenses: frozenset[str] = OPEN_LICENSE_IDS, valid_refs: int = 20,
                    verify_checksums: bool = True, checkpoint: Path | None = None, shards: Path | None = None,
                    on_shard: Callable[[str], None] | None = None) -> AuditReport:
    """Audit manifests and files, pseudo originals against ``checkpoint``, and, given ``shards``, the shards.

    ``checkpoint`` defaults to ``ROOT/degrader/dsn.pt``; ``shards`` is the
    folder holding ``index.json`` (None: shards are not checked).
    ``on_shard`` is called with each shard's name once it is checked.
    """
    report = audit(workspace, licenses=licenses, valid_refs=valid_refs, verify_checksums=verify_checksums)
    check_pseudo_originals(workspace, report, checkpoint or workspace.degrader_checkpoint())
    if shards is not None:
        audit_shards(workspace, report, Path(shards), licenses=licenses, verify_checksums=verify_checksums,
                     on_shard=on_shard)
    return report


# Pseudo originals -------------------------------------------------------------------------------


def checkpoint_digest(checkpoint: Path) -> str:
    """The ``weights_digest`` (hex SHA-256) of a degrader checkpoint, as ``pie degrade`` records it.

    Raises :class:`degrader.train.CheckpointError` for an unreadable file.
    """
    from degrader.train import load_degrader

    return load_degrader(checkpoint, "cpu")[1]


def check_pseudo_originals(workspace: Workspace, report: AuditReport, checkpoint: Path) -> None:
    """Every kept photo's pseudo original must come from the weights of ``checkpoint``."""
    degraded = []
    for nsid in workspace.crawled_users():
        for record in latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").values():
            entry = record.get("degraded")
            if record.get("status") == "ok" and isinstance(entry, dict):
                degraded.append(entry)
    if not degraded:
        return
    shown = display(workspace, checkpoint)
    if not checkpoint.is_file():
        report.add("checkpoint", shown, f"{shown}: degrader checkpoint is missing, so {len(degraded)} pseudo "
                                        "originals cannot be checked against the model that made them; give "
                                        "--checkpoint FILE")
        return
    from degrader.train import CheckpointError

    try:
        digest = checkpoint_digest(checkpoint)
    except CheckpointError as exc:
        report.add("checkpoint", shown, str(exc))
        return
    for entry in degraded:
        if entry.get("model") != digest:
            made_by = str(entry.get("model"))[:12]
            report.add("stale-model", entry.get("file"),
                       f"{entry.get('file')}: pseudo original made by degrader {made_by}, but {shown} is "
                       f"{digest[:12]}; rerun pie degrade")


# Shards -----------------------------------------------------------------------------------------


@dataclass
class SampleSeen:
    """What the cross-shard checks keep of one sample."""

    key: str
    shard: str
    split: str
    user: str
    photo: str | None
    target_sha256: str
    phash: int | None


@dataclass
class ShardRead:
    """What reading one shard back found: its sample keys in order, and whether the tar was complete."""

    keys: list[str] = field(default_factory=list)
    broken: str | None = None
    member_problems: list[str] = field(default_factory=list)


def read_shard(path: Path, on_sample: Callable[[dict], None] = lambda sample: None) -> ShardRead:
    """Read a shard sample by sample, keyed as ``webdataset`` keys them; a damaged tar sets ``broken``.

    ``on_sample`` gets each sample (``__key__`` and one bytes value per
    member) as it is read, so only one sample is held at a time. A tar is
    complete when every member's data is there and the members are followed
    by the two NUL blocks that end an archive (POSIX.1-2008 ustar); a tar cut
    at a member boundary has no such end and is ``broken`` too.
    """
    from webdataset.tariterators import group_by_keys

    result = ShardRead()
    url = str(path)

    def members(tar: tarfile.TarFile):
        for info in tar:
            if info.isreg():
                yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}

    def duplicate(exc: Exception) -> bool:
        result.member_problems.append(str(exc.args[0]) if exc.args else str(exc))
        return True

    try:
        with tarfile.open(path, "r:") as tar:
            for sample in group_by_keys(members(tar), handler=duplicate):
                result.keys.append(sample["__key__"])
                on_sample(sample)
            end = tar.offset
        with open(path, "rb") as handle:
            handle.seek(end)
            if handle.read(len(_END_OF_ARCHIVE)) != _END_OF_ARCHIVE:
                result.broken = f"no end-of-archive blocks after byte {end}"
    except (tarfile.TarError, EOFError, OSError) as exc:
        result.broken = f"{exc.__class__.__name__}: {exc}"
    return result


def _load_index(workspace: Workspace, report: AuditReport, folder: Path) -> list[dict] | None:
    """The shard entries of ``folder/index.json``, or None after reporting why there are none."""
    path = folder / INDEX_NAME
    shown = display(workspace, path)
    if not path.is_file():
        report.add("missing-index", shown, f"{shown}: no shard index; run pie shard")
        return None
    try:
        index = json.loads(path.read_bytes())
        entries = index["shards"]
        if not isinstance(entries, list) or not all(isinstance(entry, dict) and isinstance(entry.get("name"), str)
                                                     for entry in entries):
            raise ValueError("'shards' is not a list of shard entries")
    except (ValueError, KeyError, TypeError) as exc:
        report.add("missing-index", shown, f"{shown}: not a shard index ({exc.__class__.__name__}: {exc})")
        return None
    return entries


def _check_listing(workspace: Workspace, report: AuditReport, folder: Path, listed: set[str]) -> None:
    """Temporaries and tars in the shard folder that index.json does not list."""
    indexes = {INDEX_NAME, *(wids_index_name(split) for split in SHARD_SPLITS)}
    state = folder / STATE_DIR
    for path in sorted([*folder.iterdir(), *(state.iterdir() if state.is_dir() else [])]):
        shown = display(workspace, path)
        if not path.is_file():
            continue
        if PARTIAL_MARK in path.name:
            report.add("temporary", shown, f"{shown}: temporary file left by an interrupted run")
        elif path.parent == folder and path.name not in listed | indexes:
            report.add("unrecorded-file", shown, f"{shown}: file in the shard folder that {INDEX_NAME} does not list")


def _target_phash(data: bytes, sha256: str, known: dict[str, int]) -> int | None:
    """The crawl's pHash of encoded image bytes, None when they do not decode.

    Bytes the crawl hashed (same SHA-256 as a record carrying ``phash``) reuse
    the crawl's hash, which is of exactly these bytes; others are hashed the
    way the crawl hashes (:func:`pipeline.stages.crawl.imagecheck.check_image`).
    """
    from .crawl.imagecheck import check_image

    if sha256 in known:
        return known[sha256]
    return check_image(data, "shard member", 0).phash


def _member(sample: dict, role: str) -> tuple[str, bytes] | None:
    for name, value in sample.items():
        if name.startswith(f"{role}."):
            return name, value
    return None


def _check_sample(report: AuditReport, shown: str, split: str, sample: dict, recorded: dict[str, dict],
                  known_phashes: dict[str, int], licenses: frozenset[str]) -> SampleSeen | None:
    """One sample against its members and its current record; what the cross-shard checks need."""
    key = sample["__key__"]
    where = f"{shown}: sample {key}"
    try:
        meta = json.loads(sample["json"])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (KeyError, ValueError) as exc:
        report.add("missing-pair", shown, f"{where}: no readable json member ({exc.__class__.__name__})")
        return None
    members = {role: _member(sample, role) for role in ("input", "target")}
    for role, member in members.items():
        if member is None:
            report.add("missing-pair", shown, f"{where}: no {role} member")
        elif hashlib.sha256(member[1]).hexdigest() != meta.get(f"{role}_sha256"):
            report.add("sample-checksum", shown, f"{where}: {member[0]} does not match the {role}_sha256 of its json")
    current = recorded.get(key)
    if current is None:
        report.add("orphan-sample", shown, f"{where}: no ok record makes this pair; rerun pie shard")
        current = meta
    else:
        changed = sorted(name for name in set(meta) | set(current)
                         if name != "license" and meta.get(name) != current.get(name))
        if changed:
            report.add("stale-sample", shown, f"{where}: json differs from the current record in "
                                              f"{', '.join(changed)}; rerun pie shard")
    licence = current.get("license")
    if isinstance(licence, dict) and licence.get("id") not in licenses:
        report.add("licence", shown, f"{where}: licence {licence.get('name')} is not an allowed licence; "
                                     "rerun pie shard to drop it")
    elif meta.get("license") != licence:
        report.add("stale-sample", shown, f"{where}: json carries an old licence; rerun pie shard")
    expected = shard_split(str(current.get("split")))
    if expected != split:
        report.add("split-leak", shown, f"{where}: a {current.get('split')} photo in a {split} shard")
    if members["target"] is None:
        return None
    target = members["target"][1]
    digest = hashlib.sha256(target).hexdigest()
    flickr = current.get("source") == "flickr"
    return SampleSeen(key, shown, split, str(current.get("user")), current.get("photo_id") if flickr else None,
                      digest, _target_phash(target, digest, known_phashes) if flickr else None)


def recorded_samples(workspace: Workspace) -> tuple[dict[str, dict], dict[str, int]]:
    """The ``json`` member every current record gives its sample, by key, whether or not its files are usable,
    and the crawl's pHash of each kept photo by SHA-256.

    A Flickr photo counts when its latest record is ``ok`` and has a pseudo
    original; a rule output when it is ``ok`` and names its prepared original.
    """
    samples: dict[str, dict] = {}
    phashes: dict[str, int] = {}
    for nsid in workspace.crawled_users():
        for record in latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").values():
            if record.get("status") != "ok":
                continue
            with contextlib.suppress(KeyError, TypeError, ValueError):
                phashes[str(record["sha256"])] = int(record["phash"], 16)
            if isinstance(record.get("degraded"), dict):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    meta = flickr_sample(record)
                    samples[sample_key(meta)] = meta
    folder = workspace.root / "manifests" / "rules"
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with contextlib.suppress(ValueError):
            for record in latest_by(workspace.rules_manifest(path.stem).read().records, "name").values():
                if record.get("status") == "ok" and record.get("input_sha256"):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        meta = rule_sample(record)
                        samples[sample_key(meta)] = meta
    return samples, phashes


def _check_against_index(report: AuditReport, shown: str, entry: dict, keys: list[str]) -> None:
    users: list[str] = []
    for key in keys:
        user = key.split("/", 1)[0]
        if not users or users[-1] != user:
            users.append(user)
    if entry.get("samples") != len(keys):
        report.add("shard-index", shown, f"{shown}: holds {len(keys)} samples, {INDEX_NAME} says "
                                         f"{entry.get('samples')}")
    if entry.get("users") != users:
        report.add("shard-index", shown, f"{shown}: holds users {', '.join(users) or 'none'}, {INDEX_NAME} says "
                                         f"{', '.join(map(str, entry.get('users') or [])) or 'none'}")


def _check_shard_file(report: AuditReport, path: Path, shown: str, entry: dict, verify_checksums: bool) -> None:
    size = path.stat().st_size
    if size != entry.get("bytes"):
        report.add("shard-size", shown, f"{shown}: has {size} bytes, {INDEX_NAME} says {entry.get('bytes')}")
    elif verify_checksums and file_sha256(path) != entry.get("sha256"):
        report.add("shard-checksum", shown, f"{shown}: does not match the sha256 in {INDEX_NAME}")


def audit_shards(workspace: Workspace, report: AuditReport, folder: Path, *,
                 licenses: frozenset[str] = OPEN_LICENSE_IDS, verify_checksums: bool = True,
                 on_shard: Callable[[str], None] | None = None) -> None:
    """Check the shards in ``folder`` against its ``index.json`` and the records (module docstring)."""
    from .crawl.dedupe import DuplicateIndex

    entries = _load_index(workspace, report, folder)
    if entries is None:
        return
    pairs = {pair.key: pair for pair in collect_pairs(workspace)[0]}
    recorded, known_phashes = recorded_samples(workspace)
    seen: list[SampleSeen] = []
    places: dict[str, tuple[str, str]] = {}
    damaged_users: set[str] = set()
    samples_read = 0

    def check(shown: str, split: str, sample: dict) -> None:
        key = sample["__key__"]
        found = _check_sample(report, shown, split, sample, recorded, known_phashes, licenses)
        if key in places:
            if places[key][1] == split:  # in the other split it is a split leak, reported above
                report.add("duplicate-sample", shown, f"{shown}: sample {key} is also in {places[key][0]}")
            return
        places[key] = (shown, split)
        if found is not None:
            seen.append(found)

    for entry in entries:
        name = entry["name"]
        path = folder / name
        shown = display(workspace, path)
        split = entry.get("split") if entry.get("split") in SHARD_SPLITS else name.split("-", 1)[0]
        if "/" in name or not path.is_file():
            report.add("missing-shard", shown, f"{shown}: listed in {INDEX_NAME} but missing")
            damaged_users.update(map(str, entry.get("users") or []))
            continue
        read = read_shard(path, functools.partial(check, shown, split))
        samples_read += len(read.keys)
        if read.broken:
            report.add("truncated-shard", shown, f"{shown}: not a complete tar ({read.broken}); rerun pie shard")
            damaged_users.update(map(str, entry.get("users") or []))
        else:
            _check_shard_file(report, path, shown, entry, verify_checksums)
            _check_against_index(report, shown, entry, read.keys)
        for problem in read.member_problems:
            report.add("duplicate-sample", shown, f"{shown}: {problem}")
        if on_shard:
            on_shard(name)
    for key, pair in pairs.items():
        if key not in places and pair.user not in damaged_users:
            report.add("missing-pair", pair.target_file, f"{pair.target_file}: pair {key} is in no shard; "
                                                         "rerun pie shard")
    users_of: dict[str, SampleSeen] = {}
    for sample in seen:
        if sample.photo is not None:
            first = users_of.setdefault(sample.photo, sample)
            if first.user != sample.user:
                report.add("two-users", sample.shard, f"{sample.shard}: sample {sample.key} is photo {sample.photo} "
                                                      f"of user {first.user} too ({first.shard})")
    valid = DuplicateIndex()
    for sample in seen:
        if sample.split == "valid":
            valid.add(sample.key, sample.target_sha256, sample.phash)
    for sample in seen:
        if sample.split == "train":
            reason = valid.find(sample.key, sample.target_sha256, sample.phash)
            if reason is not None:
                kind = "near-duplicate" if reason.startswith("near-duplicate") else "duplicate"
                report.add(kind, sample.shard, f"{sample.shard}: train sample {sample.key} against the valid "
                                               f"split: {reason}")
    _check_listing(workspace, report, folder, {entry["name"] for entry in entries})
    report.sections["shards"] = {"shards": len(entries), "samples": samples_read, "pairs": len(pairs)}

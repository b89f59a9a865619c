"""``pie audit``: manifests against files, licences, checksums and splits.

The audit reads only the workspace: every latest photo record is validated
against the schema, every ``ok`` record's file must exist inside the workspace
with the recorded size and SHA-256, kept photos must carry an allowed licence
and appear once (one user, one set of bytes), files on disk must have a
record, and each valid user must have its reference photos. Prepared FiveK
originals and rule outputs are checked the same way, and each rule output
against the prepared original it was made from. Files under ``flickr/``,
``degraded/``, ``fivek/`` and ``rules/`` without a record that names them (a
record deleted while its file stayed, or a temporary left by a killed run) are
problems too.

Each problem is a :class:`Problem`: a kind (one of :data:`KINDS`), the file it
concerns (relative to ROOT) and a one-line message naming that file or record.
The checks of pseudo originals against the degrader checkpoint and of the
shards live in :mod:`pipeline.stages.audit`, which adds to the same report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .files import PARTIAL_MARK, file_sha256
from .jsonl import latest_by
from .licenses import OPEN_LICENSE_IDS, UNVERIFIED
from .records import RecordError, validate_photo_record
from .workspace import OutsideWorkspaceError, Workspace

#: Every kind of problem an audit reports, with what it means.
KINDS: dict[str, str] = {
    "manifest": "a manifest line that is not a record",
    "schema": "a record that does not follow its schema",
    "bad-path": "a record naming a file outside the workspace",
    "missing-file": "a recorded file is missing",
    "checkpoint": "the degrader checkpoint that pseudo originals are checked against is missing or unreadable",
    "size": "a file whose size differs from its record",
    "checksum": "a file whose SHA-256 differs from its record",
    "licence": "a kept photo or sample whose licence is not allowed",
    "duplicate": "the same bytes kept twice, or in both the train and valid splits",
    "two-users": "one photo under two users",
    "valid-refs": "a valid user without its number of reference photos",
    "split-leak": "a user or photo in both the train and valid splits",
    "stale-input": "an output made from other bytes than the current input",
    "stale-model": "a pseudo original made by another degrader checkpoint than the current one",
    "unrecorded-file": "a file on disk that no record or index names",
    "temporary": "a temporary file left by an interrupted run",
    "missing-index": "shards without a readable index.json",
    "missing-shard": "a shard index.json lists that is not on disk",
    "shard-size": "a shard whose byte size differs from index.json",
    "shard-checksum": "a shard whose SHA-256 differs from index.json",
    "truncated-shard": "a shard that is not a complete tar",
    "shard-index": "a shard whose samples or users differ from index.json",
    "orphan-sample": "a sample without an ok record that makes it a pair",
    "missing-pair": "a pair the records make that no shard holds, or a sample without a member",
    "duplicate-sample": "a sample key found more than once in the shards",
    "sample-checksum": "a sample member whose SHA-256 differs from the sample's json",
    "stale-sample": "a sample whose json differs from its current record",
    "near-duplicate": "a train sample within a few pHash bits of a valid sample",
}


@dataclass(frozen=True)
class Problem:
    """One problem: its kind (a key of :data:`KINDS`), the file it concerns (relative to ROOT) and a message."""

    kind: str
    file: str
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "message": self.message}


@dataclass
class AuditReport:
    """Counts and problems of an audit."""

    users: int = 0
    records: int = 0
    statuses: Counter = field(default_factory=Counter)
    licenses: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    files_checked: int = 0
    bytes_checked: int = 0
    findings: list[Problem] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)

    def add(self, kind: str, file: object, message: str) -> None:
        """Record a problem of ``kind`` about ``file`` (relative to ROOT)."""
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.findings.append(Problem(kind, str(file), message))

    @property
    def problems(self) -> list[str]:
        """The one-line messages of every problem, in the order found."""
        return [problem.message for problem in self.findings]

    @property
    def kinds(self) -> Counter:
        """Problems per kind."""
        return Counter(problem.kind for problem in self.findings)

    @property
    def ok(self) -> bool:
        return not self.findings

    def table(self) -> str:
        """The problems per kind as an aligned two-column table, most frequent first; empty when clean."""
        rows = sorted(self.kinds.items(), key=lambda item: (-item[1], item[0]))
        width = max([len("kind"), *(len(kind) for kind, _ in rows)])
        return "\n".join([f"{'kind':<{width}}  problems", *(f"{kind:<{width}}  {count:>8}" for kind, count in rows)]
                         ) if rows else ""

    def as_dict(self) -> dict:
        return {
            "users": self.users, "records": self.records, "statuses": dict(self.statuses),
            "licenses": dict(self.licenses), "splits": dict(self.splits), "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked, "kinds": dict(sorted(self.kinds.items())),
            "counts": {"problems": len(self.findings), "kinds": len(self.kinds)},
            "problems": [problem.as_dict() for problem in self.findings], "sections": self.sections, "ok": self.ok,
        }

    def line(self) -> str:
        licences = ", ".join(f"{name} {count}" for name, count in sorted(self.licenses.items()))
        checked = self.sections.get("shards")
        shards = f"{checked['shards']} shards, {checked['samples']} samples checked; " if checked else ""
        return (f"audit: {self.users} users, {self.records} photo records ({self.statuses['ok']} ok, "
                f"{self.statuses['failed']} failed, {self.statuses['rejected']} rejected), "
                f"{self.files_checked} files verified ({self.bytes_checked / 2**20:.1f} MiB); "
                f"licences: {licences or 'none'}; {shards}{len(self.findings)} problems")


def _add_read_problems(workspace: Workspace, report: AuditReport, store, problems: list[str]) -> None:
    """The lines of a manifest that are not records (a torn last line is repaired on the next append)."""
    for problem in problems:
        if "torn last line" not in problem:
            report.add("manifest", workspace.relative(store.path), problem)


def audit_flickr(workspace: Workspace, report: AuditReport, *, licenses: frozenset[str] = OPEN_LICENSE_IDS,
                 valid_refs: int = 20, verify_checksums: bool = True) -> None:
    """Audit the Flickr crawl part of ``workspace`` into ``report``."""
    seen_sha: dict[str, str] = {}
    seen_photo: dict[str, str] = {}
    degraded_count = 0
    degraded_files: set[str] = set()
    for nsid in workspace.crawled_users():
        store = workspace.flickr_manifest(nsid)
        manifest = workspace.relative(store.path)
        read = store.read()
        _add_read_problems(workspace, report, store, read.problems)
        latest = latest_by(read.records, "photo_id")
        report.users += 1
        kept: set[str] = set()
        user_splits = Counter()
        for photo_id, record in sorted(latest.items()):
            report.records += 1
            where = f"{store.path.name} photo {photo_id}"
            try:
                validate_photo_record(record)
            except RecordError as exc:
                report.add("schema", manifest, f"{where}: {exc}")
                continue
            if record["user"] != nsid:
                report.add("schema", manifest, f"{where}: record names user {record['user']}")
            report.statuses[record["status"]] += 1
            if record["status"] != "ok":
                continue
            report.licenses[record["license"]["name"]] += 1
            report.splits[record["split"]] += 1
            user_splits[record["split"]] += 1
            if record["license"]["id"] not in licenses:
                report.add("licence", record["file"],
                           f"{where}: licence not verified (fetched from a list without the API); "
                           "audit with --licenses all to accept it" if record["license"]["id"] == UNVERIFIED.id
                           else f"{where}: licence {record['license']['name']} is not an allowed licence")
            owner = seen_photo.setdefault(photo_id, nsid)
            other = seen_sha.setdefault(record["sha256"], f"{nsid}/{photo_id}")
            if owner != nsid:
                report.add("two-users", record["file"], f"{where}: photo {photo_id} is also kept under user {owner}")
            elif other != f"{nsid}/{photo_id}":
                report.add("duplicate", record["file"], f"{where}: same bytes as {other}")
            kept.add(record["file"])
            _check_file(workspace, report, where, record["file"], record["bytes"], record["sha256"], verify_checksums)
            degraded = record.get("degraded")
            if isinstance(degraded, dict):
                degraded_count += 1
                degraded_files.add(str(degraded.get("file")))
                if degraded.get("source_sha256") != record["sha256"]:
                    report.add("stale-input", degraded.get("file"),
                               f"{where}: pseudo original was made from other bytes; rerun pie degrade")
                _check_file(workspace, report, f"{where} (degraded)", degraded.get("file"), None,
                            degraded.get("sha256"), verify_checksums)
        if user_splits["valid"] + user_splits["valid_ref"] and user_splits["valid_ref"] != min(
                valid_refs, user_splits["valid"] + user_splits["valid_ref"]):
            report.add("valid-refs", manifest, f"{store.path.name}: valid user has {user_splits['valid_ref']} "
                                               f"reference photos, expected {valid_refs}")
        if user_splits["train"] and (user_splits["valid"] or user_splits["valid_ref"]):
            report.add("split-leak", manifest, f"{store.path.name}: user is in both the train and valid splits")
        _check_unrecorded(workspace, report, f"flickr/{nsid}", kept)
    _check_unrecorded(workspace, report, "degraded", degraded_files)
    report.sections["flickr"] = {"users": report.users, "records": report.records, "degraded": degraded_count}


def _check_unrecorded(workspace: Workspace, report: AuditReport, folder: str, recorded: set[str]) -> None:
    """Every file under ``ROOT/<folder>`` must be named (relative to ROOT) in ``recorded``."""
    base = workspace.root / folder
    for path in sorted(base.rglob("*")) if base.is_dir() else []:
        if not path.is_file():
            continue
        relative = path.relative_to(workspace.root).as_posix()  # found under the root: nothing to resolve
        if relative in recorded:
            continue
        if PARTIAL_MARK in path.name or path.name.endswith((".tmp", ".part")):
            report.add("temporary", relative, f"{relative}: temporary file left by an interrupted run")
        else:
            report.add("unrecorded-file", relative, f"{relative}: file on disk without an ok record")


def _check_file(workspace: Workspace, report: AuditReport, where: str, relative: str, size: object,
                sha256: object, verify_checksums: bool) -> None:
    """One kept file: inside the workspace, present, of the recorded size and SHA-256."""
    try:
        path = workspace.resolve_relative(relative)
    except (OutsideWorkspaceError, TypeError) as exc:
        report.add("bad-path", relative, f"{where}: {exc}")
        return
    if not path.is_file():
        report.add("missing-file", relative, f"{where}: file {relative} is missing")
        return
    if size is not None and path.stat().st_size != size:
        report.add("size", relative, f"{where}: {relative} has {path.stat().st_size} bytes, record says {size}")
        return
    if verify_checksums:
        report.files_checked += 1
        report.bytes_checked += path.stat().st_size
        if file_sha256(path) != sha256:
            report.add("checksum", relative, f"{where}: {relative} does not match its sha256")


def audit_rules(workspace: Workspace, report: AuditReport, *, verify_checksums: bool = True) -> None:
    """Audit the prepared originals and the rule outputs.

    Every latest ``ok`` record's PNG (``fivek/`` and ``rules/``) is checked
    against its size and SHA-256, and every ``ok`` rule output must have been
    made from the current prepared original of its image (``input_sha256``).
    """
    prepared = _audit_prepared(workspace, report, verify_checksums)
    folder = workspace.root / "manifests" / "rules"
    counts: Counter = Counter()
    outputs: set[str] = set()
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        store = workspace.rules_manifest(path.stem)
        read = store.read()
        _add_read_problems(workspace, report, store, read.problems)
        for name, record in sorted(latest_by(read.records, "name").items()):
            counts[record.get("status")] += 1
            if record.get("status") == "ok":
                outputs.add(str(record.get("file")))
                where = f"{path.name} {name}"
                _check_file(workspace, report, where, record.get("file"), record.get("bytes"),
                            record.get("sha256"), verify_checksums)
                _check_input(report, where, record, prepared.get(name))
    _check_unrecorded(workspace, report, "rules", outputs)
    experts = _audit_experts(workspace, report, verify_checksums)
    _check_unrecorded(workspace, report, "fivek", {str(record.get("file")) for record in prepared.values()
                                                   if record.get("status") == "ok"} | experts)
    report.sections["rules"] = dict(counts)


def _audit_prepared(workspace: Workspace, report: AuditReport, verify_checksums: bool) -> dict[str, dict]:
    """Check the PNG of every latest ``ok`` prepared-original record; return the latest records by name."""
    store = workspace.prepared_manifest()
    read = store.read()
    _add_read_problems(workspace, report, store, read.problems)
    latest = latest_by(read.records, "name")
    counts: Counter = Counter()
    for name, record in sorted(latest.items()):
        counts[record.get("status")] += 1
        if record.get("status") == "ok":
            _check_file(workspace, report, f"{store.path.name} {name}", record.get("file"), record.get("bytes"),
                        record.get("sha256"), verify_checksums)
    report.sections["fivek"] = dict(counts)
    return latest


def _audit_experts(workspace: Workspace, report: AuditReport, verify_checksums: bool) -> set[str]:
    """Check the PNG of every latest ``ok`` FiveK expert record (``pie fivek``); return their files."""
    store = workspace.fivek_experts_manifest()
    read = store.read()
    _add_read_problems(workspace, report, store, read.problems)
    files: set[str] = set()
    for key, record in sorted(latest_by(read.records, "key").items()):
        if record.get("status") == "ok":
            files.add(str(record.get("file")))
            _check_file(workspace, report, f"{store.path.name} {key}", record.get("file"), record.get("bytes"),
                        record.get("sha256"), verify_checksums)
    return files


def _check_input(report: AuditReport, where: str, record: dict, prepared: dict | None) -> None:
    """One ``ok`` rule output: made from the current ``ok`` prepared original of its image."""
    output = record.get("file")
    if record.get("input_sha256") is None:
        report.add("stale-input", output, f"{where}: made before prepared originals were kept (no input_sha256); "
                                          "rerun pie rules")
    elif prepared is None or prepared.get("status") != "ok":
        report.add("stale-input", output, f"{where}: no ok prepared original recorded in fivek.jsonl; "
                                          "rerun pie rules")
    elif record["input_sha256"] != prepared.get("sha256"):
        report.add("stale-input", output, f"{where}: made from another version of {prepared.get('file')}; "
                                          "rerun pie rules")


def audit(workspace: Workspace, *, verify_checksums: bool = True, **options) -> AuditReport:
    """Audit every part of the workspace that exists: the crawl, its pseudo originals, the prepared
    originals and the rule outputs."""
    report = AuditReport()
    audit_flickr(workspace, report, verify_checksums=verify_checksums, **options)
    audit_rules(workspace, report, verify_checksums=verify_checksums)
    return report

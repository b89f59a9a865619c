"""``pie audit``: manifests against files, licences, checksums and splits.

The audit reads only the workspace: every latest photo record is validated
against the schema, every ``ok`` record's file must exist inside the workspace
with the recorded size and SHA-256, kept photos must carry an allowed licence
and appear once, files on disk must have a record, and each valid user must
have its reference photos. Each problem is one line naming the file or record.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .jsonl import latest_by
from .licenses import OPEN_LICENSE_IDS
from .records import RecordError, validate_photo_record
from .workspace import OutsideWorkspaceError, Workspace


@dataclass
class AuditReport:
    """Counts and one-line problems of an audit."""

    users: int = 0
    records: int = 0
    statuses: Counter = field(default_factory=Counter)
    licenses: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "users": self.users, "records": self.records, "statuses": dict(self.statuses),
            "licenses": dict(self.licenses), "splits": dict(self.splits), "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked, "problems": self.problems, "sections": self.sections, "ok": self.ok,
        }

    def line(self) -> str:
        licences = ", ".join(f"{name} {count}" for name, count in sorted(self.licenses.items()))
        return (f"audit: {self.users} users, {self.records} photo records ({self.statuses['ok']} ok, "
                f"{self.statuses['failed']} failed, {self.statuses['rejected']} rejected), "
                f"{self.files_checked} files verified ({self.bytes_checked / 2**20:.1f} MiB); "
                f"licences: {licences or 'none'}; {len(self.problems)} problems")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def audit_flickr(workspace: Workspace, report: AuditReport, *, licenses: frozenset[str] = OPEN_LICENSE_IDS,
                 valid_refs: int = 20, verify_checksums: bool = True) -> None:
    """Audit the Flickr crawl part of ``workspace`` into ``report``."""
    seen_sha: dict[str, str] = {}
    for nsid in workspace.crawled_users():
        store = workspace.flickr_manifest(nsid)
        read = store.read()
        report.problems.extend(problem for problem in read.problems if "torn last line" not in problem)
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
                report.problems.append(f"{where}: {exc}")
                continue
            if record["user"] != nsid:
                report.problems.append(f"{where}: record names user {record['user']}")
            report.statuses[record["status"]] += 1
            if record["status"] != "ok":
                continue
            report.licenses[record["license"]["name"]] += 1
            report.splits[record["split"]] += 1
            user_splits[record["split"]] += 1
            if record["license"]["id"] not in licenses:
                report.problems.append(f"{where}: licence {record['license']['name']} is not an allowed licence")
            other = seen_sha.setdefault(record["sha256"], f"{nsid}/{photo_id}")
            if other != f"{nsid}/{photo_id}":
                report.problems.append(f"{where}: same bytes as {other}")
            try:
                path = workspace.resolve_relative(record["file"])
            except OutsideWorkspaceError as exc:
                report.problems.append(f"{where}: {exc}")
                continue
            kept.add(path.name)
            if not path.is_file():
                report.problems.append(f"{where}: file {record['file']} is missing")
                continue
            size = path.stat().st_size
            if size != record["bytes"]:
                report.problems.append(f"{where}: {record['file']} has {size} bytes, record says {record['bytes']}")
                continue
            if verify_checksums:
                report.files_checked += 1
                report.bytes_checked += size
                if _sha256(path) != record["sha256"]:
                    report.problems.append(f"{where}: {record['file']} does not match its sha256")
        if user_splits["valid"] + user_splits["valid_ref"] and user_splits["valid_ref"] != min(
                valid_refs, user_splits["valid"] + user_splits["valid_ref"]):
            report.problems.append(f"{store.path.name}: valid user has {user_splits['valid_ref']} reference "
                                   f"photos, expected {valid_refs}")
        if user_splits["train"] and (user_splits["valid"] or user_splits["valid_ref"]):
            report.problems.append(f"{store.path.name}: user is in both the train and valid splits")
        folder = workspace.root / "flickr" / nsid
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.name not in kept:
                    report.problems.append(f"flickr/{nsid}/{path.name}: file on disk without an ok record")
    report.sections["flickr"] = {"users": report.users, "records": report.records}


def audit(workspace: Workspace, **options) -> AuditReport:
    """Audit every part of the workspace that exists."""
    report = AuditReport()
    audit_flickr(workspace, report, **options)
    return report

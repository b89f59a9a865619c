"""The photo record of a Flickr crawl and its validation.

One JSON object per line in ``ROOT/manifests/flickr/<nsid>.jsonl``
(DESIGN.md, "Records and layout"). A record is appended whenever the state of
a photo changes; the latest record for a ``photo_id`` wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from . import ids

PHOTO_SCHEMA = "pie.flickr-photo/1"
USER_SCHEMA = "pie.flickr-user/1"

STATUSES = ("ok", "failed", "rejected")
SPLITS = ("train", "valid", "valid_ref")

#: Fields every photo record carries, with the JSON types they may take.
PHOTO_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "user": (str,),
    "photo_id": (str,),
    "secret": (str,),
    "server": (str,),
    "size": (str,),
    "url": (str,),
    "page_url": (str,),
    "license": (dict,),
    "owner_name": (str,),
    "title": (str,),
    "date_taken": (str, type(None)),
    "file": (str, type(None)),
    "width": (int, type(None)),
    "height": (int, type(None)),
    "bytes": (int, type(None)),
    "sha256": (str, type(None)),
    "status": (str,),
    "reason": (str, type(None)),
    "attempts": (int,),
    "fetched_at": (str,),
    "split": (str,),
}


class RecordError(ValueError):
    """A record that does not follow the schema."""


def utc_now() -> str:
    """The current UTC time as an ISO 8601 string with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def validate_photo_record(record: dict) -> dict:
    """Check a photo record against the schema and return it.

    Raises :class:`RecordError` naming the first offending field.
    """
    for name, types in PHOTO_FIELDS.items():
        if name not in record:
            raise RecordError(f"field {name!r} is missing")
        if not isinstance(record[name], types) or isinstance(record[name], bool):
            raise RecordError(f"field {name!r} has type {type(record[name]).__name__}")
    if record["schema"] != PHOTO_SCHEMA:
        raise RecordError(f"field 'schema' is {record['schema']!r}, expected {PHOTO_SCHEMA!r}")
    try:
        ids.check_nsid(record["user"])
        ids.check_photo_id(record["photo_id"])
    except ids.InvalidIdError as exc:
        raise RecordError(str(exc)) from None
    if record["status"] not in STATUSES:
        raise RecordError(f"field 'status' is {record['status']!r}, expected one of {STATUSES}")
    if record["split"] not in SPLITS:
        raise RecordError(f"field 'split' is {record['split']!r}, expected one of {SPLITS}")
    if record["status"] == "ok":
        for name in ("file", "sha256", "width", "height", "bytes"):
            if record[name] is None:
                raise RecordError(f"field {name!r} is empty on an ok record")
    elif not record["reason"]:
        raise RecordError(f"field 'reason' is empty on a {record['status']} record")
    license_ = record["license"]
    if not all(isinstance(license_.get(key), str) for key in ("id", "name", "url")):
        raise RecordError("field 'license' needs string 'id', 'name' and 'url'")
    return record


@dataclass(frozen=True)
class UserSummary:
    """Counts over the latest photo records of one user."""

    ok: int
    failed: int
    rejected: int

    @classmethod
    def of(cls, latest: dict[str, dict]) -> "UserSummary":
        statuses = [record.get("status") for record in latest.values()]
        return cls(statuses.count("ok"), statuses.count("failed"), statuses.count("rejected"))

"""Which users to crawl: user files, published crawl lists, discovery.

* ``--users FILE``: one user per line as an NSID, a username, or a profile URL
  (``https://www.flickr.com/photos/<alias-or-nsid>/``); ``#`` starts a comment.
  Usernames and URLs are resolved with people.findByUsername and
  urls.lookupUser.
* ``--from-list FILE``: a published ``{nsid: [photo URL, ...]}`` crawl list as
  JSON, CSV (``nsid,url`` rows) or pickle. Pickles are untrusted and read with
  :func:`pipeline.safepickle.load_plain_pickle`, which executes nothing.
* ``--discover``: owners of openly licensed photos found through photos.search,
  group pools and interestingness.getList.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from manifests import ids
from manifests.files import write_atomic
from manifests.licenses import sorted_ids
from pipeline.safepickle import UnsafePickleError, load_plain_pickle

from .api import ApiError, ApiKeyRejected, FlickrClient, NotFound
from .listing import ReplyError, parse_photo_page

log = logging.getLogger("pie.crawl")

PROFILE_URL = re.compile(r"^https?://(www\.)?flickr\.com/(photos|people)/[^/\s]+/?$")


class UserListError(ValueError):
    """A user file or crawl list that cannot be used; the message names the file."""


@dataclass(frozen=True)
class UserRef:
    """A user as written in a user file: ``kind`` is ``nsid``, ``url`` or ``username``."""

    kind: str
    value: str
    line: int


def read_user_file(path: Path) -> list[UserRef]:
    """Parse a ``--users`` file; a malformed line is an error naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserListError(f"{path}: cannot read ({exc})") from None
    refs, seen = [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ids.is_nsid(line):
            ref = UserRef("nsid", line, number)
        elif PROFILE_URL.match(line):
            ref = UserRef("url", line, number)
        elif line.startswith(("http://", "https://")):
            raise UserListError(f"{path}:{number}: {line!r} is not a Flickr profile URL")
        elif len(line) <= 100 and "/" not in line and "\x00" not in line:
            ref = UserRef("username", line, number)
        else:
            raise UserListError(f"{path}:{number}: {line[:60]!r} is not an NSID, username or profile URL")
        if ref.value not in seen:
            seen.add(ref.value)
            refs.append(ref)
    if not refs:
        raise UserListError(f"{path}: no users (one NSID, username or profile URL per line)")
    return refs


def resolve_user(client: FlickrClient, ref: UserRef, resolved: dict[str, str] | None = None) -> str:
    """The NSID of a user reference (one API call for usernames and URLs).

    ``resolved`` maps ``"<kind>:<value>"`` to NSIDs found before (see
    :func:`read_resolved`); a reference found there costs no call, and a new
    resolution is added to it. Raises :class:`NotFound` when Flickr knows no
    such user.
    """
    if ref.kind == "nsid":
        return ref.value
    key = f"{ref.kind}:{ref.value}"
    if resolved is not None and key in resolved:
        return resolved[key]
    nsid = _ask_nsid(client, ref)
    if resolved is not None:
        resolved[key] = nsid
    return nsid


def read_resolved(path: Path) -> dict[str, str]:
    """Usernames and profile URLs resolved by earlier crawls (``{"<kind>:<value>": nsid}``).

    An unreadable file or an entry that is not a valid NSID is ignored (it
    is resolved again).
    """
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(mapping, dict):
        return {}
    return {key: value for key, value in mapping.items()
            if isinstance(key, str) and isinstance(value, str) and ids.is_nsid(value)}


def write_resolved(path: Path, resolved: dict[str, str]) -> None:
    """Save ``resolved`` atomically."""
    write_atomic(Path(path), (json.dumps(resolved, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _ask_nsid(client: FlickrClient, ref: UserRef) -> str:
    if ref.kind == "url":
        reply = client.call("flickr.urls.lookupUser", url=ref.value)
    else:
        reply = client.call("flickr.people.findByUsername", username=ref.value)
    user = reply.get("user")
    nsid = user.get("nsid", user.get("id")) if isinstance(user, dict) else None
    try:
        return ids.check_nsid(nsid)
    except ids.InvalidIdError:
        raise NotFound(f"reply for {ref.value!r} carries no valid NSID") from None


def read_crawl_list(path: Path) -> dict[str, list[str]]:
    """Read a published ``{nsid: [url, ...]}`` list from JSON, CSV or a pickle."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserListError(f"{path}: cannot read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".pkl", ".pickle"):
            mapping = load_plain_pickle(data, str(path))
        elif suffix == ".json":
            mapping = json.loads(data.decode("utf-8"))
        elif suffix in (".csv", ".tsv"):
            mapping = {}
            dialect = "excel-tab" if suffix == ".tsv" else "excel"
            for number, row in enumerate(csv.reader(io.StringIO(data.decode("utf-8")), dialect), start=1):
                if not row or row[0].strip().lower() in ("nsid", "user", ""):
                    continue
                if len(row) < 2:
                    raise UserListError(f"{path}:{number}: expected 'nsid,url'")
                mapping.setdefault(row[0].strip(), []).append(row[1].strip())
        else:
            raise UserListError(f"{path}: unknown list format {suffix or '(none)'}; use .json, .csv or .pkl")
    except UnsafePickleError as exc:
        raise UserListError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise UserListError(f"{path}: cannot parse ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(mapping, dict):
        raise UserListError(f"{path}: expected a mapping of NSID to photo URLs, got {type(mapping).__name__}")
    result: dict[str, list[str]] = {}
    for nsid, urls in mapping.items():
        if not ids.is_nsid(nsid):
            raise UserListError(f"{path}: key {str(nsid)[:60]!r} is not an NSID")
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise UserListError(f"{path}: value for {nsid} is not a list of URL strings")
        result[nsid] = urls
    return result


def discover_owners(client: FlickrClient, *, licenses: frozenset[str], groups: tuple[str, ...] = (),
                    max_pages: int = 10, per_page: int = 500, min_upload_date: str = "2004-01-01") -> Iterator[str]:
    """Yield NSIDs of owners of openly licensed photos, each once.

    Sources, in order: photos.search for the licence ids uploaded since
    ``min_upload_date`` (YYYY-MM-DD) sorted by interestingness, the pools of
    ``groups``, and interestingness.getList. A source that fails is logged and
    the next one is tried.
    """
    seen: set[str] = set()
    license_list = ",".join(item for item in sorted_ids(licenses) if item.isdigit())  # Flickr's own ids
    # Flickr refuses a search limited only by licence (error 3); an upload-date bound is a limit.
    sources = [("flickr.photos.search", {"license": license_list, "sort": "interestingness-desc",
                                         "content_type": 1, "media": "photos", "min_upload_date": min_upload_date})]
    sources += [("flickr.groups.pools.getPhotos", {"group_id": group}) for group in groups]
    sources.append(("flickr.interestingness.getList", {}))
    for method, params in sources:
        page, pages = 1, 1
        while page <= min(pages, max_pages):
            try:
                reply = client.call(method, per_page=per_page, page=page, extras="owner_name", **params)
                entries, _, pages = parse_photo_page(reply)
            except ApiKeyRejected:
                raise
            except (ApiError, ReplyError) as exc:
                log.warning("discovery through %s stopped: %s", method, exc)
                break
            for entry in entries:
                owner = entry.get("owner") if isinstance(entry, dict) else None
                if ids.is_nsid(owner) and owner not in seen:
                    seen.add(owner)
                    yield owner
            page += 1

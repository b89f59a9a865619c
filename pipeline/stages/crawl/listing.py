"""Photo entries of Flickr list replies, validated into download candidates.

A list reply (people.getPublicPhotos, photos.search, groups.pools.getPhotos,
interestingness.getList) carries each photo's ids and the requested extras
(notes/flickr.md, section 2). :func:`parse_photo_list` checks the reply's shape
and every id before anything touches a path; an entry with a hostile or
malformed id is dropped with a one-line reason rather than failing the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from manifests import ids
from manifests.licenses import License, lookup

#: Flickr size suffixes and the ``url_*`` extra that carries each.
SIZE_EXTRAS = {
    "sq": "url_sq", "q": "url_q", "t": "url_t", "m": "url_s", "n": "url_n", "w": "url_w",
    "-": "url_m", "z": "url_z", "c": "url_c", "b": "url_l", "h": "url_h", "k": "url_k", "o": "url_o",
}

#: Longest edge in pixels of each size suffix (``-`` is the suffix-less 500 px size).
SIZE_EDGES = {"t": 100, "m": 240, "n": 320, "w": 400, "-": 500, "z": 640, "c": 800, "b": 1024,
              "h": 1600, "k": 2048}

BASE_EXTRAS = ("license", "owner_name", "date_taken", "media", "o_dims", "original_format", "path_alias")

STATIC_URL = re.compile(
    r"^https?://[^/]+/(?:[^/]+/)*?(?P<server>\d+)/(?P<id>\d+)_(?P<secret>[0-9a-f]+)(?:_(?P<suffix>[a-z0-9]+))?\.(?P<ext>jpg|jpeg|png|gif)$"
)


class ReplyError(ValueError):
    """An API reply without the documented shape."""


@dataclass(frozen=True)
class Candidate:
    """One photo that may be downloaded, with everything its record needs."""

    user: str
    photo_id: str
    secret: str
    server: str
    size: str
    url: str
    license: License
    owner_name: str
    title: str
    date_taken: str | None
    media: str

    @property
    def page_url(self) -> str:
        return f"https://www.flickr.com/photos/{self.user}/{self.photo_id}/"


def extras_for(size: str) -> str:
    """The ``extras`` parameter asking for ``size``'s URL and the record fields."""
    if size not in SIZE_EXTRAS:
        raise ValueError(f"--size {size!r} is not a Flickr size suffix ({', '.join(SIZE_EXTRAS)})")
    return ",".join((SIZE_EXTRAS[size],) + BASE_EXTRAS)


def _int(value: object, field: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ReplyError(f"photos.{field} is {value!r}, not a number") from None


def parse_photo_page(reply: dict) -> tuple[list[dict], int, int]:
    """The photo entries, page number and page count of a list reply."""
    photos = reply.get("photos")
    if not isinstance(photos, dict):
        raise ReplyError("reply has no 'photos' object")
    entries = photos.get("photo", [])
    if not isinstance(entries, list):
        raise ReplyError("photos.photo is not a list")
    return entries, _int(photos.get("page", 1), "page"), _int(photos.get("pages", 1), "pages")


def candidate_from_entry(entry: object, size: str, user: str | None = None) -> Candidate:
    """Validate one photo entry; raise :class:`ReplyError` or ``InvalidIdError``.

    ``user`` is the NSID the listing was asked for; an entry whose ``owner``
    disagrees is refused (a reply must not move a photo to another user).
    """
    if not isinstance(entry, dict):
        raise ReplyError("photo entry is not an object")
    photo_id = ids.check_photo_id(entry.get("id"))
    owner = ids.check_nsid(entry.get("owner", user))
    if user is not None and owner != user:
        raise ReplyError(f"photo {photo_id} belongs to {owner}, not {user}")
    secret = ids.check_secret(entry.get("secret"))
    server = ids.check_server(str(entry.get("server", "")))
    url = entry.get(SIZE_EXTRAS[size])
    if not isinstance(url, str) or not url:
        raise ReplyError(f"photo {photo_id} has no {SIZE_EXTRAS[size]} (too small or not allowed)")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ReplyError(f"photo {photo_id}: {SIZE_EXTRAS[size]} is not an http(s) URL")
    match = STATIC_URL.match(url)
    if match is None or match.group("id") != photo_id:
        raise ReplyError(f"photo {photo_id}: {SIZE_EXTRAS[size]} does not name this photo")
    title = entry.get("title", "")
    date_taken = entry.get("datetaken")
    return Candidate(
        user=owner, photo_id=photo_id, secret=secret, server=server, size=size, url=url,
        license=lookup(entry.get("license", "0")),
        owner_name=str(entry.get("ownername", "")),
        title=title if isinstance(title, str) else str(title.get("_content", "")) if isinstance(title, dict) else "",
        date_taken=date_taken if isinstance(date_taken, str) else None,
        media=str(entry.get("media", "photo")),
    )


def candidate_from_url(user: str, url: str, size_hint: str = "z") -> Candidate:
    """A candidate from a published static URL, before its metadata is known."""
    match = STATIC_URL.match(url.strip())
    if match is None:
        raise ReplyError(f"{url!r} is not a Flickr static photo URL")
    suffix = match.group("suffix") or "-"
    return Candidate(
        user=ids.check_nsid(user), photo_id=ids.check_photo_id(match.group("id")),
        secret=ids.check_secret(match.group("secret")), server=ids.check_server(match.group("server")),
        size=suffix if suffix in SIZE_EXTRAS else size_hint, url=url.strip(), license=lookup("0"),
        owner_name="", title="", date_taken=None, media="photo",
    )


def rewrite_for_mirror(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (which may carry a path prefix)."""
    if not mirror:
        return url
    parsed = urlsplit(url)
    return mirror.rstrip("/") + "/" + parsed.path.lstrip("/")

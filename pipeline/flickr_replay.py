"""A Flickr-compatible API server and static image host for offline runs and tests.

The Flickr pseudo-pair dataset of Kosugi & Yamasaki ("Personalized Image
Enhancement Featuring Masked Style Modeling", IEEE TCSVT 2023, Sec. IV-A) is
crawled from Flickr users' public photos. :class:`ReplayServer` serves a folder
of photos on a loopback address so that the real, unpatched ``flickrapi``
client (with ``FlickrAPI.REST_URL`` pointed at :attr:`ReplayServer.rest_url`)
and the project's crawler run without reaching Flickr.

Served folder
-------------
``DIR/<nsid>/``
    One sub-folder per user, named by its NSID (``^\\d+@N\\d{2}$``). Other
    folder names are ignored with a warning.
``DIR/<nsid>/user.json`` (optional)
    ``{"username": str, "realname": str, "path_alias": str, "location": str,
    "deleted": bool}``. A deleted user answers error 5 and lists nothing.
    Defaults: username ``user<digits of the NSID>``, no path alias.
``DIR/<nsid>/<photo_id>.jpg`` / ``.jpeg`` / ``.png``
    The photos (photo id = decimal digits, unique across users); they are
    served byte for byte as the original size.
``DIR/<nsid>/<photo_id>.json`` (optional sidecar)
    ``title`` (str), ``license`` (id 0-16), ``date_taken`` ("YYYY-MM-DD
    HH:MM:SS"), ``date_upload`` (unix seconds or "YYYY-MM-DD HH:MM:SS", UTC),
    ``tags`` (list or space-separated str), ``secret`` (hex), ``server``
    (digits), ``ispublic`` (0/1; private photos are left out of every list),
    ``media`` ("photo"/"video"), and ``override``: an object whose keys replace
    fields of the photo's entry in list replies verbatim, so tests can inject
    hostile values such as ``{"id": "../../etc/passwd"}`` or wrong types.
``DIR/groups.json`` (optional)
    ``{"<group nsid>": {"name": str, "photos": ["<nsid>/<photo_id>", ...]}}``;
    a pool lists its photos in this order.

Defaults are deterministic: ``secret`` is the first 10 hex digits of the SHA-1
of the photo id, the original and the ``h``/``k`` sizes have their own secrets
(as on Flickr), ``server`` is a 2-5 digit string and ``farm`` a small int
derived from the same hash, ``license`` cycles through :data:`DEFAULT_LICENSE_CYCLE`
by photo id, ``date_taken`` comes from the EXIF DateTimeOriginal (else the
file's modification time in UTC, flagged ``datetakenunknown``), and
``date_upload`` is the file's modification time. The folder is indexed once
when the server is built; image sizes come from the file headers.

Endpoints
---------
``/services/rest/``
    POST form bodies (as ``flickrapi`` sends them, OAuth-signed; signatures
    are not verified) and GET query strings. ``format=json`` with
    ``nojsoncallback=1`` answers JSON, ``format=json`` alone JSONP
    (``jsonFlickrApi(...)``), ``format=rest`` or no format the ``<rsp>`` XML.
    Methods: see :data:`ReplayApi.METHODS`.
``/static/{server}/{id}_{secret}[_{suffix}].jpg`` and ``..._o.{format}``
    The image host. A size at least as large as the original serves the stored
    bytes; smaller ones are LANCZOS-resized JPEGs (quality 90), square sizes
    centre-cropped. A wrong secret or unknown photo is 404.
"""

from __future__ import annotations

import calendar
import hashlib
import http.server
import io
import ipaddress
import json
import logging
import math
import re
import socket
import socketserver
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from PIL import Image

from manifests.ids import SECRET_PATTERN, SERVER_PATTERN, is_nsid
from pipeline.replay_faults import (
    API_ERROR_MESSAGES,
    STATUS_KINDS,
    AttemptCounter,
    FaultSpec,
    malformed,
    not_an_image_page,
    status_page,
)

log = logging.getLogger("pie.replay")

FLICKR_WEB = "https://www.flickr.com"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

LICENSES: tuple[tuple[int, str, str], ...] = (
    (0, "All Rights Reserved", ""),
    (1, "CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    (2, "CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    (3, "CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    (4, "CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    (5, "CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    (6, "CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    (7, "No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    (8, "United States Government Work", "http://www.usa.gov/copyright.shtml"),
    (9, "Public Domain Dedication (CC0)", "https://creativecommons.org/publicdomain/zero/1.0/"),
    (10, "Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/"),
    (11, "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"),
    (12, "CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/"),
    (13, "CC BY-ND 4.0", "https://creativecommons.org/licenses/by-nd/4.0/"),
    (14, "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/"),
    (15, "CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    (16, "CC BY-NC-ND 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
)
"""Flickr's licence ids, names and URLs (``flickr.photos.licenses.getInfo``)."""

DEFAULT_LICENSE_CYCLE: tuple[int, ...] = tuple(license_id for license_id, _, _ in LICENSES)
"""Licence of a photo without a sidecar licence: ``cycle[int(photo_id) % 17]``."""

SEARCH_RESULT_CAP = 4000
"""``flickr.photos.search`` returns at most this many results; later pages repeat."""

INTERESTINGNESS_CAP = 500
"""``flickr.interestingness.getList`` lists at most this many photos."""

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 100
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class PhotoSize:
    """One of Flickr's photo sizes.

    Attributes
    ----------
    extra : str
        Letter of the ``url_<extra>`` extra and of the sizes page (``z``).
    suffix : str
        File-name suffix on the image host (``url_s`` -> ``m``, ``url_m`` ->
        none, ``url_l`` -> ``b``: the three that differ from their letter).
    label : str
        Label in ``flickr.photos.getSizes``.
    edge : int or None
        Longest edge in pixels, None for the original.
    square : bool
        True for the centre-cropped square sizes.
    """

    extra: str
    suffix: str
    label: str
    edge: int | None
    square: bool = False


SIZES: tuple[PhotoSize, ...] = (
    PhotoSize("sq", "s", "Square", 75, square=True),
    PhotoSize("q", "q", "Large Square", 150, square=True),
    PhotoSize("t", "t", "Thumbnail", 100),
    PhotoSize("s", "m", "Small", 240),
    PhotoSize("n", "n", "Small 320", 320),
    PhotoSize("w", "w", "Small 400", 400),
    PhotoSize("m", "", "Medium", 500),
    PhotoSize("z", "z", "Medium 640", 640),
    PhotoSize("c", "c", "Medium 800", 800),
    PhotoSize("l", "b", "Large", 1024),
    PhotoSize("h", "h", "Large 1600", 1600),
    PhotoSize("k", "k", "Large 2048", 2048),
    PhotoSize("o", "o", "Original", None),
)
"""Flickr's sizes up to 2048 px plus the original, smallest first."""

SIZES_BY_SUFFIX: Mapping[str, PhotoSize] = MappingProxyType({size.suffix: size for size in SIZES})
SIZES_BY_EXTRA: Mapping[str, PhotoSize] = MappingProxyType({size.extra: size for size in SIZES})
OWN_SECRET_SUFFIXES = frozenset({"h", "k"})
"""Sizes that, like the original, have a secret of their own on Flickr."""

_IMAGE_NAME = re.compile(r"(\d{1,20})\.(jpe?g|png)", re.IGNORECASE)
_SIDECAR_NAME = re.compile(r"\d{1,20}\.json")
_PATH_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STATIC_PATH = re.compile(r"/static/(\d{1,10})/(\d{1,20})_([0-9a-f]{1,32})(?:_([a-z]{1,2}))?\.([a-z]{3,4})")
_PROFILE_URL = re.compile(r"flickr\.com/(?:photos|people)/([^/?#\s]+)", re.IGNORECASE)
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_CALLBACK_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}")
_OAUTH_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


# --------------------------------------------------------------------------- served folder


@dataclass(frozen=True)
class ReplayUser:
    """A Flickr account of the served folder."""

    nsid: str
    username: str
    realname: str = ""
    path_alias: str | None = None
    location: str = ""
    deleted: bool = False
    photo_ids: tuple[str, ...] = ()

    @property
    def url_name(self) -> str:
        """The name in the user's Flickr URLs: the path alias, else the NSID."""
        return self.path_alias or self.nsid


@dataclass(frozen=True)
class ReplayPhoto:
    """One photo of the served folder with the metadata Flickr reports for it.

    ``width``/``height`` are the stored file's pixel size; ``date_upload`` is
    unix seconds (UTC); ``date_taken`` is "YYYY-MM-DD HH:MM:SS".
    """

    photo_id: str
    owner: str
    path: Path
    original_format: str
    width: int
    height: int
    secret: str
    original_secret: str
    server: str
    farm: int
    title: str
    license: int
    date_taken: str
    date_taken_unknown: bool
    date_upload: int
    tags: tuple[str, ...] = ()
    is_public: bool = True
    media: str = "photo"
    override: Mapping[str, object] = field(default_factory=dict)

    def secret_for(self, size: PhotoSize) -> str:
        """The URL secret of ``size`` (the original and h/k have their own)."""
        if size.suffix == "o":
            return self.original_secret
        if size.suffix in OWN_SECRET_SUFFIXES:
            return _id_hash(self.photo_id, size.suffix)[:10]
        return self.secret


@dataclass(frozen=True)
class ReplayGroup:
    """A group pool of the served folder."""

    nsid: str
    name: str
    photo_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplayCorpus:
    """Everything the server answers from, indexed once."""

    users: Mapping[str, ReplayUser]
    photos: Mapping[str, ReplayPhoto]
    groups: Mapping[str, ReplayGroup]

    def listed(self, photo_ids: Iterable[str]) -> list[ReplayPhoto]:
        """The photos among ``photo_ids`` that appear in public lists (public, owner not deleted)."""
        result = []
        for photo_id in photo_ids:
            photo = self.photos.get(photo_id)
            if photo is not None and photo.is_public and not self.users[photo.owner].deleted:
                result.append(photo)
        return result

    def listed_photos(self) -> list[ReplayPhoto]:
        """Every photo that appears in public lists."""
        return self.listed(self.photos)


def load_corpus(directory: str | Path) -> ReplayCorpus:
    """Index a served folder (layout in the module docstring).

    Parameters
    ----------
    directory : str or Path
        The served folder.

    Returns
    -------
    ReplayCorpus

    Raises
    ------
    NotADirectoryError
        If ``directory`` is not a folder.
    ValueError
        If a ``user.json``, sidecar or ``groups.json`` is not valid (the
        message names the file and field).
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"served folder {root} does not exist or is not a folder")
    users: dict[str, ReplayUser] = {}
    photos: dict[str, ReplayPhoto] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if not is_nsid(entry.name):
                log.warning("ignoring folder %s: its name is not an NSID", entry)
                continue
            user, user_photos = _load_user(entry)
            for photo in user_photos:
                if photo.photo_id in photos:
                    log.warning("ignoring %s: photo id %s is already served from %s",
                                photo.path, photo.photo_id, photos[photo.photo_id].path)
                    continue
                photos[photo.photo_id] = photo
            owned = tuple(photo.photo_id for photo in user_photos if photos[photo.photo_id] is photo)
            users[user.nsid] = replace(user, photo_ids=owned)
        elif entry.name != "groups.json":
            log.warning("ignoring %s: not a user folder", entry)
    groups = _load_groups(root / "groups.json", photos)
    return ReplayCorpus(MappingProxyType(users), MappingProxyType(photos), MappingProxyType(groups))


def _load_user(folder: Path) -> tuple[ReplayUser, list[ReplayPhoto]]:
    nsid = folder.name
    where = folder / "user.json"
    info = _read_json_object(where) if where.is_file() else {}
    _warn_unknown(where, info, {"username", "realname", "path_alias", "location", "deleted"})
    path_alias = _optional(info, "path_alias", str, where)
    if path_alias is not None and not _PATH_ALIAS.fullmatch(path_alias):
        raise ValueError(f"{where}: path_alias {path_alias!r} must be 1-64 letters, digits, '_' or '-'")
    user = ReplayUser(
        nsid=nsid,
        username=_optional(info, "username", str, where) or f"user{nsid.split('@')[0]}",
        realname=_optional(info, "realname", str, where) or "",
        path_alias=path_alias,
        location=_optional(info, "location", str, where) or "",
        deleted=bool(_optional(info, "deleted", bool, where)),
    )
    images: dict[str, Path] = {}
    sidecars: set[str] = set()
    for entry in sorted(folder.iterdir()):
        match = _IMAGE_NAME.fullmatch(entry.name)
        if match and entry.is_file():
            photo_id = match.group(1)
            if photo_id in images:
                log.warning("ignoring %s: photo %s already has %s", entry, photo_id, images[photo_id].name)
            else:
                images[photo_id] = entry
        elif _SIDECAR_NAME.fullmatch(entry.name):
            sidecars.add(entry.stem)
        elif entry.name != "user.json":
            log.warning("ignoring %s: neither a photo, a sidecar nor user.json", entry)
    for orphan in sorted(sidecars - images.keys()):
        log.warning("ignoring %s: no photo with that id", folder / f"{orphan}.json")
    photos = []
    for photo_id, path in images.items():
        photo = _load_photo(nsid, photo_id, path)
        if photo is not None:
            photos.append(photo)
    return user, photos


def _load_photo(owner: str, photo_id: str, path: Path) -> ReplayPhoto | None:
    sidecar_path = path.with_suffix(".json")
    sidecar = _read_json_object(sidecar_path) if sidecar_path.is_file() else {}
    _warn_unknown(sidecar_path, sidecar, {"title", "license", "date_taken", "date_upload", "tags", "secret",
                                          "server", "ispublic", "media", "override"})
    try:
        with Image.open(path) as image:
            width, height = image.size
            image_format = image.format
            exif_date = _exif_date_taken(image)
    except (OSError, SyntaxError, ValueError) as error:
        log.warning("ignoring %s: not a readable image (%s)", path, error)
        return None
    original_format = {"JPEG": "jpg", "PNG": "png", "GIF": "gif"}.get(image_format or "")
    if original_format is None:
        log.warning("ignoring %s: %s is not a Flickr upload format", path, image_format)
        return None
    mtime = int(path.stat().st_mtime)
    digest = _id_hash(photo_id)
    date_taken = _optional(sidecar, "date_taken", str, sidecar_path)
    if date_taken is not None and _parse_date(date_taken) is None:
        raise ValueError(f"{sidecar_path}: date_taken {date_taken!r} is not 'YYYY-MM-DD HH:MM:SS'")
    date_upload = sidecar.get("date_upload", mtime)
    upload_seconds = _parse_date(str(date_upload)) if not isinstance(date_upload, bool) else None
    if upload_seconds is None:
        raise ValueError(f"{sidecar_path}: date_upload {date_upload!r} is not unix seconds or a date")
    license_id = sidecar.get("license", DEFAULT_LICENSE_CYCLE[int(photo_id) % len(DEFAULT_LICENSE_CYCLE)])
    if isinstance(license_id, str) and license_id.isdigit():
        license_id = int(license_id)
    if isinstance(license_id, bool) or license_id not in range(len(LICENSES)):
        raise ValueError(f"{sidecar_path}: license {license_id!r} is not a Flickr licence id 0-16")
    tags = sidecar.get("tags", [])
    if isinstance(tags, str):
        tags = tags.split()
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"{sidecar_path}: tags must be a list of strings or a space-separated string")
    media = _optional(sidecar, "media", str, sidecar_path) or "photo"
    if media not in ("photo", "video"):
        raise ValueError(f"{sidecar_path}: media {media!r} must be 'photo' or 'video'")
    override = _optional(sidecar, "override", dict, sidecar_path) or {}
    is_public = sidecar.get("ispublic", 1)
    if is_public not in (0, 1):
        raise ValueError(f"{sidecar_path}: ispublic {is_public!r} must be 0 or 1")
    return ReplayPhoto(
        photo_id=photo_id,
        owner=owner,
        path=path,
        original_format=original_format,
        width=width,
        height=height,
        secret=_matching(sidecar, "secret", SECRET_PATTERN, sidecar_path) or digest[:10],
        original_secret=_id_hash(photo_id, "o")[:10],
        server=_matching(sidecar, "server", SERVER_PATTERN, sidecar_path) or str(10 + int(digest[10:18], 16) % 99990),
        farm=1 + int(digest[18:20], 16) % 9,
        title=_optional(sidecar, "title", str, sidecar_path) or "",
        license=license_id,
        date_taken=date_taken or exif_date or _format_date(mtime),
        date_taken_unknown=date_taken is None and exif_date is None,
        date_upload=upload_seconds,
        tags=tuple(tag.lower() for tag in tags),
        is_public=bool(is_public),
        media=media,
        override=MappingProxyType(dict(override)),
    )


def _load_groups(path: Path, photos: Mapping[str, ReplayPhoto]) -> dict[str, ReplayGroup]:
    if not path.is_file():
        return {}
    groups = {}
    for group_id, spec in _read_json_object(path).items():
        if not is_nsid(group_id):
            raise ValueError(f"{path}: group id {group_id!r} is not an NSID")
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: group {group_id} must be an object with name and photos")
        name = _optional(spec, "name", str, path) or group_id
        refs = spec.get("photos", [])
        if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"{path}: photos of group {group_id} must be a list of '<nsid>/<photo_id>'")
        members = []
        for ref in refs:
            owner, _, photo_id = ref.partition("/")
            photo = photos.get(photo_id)
            if photo is None or photo.owner != owner:
                log.warning("%s: group %s lists %r, which is not a served photo", path, group_id, ref)
            elif photo_id not in members:
                members.append(photo_id)
        groups[group_id] = ReplayGroup(group_id, name, tuple(members))
    return groups


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    return value


def _warn_unknown(path: Path, values: Mapping, known: set[str]) -> None:
    for key in sorted(values.keys() - known):
        log.debug("%s: ignoring field %r, which the replay server does not use", path, key)


def _optional(values: Mapping, key: str, kind: type, path: Path):
    value = values.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{path}: {key} must be a {kind.__name__}, not {value!r}")
    return value


def _matching(values: Mapping, key: str, pattern: re.Pattern[str], path: Path) -> str | None:
    value = values.get(key)
    if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
        raise ValueError(f"{path}: {key} {value!r} does not have Flickr's form")
    return value


def _id_hash(photo_id: str, salt: str = "") -> str:
    """SHA-1 hex digest of the photo id (and a salt): the source of every default."""
    return hashlib.sha1(f"{photo_id}{':' + salt if salt else ''}".encode("ascii")).hexdigest()


def _exif_date_taken(image: Image.Image) -> str | None:
    """EXIF DateTimeOriginal (else DateTime) as "YYYY-MM-DD HH:MM:SS", or None."""
    try:
        exif = image.getexif()
        raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        return datetime.strptime(str(raw).strip("\0 "), "%Y:%m:%d %H:%M:%S").strftime(DATE_FORMAT)
    except (TypeError, ValueError, OSError, SyntaxError, KeyError):
        return None


def _format_date(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(DATE_FORMAT)


def _parse_date(value: str) -> int | None:
    """Unix seconds of a Flickr date argument: unix seconds or MySQL datetime/date (UTC)."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    for layout in (DATE_FORMAT, "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(value, layout))
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------- sizes and images


def size_dimensions(width: int, height: int, size: PhotoSize) -> tuple[int, int] | None:
    """Pixel size of ``size`` for an original of ``width`` x ``height``, if Flickr offers it.

    Parameters
    ----------
    width, height : int
        Original size in pixels.
    size : PhotoSize

    Returns
    -------
    (int, int) or None
        ``(width, height)`` of the size; None when the original is smaller
        than the size's longest edge (shortest edge for square sizes), in
        which case Flickr lists no such size. The original is always offered.
    """
    if size.edge is None:
        return width, height
    if size.square:
        return (size.edge, size.edge) if min(width, height) >= size.edge else None
    longest = max(width, height)
    if longest < size.edge:
        return None
    scale = size.edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def served_dimensions(width: int, height: int, size: PhotoSize) -> tuple[int, int]:
    """Pixel size the image host delivers for ``size``: never larger than the original.

    A scaled size at least as large as the original is the original size; a
    square size is a centre crop of side ``min(edge, width, height)``.
    """
    if size.square:
        side = min(size.edge, width, height)
        return side, side
    return size_dimensions(width, height, size) or (width, height)


def render_jpeg(path: Path, dimensions: tuple[int, int], *, square: bool, quality: int = 90) -> bytes:
    """Resize (and for square sizes centre-crop) a stored image into a JPEG.

    Parameters
    ----------
    path : Path
        Stored image.
    dimensions : (int, int)
        Output width and height in pixels, no larger than the stored image
        (or its shorter side for a square).
    square : bool
        Centre-crop the largest square before resizing.
    quality : int
        JPEG quality 1-95; Flickr's derived sizes look like about 90.

    Returns
    -------
    bytes
        The JPEG file.
    """
    with Image.open(path) as image:
        image.draft(None, dimensions)  # JPEG decodes at the smallest DCT scale still >= dimensions
        icc_profile = image.info.get("icc_profile")
        picture = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    if square:
        width, height = picture.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
    if picture.size != dimensions:
        picture = picture.resize(dimensions, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    options = {"icc_profile": icc_profile} if icc_profile else {}
    picture.save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


class _RenderCache:
    """Least-recently-used cache of rendered sizes, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            body = self._entries.get(key)
            if body is not None:
                self._entries.move_to_end(key)
            return body

    def put(self, key: tuple[str, str], body: bytes) -> None:
        if len(body) > self._max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = body
            self._bytes += len(body)
            while self._bytes > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)


# --------------------------------------------------------------------------- the API


class ApiError(Exception):
    """A Flickr ``stat=fail`` answer: ``code`` and ``message`` as Flickr sends them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Page:
    """One page of a photo list, with the paging numbers Flickr reports."""

    items: list
    page: int
    pages: int
    perpage: int
    total: int


def paging_arguments(params: Mapping[str, str], *, max_per_page: int = MAX_PER_PAGE) -> tuple[int, int]:
    """``(page, per_page)`` from request arguments, with Flickr's defaults and bounds.

    ``per_page`` defaults to 100 (also for values < 1 or not numbers) and is
    clamped to ``max_per_page``; ``page`` defaults to 1.
    """
    per_page = _int_or(params.get("per_page"), DEFAULT_PER_PAGE)
    per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, max_per_page)
    return max(1, _int_or(params.get("page"), 1)), per_page


def paginate(items: Sequence, page: int, per_page: int, *, result_cap: int | None = None) -> Page:
    """Cut one page out of a result list the way Flickr does.

    Parameters
    ----------
    items : sequence
        The whole sorted result.
    page : int
        Requested page, >= 1; echoed in the reply.
    per_page : int
        Page length, >= 1.
    result_cap : int, optional
        Only the first ``result_cap`` results can be reached (4,000 for
        ``flickr.photos.search``); ``total`` and ``pages`` still count all.

    Returns
    -------
    Page
        A page past the last reachable one repeats the last reachable page
        (Flickr's behaviour: stop at ``pages`` and dedupe by id).
    """
    total = len(items)
    reachable = total if result_cap is None else min(total, result_cap)
    last_page = max(1, math.ceil(reachable / per_page))
    shown = min(page, last_page)
    start = (shown - 1) * per_page
    return Page(list(items[start:min(start + per_page, reachable)]), page, math.ceil(total / per_page), per_page, total)


def _int_or(value: str | None, default: int) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return default


class ReplayApi:
    """Flickr REST methods answered from a :class:`ReplayCorpus`.

    Parameters
    ----------
    corpus : ReplayCorpus
    static_base : str
        Prefix of image URLs, ending in ``/`` (the replay host's ``/static/``
        or ``https://live.staticflickr.com/``).
    """

    METHODS = (
        "flickr.test.echo",
        "flickr.people.getPublicPhotos",
        "flickr.people.getInfo",
        "flickr.people.findByUsername",
        "flickr.urls.lookupUser",
        "flickr.photos.search",
        "flickr.groups.pools.getPhotos",
        "flickr.interestingness.getList",
        "flickr.photos.getSizes",
        "flickr.photos.getInfo",
        "flickr.photos.licenses.getInfo",
    )
    """The methods served; any other answers error 112."""

    EXTRAS = frozenset({"license", "date_upload", "date_taken", "owner_name", "original_format", "last_update",
                        "tags", "o_dims", "media", "path_alias"} | {f"url_{size.extra}" for size in SIZES})
    """The ``extras`` understood in photo lists; others are ignored, as Flickr does."""

    _SEARCH_LIMITS = ("user_id", "text", "tags", "group_id", "min_upload_date", "max_upload_date",
                      "min_taken_date", "max_taken_date")

    def __init__(self, corpus: ReplayCorpus, static_base: str) -> None:
        self.corpus = corpus
        self.static_base = static_base if static_base.endswith("/") else static_base + "/"
        self._handlers: dict[str, Callable[[Mapping[str, str]], dict]] = {
            name: getattr(self, "_" + name.removeprefix("flickr.").replace(".", "_")) for name in self.METHODS
        }

    def call(self, method: str, params: Mapping[str, str]) -> dict:
        """Answer one method call.

        Parameters
        ----------
        method : str
            Full method name, e.g. ``"flickr.people.getPublicPhotos"``.
        params : mapping of str to str
            Request arguments as sent.

        Returns
        -------
        dict
            The reply's payload without ``stat`` (e.g. ``{"photos": {...}}``).

        Raises
        ------
        ApiError
            With Flickr's code and message (112 for an unknown method).
        """
        handler = self._handlers.get(method)
        if handler is None:
            raise ApiError(112, f'Method "{method}" not found')
        return handler(params)

    # URLs ------------------------------------------------------------------

    def image_url(self, photo: ReplayPhoto, size: PhotoSize) -> str:
        """Image-host URL of one size of a photo."""
        secret = photo.secret_for(size)
        if size.suffix == "o":
            return f"{self.static_base}{photo.server}/{photo.photo_id}_{secret}_o.{photo.original_format}"
        suffix = f"_{size.suffix}" if size.suffix else ""
        return f"{self.static_base}{photo.server}/{photo.photo_id}_{secret}{suffix}.jpg"

    def page_url(self, photo: ReplayPhoto) -> str:
        """The photo's page on flickr.com (for attribution)."""
        return f"{FLICKR_WEB}/photos/{self.corpus.users[photo.owner].url_name}/{photo.photo_id}/"

    # lookups ---------------------------------------------------------------

    def _user(self, params: Mapping[str, str], *, allow_deleted: bool = False) -> ReplayUser:
        user = self.corpus.users.get(params.get("user_id", ""))
        if user is None:
            raise ApiError(1, "User not found")
        if user.deleted and not allow_deleted:
            raise ApiError(5, "User deleted")
        return user

    def _photo(self, params: Mapping[str, str]) -> ReplayPhoto:
        photo_id = params.get("photo_id", "")
        photo = self.corpus.photos.get(photo_id)
        if photo is None or self.corpus.users[photo.owner].deleted or not (
            photo.is_public or params.get("secret") == photo.secret
        ):
            raise ApiError(1, f'Photo "{photo_id}" not found (invalid ID)')
        return photo

    # photo lists -----------------------------------------------------------

    def _photo_entry(self, photo: ReplayPhoto, extras: frozenset[str], **fields: object) -> dict:
        owner = self.corpus.users[photo.owner]
        entry: dict[str, object] = {
            "id": photo.photo_id, "owner": photo.owner, "secret": photo.secret, "server": photo.server,
            "farm": photo.farm, "title": photo.title, "ispublic": int(photo.is_public), "isfriend": 0,
            "isfamily": 0, **fields,
        }
        if "license" in extras:
            entry["license"] = str(photo.license)
        if "date_upload" in extras:
            entry["dateupload"] = str(photo.date_upload)
        if "date_taken" in extras:
            entry.update(datetaken=photo.date_taken, datetakengranularity=0,
                         datetakenunknown=str(int(photo.date_taken_unknown)))
        if "owner_name" in extras:
            entry["ownername"] = owner.username
        if "original_format" in extras:
            entry.update(originalsecret=photo.original_secret, originalformat=photo.original_format)
        if "last_update" in extras:
            entry["lastupdate"] = str(photo.date_upload)
        if "tags" in extras:
            entry["tags"] = " ".join(photo.tags)
        if "o_dims" in extras:
            entry.update(o_width=str(photo.width), o_height=str(photo.height))
        if "media" in extras:
            entry.update(media=photo.media, media_status="ready")
        if "path_alias" in extras:
            entry["pathalias"] = owner.path_alias or ""
        for size in SIZES:
            dimensions = size_dimensions(photo.width, photo.height, size) if f"url_{size.extra}" in extras else None
            if dimensions is not None:
                entry[f"url_{size.extra}"] = self.image_url(photo, size)
                entry[f"height_{size.extra}"] = str(dimensions[1])  # Flickr sends heights as strings,
                entry[f"width_{size.extra}"] = dimensions[0]  # widths as numbers
        entry.update(photo.override)
        return entry

    def _photo_list(self, photos: Sequence[ReplayPhoto], params: Mapping[str, str], *,
                    result_cap: int | None = None, max_per_page: int = MAX_PER_PAGE,
                    fields: Callable[[ReplayPhoto], dict] | None = None) -> dict:
        page, per_page = paging_arguments(params, max_per_page=max_per_page)
        extras = frozenset(name.strip().lower() for name in params.get("extras", "").split(","))
        cut = paginate(photos, page, per_page, result_cap=result_cap)
        return {"photos": {
            "page": cut.page, "pages": str(cut.pages), "perpage": cut.perpage, "total": str(cut.total),
            "photo": [self._photo_entry(photo, extras, **(fields(photo) if fields else {})) for photo in cut.items],
        }}

    def _people_getPublicPhotos(self, params: Mapping[str, str]) -> dict:
        user = self._user(params)
        photos = sorted(self.corpus.listed(user.photo_ids), key=_newest_first)
        return self._photo_list(photos, params)

    def _photos_search(self, params: Mapping[str, str]) -> dict:
        if not any(params.get(name, "").strip() for name in self._SEARCH_LIMITS):
            raise ApiError(3, "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.")
        if params.get("user_id"):
            user = self.corpus.users.get(params["user_id"])
            if user is None:
                raise ApiError(2, "Unknown user")
            candidates = user.photo_ids
        elif params.get("group_id"):
            group = self.corpus.groups.get(params["group_id"])
            candidates = group.photo_ids if group else ()
        else:
            candidates = tuple(self.corpus.photos)
        keep = _search_filter(params)
        photos = [photo for photo in self.corpus.listed(candidates) if keep(photo)]
        photos.sort(key=_SORT_KEYS.get(params.get("sort", ""), _newest_first))
        return self._photo_list(photos, params, result_cap=SEARCH_RESULT_CAP)

    def _groups_pools_getPhotos(self, params: Mapping[str, str]) -> dict:
        group = self.corpus.groups.get(params.get("group_id", ""))
        if group is None:
            raise ApiError(1, "Group not found")
        photos = self.corpus.listed(group.photo_ids)
        if params.get("user_id"):
            photos = [photo for photo in photos if photo.owner == params["user_id"]]
        return self._photo_list(photos, params, fields=lambda photo: {
            "ownername": self.corpus.users[photo.owner].username, "dateadded": str(photo.date_upload)})

    def _interestingness_getList(self, params: Mapping[str, str]) -> dict:
        photos = self.corpus.listed_photos()
        if params.get("date"):
            try:
                day = datetime.strptime(params["date"], "%Y-%m-%d").date()
            except ValueError:
                raise ApiError(1, "Not a valid date string.") from None
            photos = [photo for photo in photos
                      if datetime.fromtimestamp(photo.date_upload, timezone.utc).date() == day]
        photos.sort(key=_SORT_KEYS["interestingness-desc"])
        return self._photo_list(photos[:INTERESTINGNESS_CAP], params)

    # people ----------------------------------------------------------------

    def _people_getInfo(self, params: Mapping[str, str]) -> dict:
        user = self._user(params)
        photos = self.corpus.listed(user.photo_ids)
        first_upload = min((photo.date_upload for photo in photos), default=None)
        first_taken = min((photo.date_taken for photo in photos), default=None)
        return {"person": {
            "id": user.nsid, "nsid": user.nsid, "ispro": 0, "is_deleted": 0, "iconserver": "0", "iconfarm": 0,
            "path_alias": user.path_alias,
            "username": {"_content": user.username},
            "realname": {"_content": user.realname},
            "location": {"_content": user.location},
            "description": {"_content": ""},
            "photosurl": {"_content": f"{FLICKR_WEB}/photos/{user.url_name}/"},
            "profileurl": {"_content": f"{FLICKR_WEB}/people/{user.url_name}/"},
            "mobileurl": {"_content": f"https://m.flickr.com/photostream.gne?id={user.nsid.split('@')[0]}"},
            "photos": {
                "firstdatetaken": {"_content": first_taken},
                "firstdate": {"_content": None if first_upload is None else str(first_upload)},
                "count": {"_content": len(photos)},
            },
        }}

    def _people_findByUsername(self, params: Mapping[str, str]) -> dict:
        wanted = params.get("username", "").strip().casefold()
        for user in self.corpus.users.values():
            if wanted and user.username.casefold() == wanted and not user.deleted:
                return {"user": {"id": user.nsid, "nsid": user.nsid, "username": {"_content": user.username}}}
        raise ApiError(1, "User not found")

    def _urls_lookupUser(self, params: Mapping[str, str]) -> dict:
        match = _PROFILE_URL.search(params.get("url", ""))
        name = unquote(match.group(1)) if match else ""
        for user in self.corpus.users.values():
            if name and name in (user.nsid, user.path_alias) and not user.deleted:
                return {"user": {"id": user.nsid, "username": {"_content": user.username}}}
        raise ApiError(1, "User not found")

    # single photos ---------------------------------------------------------

    def _photos_getSizes(self, params: Mapping[str, str]) -> dict:
        photo = self._photo(params)
        owner = self.corpus.users[photo.owner]
        sizes = []
        for size in SIZES:
            dimensions = size_dimensions(photo.width, photo.height, size)
            if dimensions is not None:
                sizes.append({
                    "label": size.label, "width": dimensions[0], "height": dimensions[1],
                    "source": self.image_url(photo, size),
                    "url": f"{FLICKR_WEB}/photos/{owner.url_name}/{photo.photo_id}/sizes/{size.extra}/",
                    "media": photo.media,
                })
        return {"sizes": {"canblog": 0, "canprint": 0, "candownload": 1, "size": sizes}}

    def _photos_getInfo(self, params: Mapping[str, str]) -> dict:
        photo = self._photo(params)
        owner = self.corpus.users[photo.owner]
        return {"photo": {
            "id": photo.photo_id, "secret": photo.secret, "server": photo.server, "farm": photo.farm,
            "dateuploaded": str(photo.date_upload), "isfavorite": 0, "license": str(photo.license),
            "safety_level": "0", "rotation": 0, "originalsecret": photo.original_secret,
            "originalformat": photo.original_format, "views": "0", "media": photo.media,
            "owner": {"nsid": owner.nsid, "username": owner.username, "realname": owner.realname,
                      "location": owner.location, "iconserver": "0", "iconfarm": 0,
                      "path_alias": owner.path_alias},
            "title": {"_content": photo.title},
            "description": {"_content": ""},
            "visibility": {"ispublic": int(photo.is_public), "isfriend": 0, "isfamily": 0},
            "dates": {"posted": str(photo.date_upload), "taken": photo.date_taken, "takengranularity": 0,
                      "takenunknown": str(int(photo.date_taken_unknown)), "lastupdate": str(photo.date_upload)},
            "usage": {"candownload": 1, "canblog": 0, "canprint": 0, "canshare": 1},
            "comments": {"_content": "0"},
            "tags": {"tag": [
                {"id": f"{owner.nsid.split('@')[0]}-{photo.photo_id}-{index}", "author": owner.nsid,
                 "authorname": owner.username, "raw": tag, "_content": tag, "machine_tag": 0}
                for index, tag in enumerate(photo.tags)
            ]},
            "urls": {"url": [{"type": "photopage", "_content": self.page_url(photo)}]},
        }}

    # other -----------------------------------------------------------------

    def _photos_licenses_getInfo(self, params: Mapping[str, str]) -> dict:
        return {"licenses": {"license": [
            {"id": license_id, "name": name, "url": url} for license_id, name, url in LICENSES
        ]}}

    def _test_echo(self, params: Mapping[str, str]) -> dict:
        return {name: {"_content": value} for name, value in params.items()}


def _newest_first(photo: ReplayPhoto) -> tuple[int, int]:
    return -photo.date_upload, -int(photo.photo_id)


def _interestingness(photo: ReplayPhoto) -> int:
    """A stable pseudo-random interestingness score of a photo."""
    return int(_id_hash(photo.photo_id, "interestingness")[:12], 16)


_SORT_KEYS: Mapping[str, Callable[[ReplayPhoto], object]] = MappingProxyType({
    "date-posted-desc": _newest_first,
    "date-posted-asc": lambda photo: (photo.date_upload, int(photo.photo_id)),
    "date-taken-desc": lambda photo: (_negated(photo.date_taken), -int(photo.photo_id)),
    "date-taken-asc": lambda photo: (photo.date_taken, int(photo.photo_id)),
    "interestingness-desc": lambda photo: -_interestingness(photo),
    "interestingness-asc": _interestingness,
    "relevance": lambda photo: -_interestingness(photo),
})
"""``flickr.photos.search`` sort orders; an unknown order sorts newest first."""


def _negated(date_text: str) -> int:
    return -(_parse_date(date_text) or 0)


def _search_filter(params: Mapping[str, str]) -> Callable[[ReplayPhoto], bool]:
    """Predicate for the ``flickr.photos.search`` arguments other than user, group, sort and paging."""
    licenses = {int(item) for item in params.get("license", "").split(",") if item.strip().isdigit()}
    words = params.get("text", "").casefold().split()
    tags = {tag.strip().casefold() for tag in params.get("tags", "").split(",") if tag.strip()}
    all_tags = params.get("tag_mode", "any") == "all"
    media = params.get("media", "all")
    bounds = {name: _parse_date(params[name]) for name in
              ("min_upload_date", "max_upload_date", "min_taken_date", "max_taken_date") if params.get(name)}

    def keep(photo: ReplayPhoto) -> bool:
        taken = _parse_date(photo.date_taken) or 0
        searchable = f"{photo.title} {' '.join(photo.tags)}".casefold()
        checks = (
            not licenses or photo.license in licenses,
            all(word in searchable for word in words),
            not tags or (tags <= set(photo.tags) if all_tags else bool(tags & set(photo.tags))),
            media not in ("photos", "videos") or photo.media == media[:-1],
            bounds.get("min_upload_date") is None or photo.date_upload >= bounds["min_upload_date"],
            bounds.get("max_upload_date") is None or photo.date_upload <= bounds["max_upload_date"],
            bounds.get("min_taken_date") is None or taken >= bounds["min_taken_date"],
            bounds.get("max_taken_date") is None or taken <= bounds["max_taken_date"],
        )
        return all(checks)

    return keep


# --------------------------------------------------------------------------- reply formats


def encode_reply(result: dict | ApiError, params: Mapping[str, str]) -> tuple[str, bytes]:
    """Serialise a payload or an error in the format the request asked for.

    Parameters
    ----------
    result : dict or ApiError
        Payload from :meth:`ReplayApi.call`, or the error to report.
    params : mapping of str to str
        Request arguments: ``format`` (``json`` or ``rest``, default
        ``rest``), ``nojsoncallback`` and ``jsoncallback``.

    Returns
    -------
    (str, bytes)
        Content type and body: JSON, JSONP ``jsonFlickrApi(...)`` or
        ``<rsp stat="...">`` XML. Elements map to JSON the way Flickr maps
        them: attributes become keys, text becomes ``{"_content": ...}`` and
        repeated children a list.
    """
    if params.get("format", "rest") == "json":
        if isinstance(result, ApiError):
            document = {"stat": "fail", "code": result.code, "message": result.message}
        else:
            document = {**result, "stat": "ok"}
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        if params.get("nojsoncallback", "") not in ("", "0"):
            return "application/json; charset=utf-8", text.encode("utf-8")
        callback = params.get("jsoncallback", "")
        callback = callback if _CALLBACK_NAME.fullmatch(callback) else "jsonFlickrApi"
        return "text/javascript; charset=utf-8", f"{callback}({text})".encode("utf-8")
    if isinstance(result, ApiError):
        root = ElementTree.Element("rsp", stat="fail")
        ElementTree.SubElement(root, "err", code=str(result.code), msg=result.message)
    else:
        root = _xml_element("rsp", {**result, "stat": "ok"})
    body = '<?xml version="1.0" encoding="utf-8" ?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"
    return "text/xml; charset=utf-8", body.encode("utf-8")


def _xml_element(tag: str, value: object) -> ElementTree.Element:
    element = ElementTree.Element(tag)
    if not isinstance(value, dict):
        element.text = _xml_text(value)
        return element
    for key, item in value.items():
        if key == "_content":
            element.text = _xml_text(item)
        elif not _XML_NAME.fullmatch(key) or item is None:
            continue
        elif isinstance(item, dict):
            element.append(_xml_element(key, item))
        elif isinstance(item, list):
            element.extend(_xml_element(key, child) for child in item)
        else:
            element.set(key, _xml_text(item))
    return element


def _xml_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- HTTP server


@dataclass
class _Reply:
    status: int
    content_type: str
    body: bytes
    label: str
    fault: str | None = None
    delay: float = 0.0
    truncate: bool = False


_NOT_FOUND = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


class _ReplayStats:
    """Thread-safe request counters."""

    def __init__(self) -> None:
        self._counters = {name: Counter() for name in ("requests", "methods", "faults", "statuses")}
        self._lock = threading.Lock()

    def count(self, kind: str, reply: _Reply, method: str | None) -> None:
        with self._lock:
            self._counters["requests"][kind] += 1
            self._counters["statuses"][reply.status] += 1
            if method is not None:
                self._counters["methods"][method] += 1
            if reply.fault is not None:
                self._counters["faults"][f"{kind}:{reply.fault}"] += 1

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {name: dict(counter) for name, counter in self._counters.items()}


class ReplayServer:
    """Serve a photo folder as the Flickr REST API plus its static image host.

    Parameters
    ----------
    directory : str or Path
        The served folder (layout in the module docstring); indexed once here.
    host : str
        Loopback address to bind (``127.0.0.1``, ``::1``, ``localhost``).
    port : int
        TCP port; 0 picks a free one (see :attr:`port`).
    api_key : str, optional
        When set, requests with another key answer error 100.
    faults : FaultSpec or str, optional
        Faults to inject (a spec string is parsed); none by default.
    seed : int
        Seed of the fault draws.
    static_base : str, optional
        Prefix of the ``url_*`` image URLs; default this server's
        ``/static/``. ``"https://live.staticflickr.com/"`` emits real
        Flickr URLs (the local host still serves ``/static/``).
    cache_bytes : int
        Bound of the LRU cache of resized images, bytes. Default 64 MiB.

    Raises
    ------
    ValueError
        If ``host`` is not a loopback address, or the folder is invalid.

    Notes
    -----
    The socket is bound on construction. Use :meth:`start` / :meth:`stop`
    (or ``with``) for a background thread, :meth:`serve_forever` to block.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        faults: FaultSpec | str | None = None,
        seed: int = 0,
        static_base: str | None = None,
        cache_bytes: int = 64 << 20,
    ) -> None:
        family = _loopback_family(host)
        self.corpus = load_corpus(directory)
        self.faults = FaultSpec.parse(faults) if isinstance(faults, str) else faults or FaultSpec.none()
        self.seed = seed
        self._api_key = api_key
        self._http = _HttpServer((host, port), family, self)
        self._url_host = f"[{host}]" if family == socket.AF_INET6 else host
        base = static_base or f"http://{self._url_host}:{self.port}/static/"
        self.api = ReplayApi(self.corpus, base)
        self._renders = _RenderCache(cache_bytes)
        self._stats = _ReplayStats()
        self._attempts = AttemptCounter()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        log.info("replaying %d users, %d photos, %d groups on %s",
                 len(self.corpus.users), len(self.corpus.photos), len(self.corpus.groups), self.rest_url)

    # public surface -------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._http.server_address[1]

    @property
    def rest_url(self) -> str:
        """URL to assign to ``FlickrAPI.REST_URL``."""
        return f"http://{self._url_host}:{self.port}/services/rest/"

    @property
    def static_base(self) -> str:
        """Prefix of the image URLs in replies, ending in ``/``."""
        return self.api.static_base

    @property
    def stats(self) -> dict[str, dict]:
        """Counters so far: ``requests`` by kind (api/img/other), ``methods``,
        ``faults`` by ``target:kind`` and ``statuses`` by HTTP status."""
        return self._stats.snapshot()

    def start(self) -> "ReplayServer":
        """Serve in a background daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"flickr-replay-{self.port}", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` runs or ``timeout`` seconds pass; True once stopped.

        Ctrl-C interrupts the wait with KeyboardInterrupt.
        """
        return self._stopping.wait(timeout)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (KeyboardInterrupt propagates)."""
        try:
            self._http.serve_forever(poll_interval=0.5)
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, wake faults that are sleeping, and close every connection."""
        if self._thread is not None:
            self._stopping.set()
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._close()

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # request handling -----------------------------------------------------

    def _close(self) -> None:
        self._stopping.set()
        self._http.server_close()
        self._http.close_connections()

    def _respond(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        method = None
        if split.path in ("/services/rest/", "/services/rest"):
            kind = "api"
            params = dict(parse_qsl(split.query, keep_blank_values=True))
            problem = _read_form(handler, params)
            if problem is not None:
                reply = problem
            else:
                method = params.get("method", "")
                reply = self._api_reply(params, handler.headers.get("Authorization"), split.path)
        elif split.path.startswith("/static/"):
            kind = "img"
            reply = self._image_reply(split.path)
        else:
            kind = "other"
            reply = _Reply(404, "text/html; charset=utf-8", _NOT_FOUND, split.path)
        if reply.delay:
            self._stopping.wait(reply.delay)
        self._stats.count(kind, reply, method)
        log.debug("%s %s %s -> %d, %d bytes%s", handler.client_address[0], handler.command, reply.label,
                  reply.status, len(reply.body), f", fault {reply.fault}" if reply.fault else "")
        _send(handler, reply)

    def _draw_fault(self, target: str, request_key: str) -> str | None:
        if not self.faults.active:
            return None
        attempt = self._attempts.next(request_key)
        return self.faults.pick(target, seed=self.seed, request_key=request_key, attempt=attempt)

    def _api_reply(self, params: dict[str, str], authorization: str | None, path: str) -> _Reply:
        label = repr(params.get("method", ""))
        signed = {name: value for name, value in params.items() if name != "api_key" and not name.startswith("oauth_")}
        fault = self._draw_fault("api", f"{path}?{urlencode(sorted(signed.items()))}")
        if fault in STATUS_KINDS:
            status, page = status_page(fault)
            return _Reply(status, "text/html; charset=utf-8", page, label, fault)
        reply_format = params.get("format", "rest")
        if reply_format not in ("json", "rest"):
            params = {**params, "format": "rest"}
            result: dict | ApiError = ApiError(111, f'Format "{reply_format}" not found')
        elif fault in ("105", "0"):
            result = ApiError(int(fault), API_ERROR_MESSAGES[int(fault)])
        elif self._api_key is not None and _consumer_key(authorization, params) != self._api_key:
            result = ApiError(100, "Invalid API Key (Key has invalid format)")
        else:
            try:
                result = self.api.call(params.get("method", ""), params)
            except ApiError as error:
                result = error
        content_type, body = encode_reply(result, params)
        return self._finish(_Reply(200, content_type, body, label, fault))

    def _image_reply(self, path: str) -> _Reply:
        fault = self._draw_fault("img", path)
        if fault in STATUS_KINDS:
            status, page = status_page(fault)
            return _Reply(status, "text/html; charset=utf-8", page, path, fault)
        found = self._find_image(path)
        if found is None:
            return self._finish(_Reply(404, "text/html; charset=utf-8", _NOT_FOUND, path, fault))
        photo, size = found
        if size.suffix == "o":
            content_type, body = f"image/{'jpeg' if photo.original_format == 'jpg' else photo.original_format}", \
                photo.path.read_bytes()
        else:
            content_type, body = "image/jpeg", self._rendered(photo, size)
        if fault == "html":
            body = not_an_image_page()
        return self._finish(_Reply(200, content_type, body, path, fault))

    def _finish(self, reply: _Reply) -> _Reply:
        """Apply the body-level faults to a normal reply."""
        if reply.fault == "malformed":
            reply.body = malformed(reply.body)
        reply.truncate = reply.fault == "truncate"
        reply.delay = {"slow": self.faults.slow_seconds, "timeout": self.faults.timeout_seconds}.get(reply.fault, 0.0)
        return reply

    def _find_image(self, path: str) -> tuple[ReplayPhoto, PhotoSize] | None:
        match = _STATIC_PATH.fullmatch(path)
        if match is None:
            return None
        server, photo_id, secret, suffix, extension = match.groups()
        photo = self.corpus.photos.get(photo_id)
        size = SIZES_BY_SUFFIX.get(suffix or "")
        if photo is None or size is None or photo.server != server or photo.secret_for(size) != secret:
            return None
        expected = photo.original_format if size.suffix == "o" else "jpg"
        return (photo, size) if extension == expected else None

    def _rendered(self, photo: ReplayPhoto, size: PhotoSize) -> bytes:
        dimensions = served_dimensions(photo.width, photo.height, size)
        if dimensions == (photo.width, photo.height) and photo.original_format == "jpg":
            return photo.path.read_bytes()
        key = (photo.photo_id, size.suffix)
        body = self._renders.get(key)
        if body is None:
            body = render_jpeg(photo.path, dimensions, square=size.square)
            self._renders.put(key, body)
        return body


def _loopback_family(host: str) -> socket.AddressFamily:
    """Address family of a loopback host; ValueError for anything else."""
    if host == "localhost":
        return socket.AF_INET
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"refusing to bind {host!r}: the replay server binds loopback addresses only") from None
    if not address.is_loopback:
        raise ValueError(f"refusing to bind {host!r}: the replay server binds loopback addresses only")
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _consumer_key(authorization: str | None, params: Mapping[str, str]) -> str | None:
    """The API key of a request: OAuth ``oauth_consumer_key``, else the ``api_key`` argument."""
    if authorization and authorization.startswith("OAuth "):
        for name, value in _OAUTH_PARAM.findall(authorization):
            if name == "oauth_consumer_key":
                return unquote(value)
    return params.get("api_key")


def _read_form(handler: http.server.BaseHTTPRequestHandler, params: dict[str, str]) -> _Reply | None:
    """Merge a POST form body into ``params``; a reply when the body cannot be read."""
    if handler.command != "POST":
        return None
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        handler.close_connection = True
        return _Reply(411, "text/plain; charset=utf-8", b"Length Required\n", "chunked body")
    length = _int_or(handler.headers.get("Content-Length"), 0)
    if length > MAX_BODY_BYTES:
        handler.close_connection = True
        return _Reply(413, "text/plain; charset=utf-8", b"Request Entity Too Large\n", f"{length}-byte body")
    body = handler.rfile.read(max(0, length))
    if handler.headers.get_content_type() == "application/x-www-form-urlencoded":
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return None


def _send(handler: http.server.BaseHTTPRequestHandler, reply: _Reply) -> None:
    """Write a reply; a truncated one declares the full length, sends half and closes."""
    try:
        handler.send_response(reply.status)
        handler.send_header("Content-Type", reply.content_type)
        handler.send_header("Content-Length", str(len(reply.body)))
        if reply.truncate or handler.close_connection:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(reply.body[: len(reply.body) // 2] if reply.truncate else reply.body)
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
        handler.close_connection = True


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pie-flickr-replay"
    sys_version = ""
    timeout = 60  # seconds an idle keep-alive connection stays open
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

    def _dispatch(self) -> None:
        try:
            self.server.replay._respond(self)
        except Exception:  # a bug must not kill the connection silently: log it and answer 500
            log.exception("replay server failed on %s %s", self.command, urlsplit(self.path).path)
            _send(self, _Reply(500, "text/plain; charset=utf-8", b"Internal Server Error\n", "error"))
            self.close_connection = True

    do_GET = do_POST = do_HEAD = _dispatch

    def log_request(self, code: object = "-", size: object = "-") -> None:
        """Requests are logged by :class:`ReplayServer` (never with their headers)."""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s: %s", self.client_address[0], format % args)


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, replay: ReplayServer) -> None:
        self.address_family = family
        self.replay = replay
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup of ``HTTPServer.server_bind``."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: socket.socket, client_address: object) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open keep-alive connection so its handler thread ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

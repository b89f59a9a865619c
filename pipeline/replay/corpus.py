"""The served-folder format of the Flickr replay server and its index.

:class:`pipeline.replay.server.ReplayServer` serves a folder of photos as the
Flickr REST API and image host, so that the crawler of the Flickr pseudo-pair
dataset (Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked
Style Modeling", IEEE TCSVT 2023, Sec. IV-A) runs without reaching Flickr.
:func:`load_corpus` indexes such a folder once into a :class:`ReplayCorpus`;
this module also holds Flickr's photo sizes (:data:`SIZES`) and the pixel size
each one has for a given original (:func:`size_dimensions`,
:func:`served_dimensions`).

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
derived from the same hash, ``license`` cycles through :data:`LICENSE_IDS`
by photo id, ``date_taken`` comes from the EXIF DateTimeOriginal (else the
file's modification time in UTC, flagged ``datetakenunknown``), and
``date_upload`` is the file's modification time. The folder is indexed once
when the server is built; image sizes come from the file headers.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

from PIL import Image

from manifests.ids import PHOTO_ID_PATTERN, SECRET_PATTERN, SERVER_PATTERN, is_nsid
from manifests.licenses import LICENSES

log = logging.getLogger("pie.replay")

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
"""Flickr's MySQL-style date-time ("YYYY-MM-DD HH:MM:SS")."""

DAY_FORMAT = "%Y-%m-%d"
"""A date without a time, as in date arguments."""

LICENSE_IDS: tuple[int, ...] = tuple(int(license_id) for license_id in LICENSES)
"""Flickr's licence ids 0-16 (:data:`manifests.licenses.LICENSES`) as the ints
the replay stores; a photo without a sidecar licence gets
``LICENSE_IDS[int(photo_id) % 17]``."""


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

_IMAGE_NAME = re.compile(rf"({PHOTO_ID_PATTERN.pattern})\.(jpe?g|png)", re.IGNORECASE)
_SIDECAR_NAME = re.compile(rf"{PHOTO_ID_PATTERN.pattern}\.json")
_PATH_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
            return id_hash(self.photo_id, size.suffix)[:10]
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
    digest = id_hash(photo_id)
    date_taken = _optional(sidecar, "date_taken", str, sidecar_path)
    if date_taken is not None and parse_date(date_taken) is None:
        raise ValueError(f"{sidecar_path}: date_taken {date_taken!r} is not 'YYYY-MM-DD HH:MM:SS'")
    date_upload = sidecar.get("date_upload", mtime)
    upload_seconds = parse_date(str(date_upload)) if not isinstance(date_upload, bool) else None
    if upload_seconds is None:
        raise ValueError(f"{sidecar_path}: date_upload {date_upload!r} is not unix seconds or a date")
    license_id = sidecar.get("license", LICENSE_IDS[int(photo_id) % len(LICENSE_IDS)])
    if isinstance(license_id, str) and license_id.isdigit():
        license_id = int(license_id)
    if isinstance(license_id, bool) or license_id not in LICENSE_IDS:
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
        original_secret=id_hash(photo_id, "o")[:10],
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


def id_hash(photo_id: str, salt: str = "") -> str:
    """SHA-1 hex digest (40 characters) of the photo id and an optional salt.

    The source of every deterministic default of a photo (secrets, server,
    farm) and of the replay's interestingness order.
    """
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


def parse_date(value: str) -> int | None:
    """Unix seconds of a Flickr date: unix seconds or MySQL datetime/date (UTC); None if neither."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    for layout in (DATE_FORMAT, DAY_FORMAT):
        try:
            return calendar.timegm(time.strptime(value, layout))
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------- sizes


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

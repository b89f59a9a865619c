"""The Flickr REST methods of the replay server and the encoding of their replies.

:class:`ReplayApi` answers the methods that the crawler of the Flickr
pseudo-pair dataset (Kosugi & Yamasaki, "Personalized Image Enhancement
Featuring Masked Style Modeling", IEEE TCSVT 2023, Sec. IV-A) and the
``flickrapi`` client call, from a :class:`~pipeline.replay.corpus.ReplayCorpus`,
with Flickr's documented JSON shapes, value types, error codes and paging
(:func:`paginate`). :func:`encode_reply` turns a payload or an
:class:`ApiError` into JSON, JSONP or ``<rsp>`` XML as the request asks.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Callable, Mapping, Sequence
from urllib.parse import unquote

from manifests.licenses import LICENSES
from pipeline.replay.corpus import (
    DAY_FORMAT,
    SIZES,
    PhotoSize,
    ReplayCorpus,
    ReplayPhoto,
    ReplayUser,
    id_hash,
    parse_date,
    size_dimensions,
)

FLICKR_WEB = "https://www.flickr.com"

SEARCH_RESULT_CAP = 4000
"""``flickr.photos.search`` returns at most this many results; later pages repeat."""

INTERESTINGNESS_CAP = 500
"""``flickr.interestingness.getList`` lists at most this many photos."""

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 100

_PROFILE_URL = re.compile(r"flickr\.com/(?:photos|people)/([^/?#\s]+)", re.IGNORECASE)
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_CALLBACK_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}")


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
    per_page = int_argument(params.get("per_page"), DEFAULT_PER_PAGE)
    per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, max_per_page)
    return max(1, int_argument(params.get("page"), 1)), per_page


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


def int_argument(value: str | None, default: int) -> int:
    """An integer request argument or header value; ``default`` when absent or not an integer."""
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
                day = datetime.strptime(params["date"], DAY_FORMAT).date()
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
            {"id": int(item.id), "name": item.name, "url": item.url} for item in LICENSES.values()
        ]}}

    def _test_echo(self, params: Mapping[str, str]) -> dict:
        return {name: {"_content": value} for name, value in params.items()}


def _newest_first(photo: ReplayPhoto) -> tuple[int, int]:
    return -photo.date_upload, -int(photo.photo_id)


def _interestingness(photo: ReplayPhoto) -> int:
    """A stable pseudo-random interestingness score of a photo."""
    return int(id_hash(photo.photo_id, "interestingness")[:12], 16)


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
    return -(parse_date(date_text) or 0)


def _search_filter(params: Mapping[str, str]) -> Callable[[ReplayPhoto], bool]:
    """Predicate for the ``flickr.photos.search`` arguments other than user, group, sort and paging."""
    licenses = {int(item) for item in params.get("license", "").split(",") if item.strip().isdigit()}
    words = params.get("text", "").casefold().split()
    tags = {tag.strip().casefold() for tag in params.get("tags", "").split(",") if tag.strip()}
    all_tags = params.get("tag_mode", "any") == "all"
    media = params.get("media", "all")
    bounds = {name: parse_date(params[name]) for name in
              ("min_upload_date", "max_upload_date", "min_taken_date", "max_taken_date") if params.get(name)}

    def keep(photo: ReplayPhoto) -> bool:
        taken = parse_date(photo.date_taken) or 0
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

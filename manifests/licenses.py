"""Flickr licence ids, names and URLs (flickr.photos.licenses.getInfo).

Flickr has renamed licences over time ("Attribution License" became
"CC BY 2.0"), so the id is what identifies one. ``OPEN_LICENSE_IDS`` are the
Creative Commons and public-domain licences a dataset may redistribute with
attribution: every id except 0 (All Rights Reserved).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class License:
    """One Flickr licence: numeric id as a string, display name and URL."""

    id: str
    name: str
    url: str

    def as_record(self) -> dict:
        return {"id": self.id, "name": self.name, "url": self.url}


_CC = "https://creativecommons.org/licenses/"
LICENSES: dict[str, License] = {
    item.id: item
    for item in (
        License("0", "All Rights Reserved", ""),
        License("1", "CC BY-NC-SA 2.0", _CC + "by-nc-sa/2.0/"),
        License("2", "CC BY-NC 2.0", _CC + "by-nc/2.0/"),
        License("3", "CC BY-NC-ND 2.0", _CC + "by-nc-nd/2.0/"),
        License("4", "CC BY 2.0", _CC + "by/2.0/"),
        License("5", "CC BY-SA 2.0", _CC + "by-sa/2.0/"),
        License("6", "CC BY-ND 2.0", _CC + "by-nd/2.0/"),
        License("7", "No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
        License("8", "United States Government Work", "http://www.usa.gov/copyright.shtml"),
        License("9", "Public Domain Dedication (CC0)", "https://creativecommons.org/publicdomain/zero/1.0/"),
        License("10", "Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/"),
        License("11", "CC BY 4.0", _CC + "by/4.0/"),
        License("12", "CC BY-SA 4.0", _CC + "by-sa/4.0/"),
        License("13", "CC BY-ND 4.0", _CC + "by-nd/4.0/"),
        License("14", "CC BY-NC 4.0", _CC + "by-nc/4.0/"),
        License("15", "CC BY-NC-SA 4.0", _CC + "by-nc-sa/4.0/"),
        License("16", "CC BY-NC-ND 4.0", _CC + "by-nc-nd/4.0/"),
    )
}

OPEN_LICENSE_IDS: frozenset[str] = frozenset(LICENSES) - {"0"}

#: The licence of a listed photo whose licence Flickr's API did not confirm (the user has left,
#: the photo is no longer public, or the crawl ran ``--offline`` from a published list).
UNVERIFIED = License("unknown", "licence not verified", "")


def sorted_ids(license_ids) -> list[str]:
    """Flickr's numeric licence ids in numeric order, then ``unknown`` when present."""
    return sorted(license_ids, key=lambda item: (not item.isdigit(), int(item) if item.isdigit() else 0, item))


def lookup(license_id: object) -> License:
    """The licence for an id given as int or string; unknown ids get a placeholder."""
    key = str(license_id).strip()
    return LICENSES.get(key, License(key, f"unknown licence {key}", ""))


def parse_license_filter(text: str) -> frozenset[str]:
    """Parse ``--licenses``: ``open`` (default), ``all`` (every id and ``unknown``, an unverified
    licence), or a comma list of ids.

    Raises ValueError naming the first id that is not a Flickr licence id.
    """
    value = text.strip().lower()
    if value == "open":
        return OPEN_LICENSE_IDS
    if value == "all":
        return frozenset(LICENSES) | {UNVERIFIED.id}
    ids = [part.strip() for part in value.split(",") if part.strip()]
    for item in ids:
        if item not in LICENSES and item != UNVERIFIED.id:
            raise ValueError(f"--licenses: {item!r} is not a Flickr licence id (0-16, 'unknown', 'open' or 'all')")
    if not ids:
        raise ValueError("--licenses: empty licence list")
    return frozenset(ids)

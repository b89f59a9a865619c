"""Validation of Flickr identifiers before they touch a path.

Every id that comes from an API reply, a user list or a manifest passes through
here first: an NSID must match ``^\\d+@N\\d{2}$`` and a photo id ``^\\d+$``
(DESIGN.md, "Records and layout"). Anything else, such as ``../../etc`` or an
id with a NUL byte, is refused with :class:`InvalidIdError`.
"""

from __future__ import annotations

import re

NSID_PATTERN = re.compile(r"\d+@N\d{2}")
PHOTO_ID_PATTERN = re.compile(r"\d{1,20}")
SECRET_PATTERN = re.compile(r"[0-9a-f]{1,32}")
SERVER_PATTERN = re.compile(r"\d{1,10}")
RULE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class InvalidIdError(ValueError):
    """An identifier that does not have the documented Flickr form."""


def _check(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidIdError(f"{what} {value!r} is not a valid {what}")
    return value


def check_nsid(value: object) -> str:
    """Return ``value`` if it is a Flickr NSID such as ``12037949754@N01``."""
    return _check(value, NSID_PATTERN, "NSID")


def check_photo_id(value: object) -> str:
    """Return ``value`` if it is a Flickr photo id (decimal digits only)."""
    return _check(value, PHOTO_ID_PATTERN, "photo id")


def check_secret(value: object) -> str:
    """Return ``value`` if it is a Flickr URL secret (lower-case hex)."""
    return _check(value, SECRET_PATTERN, "photo secret")


def check_server(value: object) -> str:
    """Return ``value`` if it is a Flickr server number (decimal digits)."""
    return _check(value, SERVER_PATTERN, "server")


def check_rule_name(value: object) -> str:
    """Return ``value`` if it is usable as a rule (pseudo-user) name and folder."""
    return _check(value, RULE_NAME_PATTERN, "rule name")


def is_nsid(value: object) -> bool:
    """True when ``value`` is a syntactically valid NSID."""
    return isinstance(value, str) and NSID_PATTERN.fullmatch(value) is not None

"""Seeded fault injection for the Flickr replay server.

The crawler of the Flickr pseudo-pair dataset (Kosugi & Yamasaki, "Personalized
Image Enhancement Featuring Masked Style Modeling", IEEE TCSVT 2023, Sec. IV-A)
talks to a service that fails in documented ways: HTTP 5xx, throttling as HTTP
429 with an HTML page, API replies ``stat=fail`` with the transient codes 105
and 0, slow or hung replies, bodies cut short, and CDN pages that are HTML
instead of JPEG. :class:`FaultSpec` describes how often each of these happens
and :meth:`FaultSpec.pick` decides, reproducibly, whether one request fails.

Spec strings
------------
A spec is a comma-separated list of ``target:kind=rate`` items, for example
``"api:500=0.05,api:429=0.05,img:truncate=0.05"``, plus the optional settings
``slow_seconds=S`` and ``timeout_seconds=S``. Targets and their kinds:

``api`` (the REST endpoint)
    ``500`` ``502`` ``503`` (HTML error page with that status), ``429`` (HTML
    throttling page), ``105`` and ``0`` (HTTP 200 carrying ``stat=fail`` with
    that code), ``slow`` (answer after ``slow_seconds``), ``timeout`` (answer
    after ``timeout_seconds``, meant to exceed the client's timeout),
    ``truncate`` (full Content-Length, half the body, then close),
    ``malformed`` (HTTP 200 whose body does not parse).
``img`` (the static image host)
    ``500`` ``502`` ``503`` ``429`` ``slow`` ``timeout`` ``truncate`` as above,
    and ``html`` (HTTP 200, ``Content-Type: image/jpeg``, HTML body).

A rate is a probability in [0, 1]; the rates of one target add up to at most 1,
because a request suffers at most one fault.

Determinism
-----------
The draw for a request is a hash of ``(seed, target, request key, attempt)``,
where the request key is the path plus the request's parameters and the
attempt counts earlier identical requests. The same run of requests therefore
meets the same faults, and a retry of a failed request is a fresh draw that
can succeed.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

TARGETS = ("api", "img")
"""Where a fault can strike: the REST endpoint or the static image host."""

STATUS_KINDS = ("500", "502", "503", "429")
"""Kinds answered with an HTTP error status and an HTML page."""

KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "api": STATUS_KINDS + ("105", "0", "slow", "timeout", "truncate", "malformed"),
        "img": STATUS_KINDS + ("slow", "timeout", "truncate", "html"),
    }
)
"""The fault kinds each target accepts, in the order :meth:`FaultSpec.pick` tries them."""

API_ERROR_MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        105: "Service currently unavailable",
        0: "Sorry, the Flickr API service is not currently available.",
    }
)
"""Messages of the transient ``stat=fail`` codes (Flickr API error codes)."""

MAX_SLEEP_SECONDS = 120.0
"""Upper bound of ``slow_seconds`` and ``timeout_seconds``: a fault never hangs a server."""

_STATUS_REASONS = {
    "500": "Internal Server Error",
    "502": "Bad Gateway",
    "503": "Service Unavailable",
    "429": "Too Many Requests",
}


@dataclass(frozen=True)
class FaultSpec:
    """How often each fault kind strikes each target.

    Parameters
    ----------
    rates : mapping of (target, kind) to float
        Probability in [0, 1] that a request to ``target`` suffers ``kind``.
    slow_seconds : float
        Delay of a ``slow`` fault, seconds, in [0, 120]. Default 1.5.
    timeout_seconds : float
        Delay of a ``timeout`` fault, seconds, in [0, 120]. Default 5, longer
        than a crawler's usual read timeout.

    Raises
    ------
    ValueError
        For an unknown target or kind, a rate outside [0, 1], rates of one
        target adding up to more than 1, or a delay outside [0, 120] s.
    """

    rates: Mapping[tuple[str, str], float] = field(default_factory=dict)
    slow_seconds: float = 1.5
    timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        checked = {}
        for (target, kind), rate in dict(self.rates).items():
            try:
                checked[(target, kind)] = _checked_rate(target, kind, rate)
            except ValueError as error:
                raise ValueError(f"fault item {target}:{kind}={rate}: {error}") from None
        for target in TARGETS:
            total = sum(rate for (t, _), rate in checked.items() if t == target)
            if total > 1.0 + 1e-9:
                raise ValueError(f"fault rates for {target} add up to {total:g}, more than 1")
        for name in ("slow_seconds", "timeout_seconds"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= MAX_SLEEP_SECONDS:
                raise ValueError(f"{name}={value:g} must lie in [0, {MAX_SLEEP_SECONDS:g}] seconds")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "rates", MappingProxyType(checked))

    @classmethod
    def none(cls) -> "FaultSpec":
        """A spec that injects nothing."""
        return cls()

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        """Read a spec string such as ``"api:500=0.05,img:html=0.05,slow_seconds=0.5"``.

        Parameters
        ----------
        text : str
            Comma-separated ``target:kind=rate`` items and optional
            ``slow_seconds=S`` / ``timeout_seconds=S`` settings; blank for none.

        Returns
        -------
        FaultSpec

        Raises
        ------
        ValueError
            Naming the first item that is malformed or out of range.
        """
        rates: dict[tuple[str, str], float] = {}
        settings: dict[str, float] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, equals, value = item.partition("=")
            name = name.strip()
            try:
                number = float(value)
            except ValueError:
                number = None
            if not equals or number is None:
                raise ValueError(f"fault item {item!r}: expected target:kind=rate")
            if name in ("slow_seconds", "timeout_seconds"):
                settings[name] = number
                continue
            target, colon, kind = name.partition(":")
            if not colon:
                raise ValueError(f"fault item {item!r}: expected target:kind=rate")
            if (target, kind) in rates:
                raise ValueError(f"fault item {item!r}: {target}:{kind} given twice")
            try:
                rates[(target, kind)] = _checked_rate(target, kind, number)
            except ValueError as error:
                raise ValueError(f"fault item {item!r}: {error}") from None
        try:
            return cls(rates=rates, **settings)
        except ValueError as error:
            raise ValueError(f"fault spec {text!r}: {error}") from None

    def __str__(self) -> str:
        items = [f"{target}:{kind}={rate:g}" for (target, kind), rate in self.rates.items()]
        items += [f"slow_seconds={self.slow_seconds:g}", f"timeout_seconds={self.timeout_seconds:g}"]
        return ",".join(items)

    @property
    def active(self) -> bool:
        """True when some rate is above zero."""
        return any(rate > 0 for rate in self.rates.values())

    def pick(self, target: str, *, seed: int, request_key: str, attempt: int) -> str | None:
        """Decide whether one request suffers a fault, and which.

        Parameters
        ----------
        target : {"api", "img"}
            Where the request went.
        seed : int
            Run seed; the same seed gives the same faults.
        request_key : str
            Path and canonical parameters of the request.
        attempt : int
            How many identical requests came before this one (0 for the first).

        Returns
        -------
        str or None
            The fault kind (e.g. ``"429"``), or None for a normal answer.
        """
        digest = hashlib.sha256(f"{seed}\0{target}\0{request_key}\0{attempt}".encode("utf-8")).digest()
        draw = int.from_bytes(digest[:8], "big") / 2.0**64
        threshold = 0.0
        for kind in KINDS[target]:
            rate = self.rates.get((target, kind), 0.0)
            threshold += rate
            if rate > 0 and draw < threshold:
                return kind
        return None


def _checked_rate(target: str, kind: str, rate: float) -> float:
    """Return ``rate`` as a float after checking target, kind and range."""
    if target not in KINDS:
        raise ValueError(f"unknown target {target!r} (use {', '.join(TARGETS)})")
    if kind not in KINDS[target]:
        raise ValueError(f"unknown kind {kind!r} for {target} (use {', '.join(KINDS[target])})")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate {rate:g} must lie in [0, 1]")
    return rate


class AttemptCounter:
    """Thread-safe count of how often each request key has been seen."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def next(self, request_key: str) -> int:
        """Return the number of earlier requests with this key, and count this one."""
        with self._lock:
            attempt = self._seen[request_key]
            self._seen[request_key] += 1
            return attempt


def status_page(kind: str) -> tuple[int, bytes]:
    """HTML error page for a status fault.

    Parameters
    ----------
    kind : {"500", "502", "503", "429"}

    Returns
    -------
    (int, bytes)
        HTTP status and an HTML body shaped like Flickr's (429 is Flickr's
        throttling answer, which is HTML, never JSON).
    """
    status = int(kind)
    reason = _STATUS_REASONS[kind]
    if kind == "429":
        detail = "Too many requests. Please slow down and try again later."
    else:
        detail = "Flickr is having a little trouble right now. Please try again in a moment."
    page = (
        "<!DOCTYPE html>\n<html><head><title>Flickr: {status} {reason}</title></head>\n"
        "<body><h1>{status} {reason}</h1><p>{detail}</p></body></html>\n"
    ).format(status=status, reason=reason, detail=detail)
    return status, page.encode("utf-8")


def not_an_image_page() -> bytes:
    """HTML page served in place of a JPEG by an ``html`` fault (a CDN or portal page)."""
    return (
        b"<!DOCTYPE html>\n<html><head><title>Flickr: This photo is no longer available</title></head>\n"
        b"<body><p>This photo is no longer available.</p></body></html>\n"
    )


def malformed(body: bytes) -> bytes:
    """Cut a reply in the middle of its structure so no JSON or XML parser accepts it.

    Parameters
    ----------
    body : bytes
        The reply that would have been sent.

    Returns
    -------
    bytes
        Its first half followed by an unbalanced ``{"`` (never valid JSON, JSONP or XML).
    """
    return body[: len(body) // 2] + b'{"'

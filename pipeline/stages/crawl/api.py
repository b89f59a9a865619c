"""The real ``flickrapi`` client with the API budget, retries and error classes.

Every call goes through :meth:`FlickrClient.call`: it takes a token from the
shared :class:`~pipeline.stages.crawl.budget.ApiBudget`, asks Flickr (or any
Flickr-compatible REST endpoint set with ``api_url``) through
``flickrapi.FlickrAPI`` in ``parsed-json`` format, and sorts failures as
notes/flickr.md section 2 prescribes:

* retried with exponential backoff and full jitter: error codes 105, 106, 0 and
  201, HTTP 429 and 5xx, timeouts, dropped connections, malformed JSON;
* :class:`NotFound`: codes 1, 2 and 5 (no such user or photo, deleted);
* :class:`ApiKeyRejected`: code 100, which stops the crawl at once;
* :class:`ApiError`: anything else, or retries exhausted.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import flickrapi
import requests
from flickrapi.exceptions import FlickrError

from .budget import ApiBudget

log = logging.getLogger("pie.crawl")

FLICKR_REST_URL = "https://api.flickr.com/services/rest/"
TRANSIENT_CODES = frozenset({0, 105, 106, 201})
NOT_FOUND_CODES = frozenset({1, 2, 5})
_STATUS = re.compile(r"Status code (\d{3})")


class ApiError(RuntimeError):
    """A Flickr API call that failed for good."""


class ApiKeyRejected(ApiError):
    """Flickr refused the API key (error 100): nothing can proceed."""


class NotFound(ApiError):
    """The user or photo does not exist, is deleted, or is not visible (codes 1, 2, 5)."""


class _Transient(Exception):
    """A failure worth retrying."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    The n-th retry waits a uniform random time in ``[0, min(cap, base * 2**n)]``
    seconds; after ``attempts`` tries the failure is final.
    """

    attempts: int = 6
    base: float = 2.0
    cap: float = 60.0

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * (2 ** retry)))


@dataclass
class FlickrClient:
    """Budgeted, retrying access to the Flickr REST API through ``flickrapi``.

    The key and secret are held only inside the ``flickrapi`` object and never
    appear in messages raised or logged from here.
    """

    api_key: str
    api_secret: str
    budget: ApiBudget
    api_url: str = FLICKR_REST_URL
    timeout: float = 20.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    seed: int = 0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_secret:
            raise ApiKeyRejected("a Flickr API key and secret are needed "
                                 "(--api-key/--api-secret or FLICKR_API_KEY/FLICKR_API_SECRET)")
        self._flickr = flickrapi.FlickrAPI(self.api_key, self.api_secret, format="parsed-json",
                                           store_token=False, timeout=self.timeout)
        self._flickr.REST_URL = self.api_url
        self._rng = random.Random(self.seed)
        self.retries = 0

    def call(self, method: str, **params) -> dict:
        """Call ``method`` (e.g. ``"flickr.people.getPublicPhotos"``) and return the parsed reply."""
        for attempt in range(self.retry.attempts):
            self.budget.acquire()
            try:
                return self._call_once(method, params)
            except _Transient as exc:
                if attempt + 1 == self.retry.attempts:
                    raise ApiError(f"{method}: gave up after {self.retry.attempts} attempts ({exc})") from None
                delay = self.retry.delay(attempt, self._rng)
                self.retries += 1
                log.info("%s: %s; retrying in %.1f s", method, exc, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _call_once(self, method: str, params: dict) -> dict:
        try:
            reply = self._flickr.do_flickr_call(method, **params)
        except FlickrError as exc:
            code = exc.code
            if code is None:
                match = _STATUS.search(str(exc))
                status = int(match.group(1)) if match else None
                if status is not None and (status == 429 or status >= 500):
                    raise _Transient(f"HTTP {status}") from None
                raise ApiError(f"{method}: HTTP {status or 'error'}") from None
            message = _message_of(exc)
            if code == 100:
                raise ApiKeyRejected(f"Flickr rejected the API key (error 100: {message})") from None
            if code in TRANSIENT_CODES:
                raise _Transient(f"error {code}: {message}") from None
            if code in NOT_FOUND_CODES:
                raise NotFound(f"error {code}: {message}") from None
            raise ApiError(f"{method}: error {code}: {message}") from None
        except requests.Timeout:
            raise _Transient(f"no reply within {self.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise _Transient(f"connection failed ({exc.__class__.__name__})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
            raise _Transient("malformed JSON reply") from None
        if not isinstance(reply, dict):
            raise _Transient("reply is not a JSON object")
        return reply


def _message_of(exc: FlickrError) -> str:
    """The message part of flickrapi's ``"Error: <code>: <message>"``."""
    text = str(exc)
    parts = text.split(": ", 2)
    return parts[2] if len(parts) == 3 else text

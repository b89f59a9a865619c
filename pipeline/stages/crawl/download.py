"""Concurrent image downloads with per-host limits, retries and validation.

A download is kept only if it decodes fully as an image whose shorter side is
at least ``min_side`` pixels (:mod:`pipeline.imageio` does the decoding, with
its decompression-bomb limit). Transient failures (HTTP 429 and 5xx, timeouts,
dropped or truncated bodies) are retried with exponential backoff and jitter;
a body that is not an image is retried once, as CDNs sometimes answer with an
HTML error page.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from pipeline.imageio import ImageError, decode_image

from .api import RetryPolicy
from .dedupe import perceptual_hash

USER_AGENT = "pie-crawler/0.1 (+personalized image enhancement research dataset)"


@dataclass(frozen=True)
class Fetched:
    """Outcome of one download: either ``data`` with its facts, or a failure ``reason``."""

    url: str
    status: str  # "ok", "failed" or "rejected"
    attempts: int
    reason: str | None = None
    data: bytes | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    phash: int | None = None


class _RetryableError(Exception):
    pass


class Downloader:
    """A bounded pool of download threads.

    Parameters
    ----------
    concurrency : int
        Downloads in flight at once (threads), >= 1.
    per_host : int
        Downloads in flight to one host at once, >= 1.
    timeout : float
        Seconds for the connection and for each read.
    min_side : int
        Smallest accepted shorter side, pixels.
    """

    def __init__(self, *, concurrency: int = 16, per_host: int = 8, timeout: float = 15.0, min_side: int = 256,
                 retry: RetryPolicy | None = None, seed: int = 0, max_bytes: int = 64 * 2**20):
        if concurrency < 1 or per_host < 1:
            raise ValueError("concurrency and per_host must be at least 1")
        self.timeout = timeout
        self.min_side = min_side
        self.max_bytes = max_bytes
        self.retry = retry or RetryPolicy(attempts=5, base=1.0, cap=30.0)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pie-download")
        self._per_host = per_host
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._rng = random.Random(seed)
        self.bytes_downloaded = 0

    def submit(self, url: str) -> Future:
        """Start fetching ``url``; the future's result is a :class:`Fetched`."""
        return self._pool.submit(self.fetch, url)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
        return session

    def _slot(self, url: str) -> threading.BoundedSemaphore:
        host = urlsplit(url).netloc
        with self._lock:
            if host not in self._host_slots:
                self._host_slots[host] = threading.BoundedSemaphore(self._per_host)
            return self._host_slots[host]

    def _get(self, url: str) -> bytes:
        with self._slot(url):
            try:
                response = self._session().get(url, timeout=self.timeout, stream=True)
            except requests.Timeout:
                raise _RetryableError("timeout") from None
            except requests.ConnectionError:
                raise _RetryableError("connection-failed") from None
            with response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise _RetryableError(f"http-{response.status_code}")
                if response.status_code != 200:
                    raise ValueError(f"http-{response.status_code}")
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ValueError(f"too-large: {declared} bytes exceed the {self.max_bytes}-byte limit")
                chunks, size = [], 0
                try:
                    for chunk in response.iter_content(65536):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ValueError(f"too-large: more than {self.max_bytes} bytes")
                        chunks.append(chunk)
                except requests.RequestException:
                    raise _RetryableError("truncated") from None
                body = b"".join(chunks)
                if declared is not None and declared.isdigit() and int(declared) != len(body):
                    raise _RetryableError("truncated")
                with self._lock:
                    self.bytes_downloaded += len(body)
                return body

    def fetch(self, url: str) -> Fetched:
        """Download and validate one image (runs in a pool thread)."""
        attempts = 0
        not_image_retries = 1
        while True:
            attempts += 1
            try:
                data = self._get(url)
            except _RetryableError as exc:
                if attempts >= self.retry.attempts:
                    return Fetched(url, "failed", attempts, reason=f"{exc} after {attempts} attempts")
                time.sleep(self._delay(attempts - 1))
                continue
            except ValueError as exc:
                return Fetched(url, "failed", attempts, reason=str(exc))
            try:
                image = decode_image(data, url)
            except ImageError as exc:
                if not_image_retries > 0 and attempts < self.retry.attempts:
                    not_image_retries -= 1
                    time.sleep(self._delay(attempts - 1))
                    continue
                return Fetched(url, "rejected", attempts, reason=f"not-an-image: {str(exc).split(': ', 1)[-1]}")
            if min(image.width, image.height) < self.min_side:
                return Fetched(url, "rejected", attempts,
                               reason=f"too-small: {image.width}x{image.height} < {self.min_side} px")
            return Fetched(url, "ok", attempts, data=data, sha256=hashlib.sha256(data).hexdigest(),
                           width=image.width, height=image.height, phash=perceptual_hash(image.as_uint8()))

    def _delay(self, retry: int) -> float:
        with self._lock:
            return self.retry.delay(retry, self._rng)


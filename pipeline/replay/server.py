"""A Flickr-compatible API server and static image host for offline runs and tests.

The Flickr pseudo-pair dataset of Kosugi & Yamasaki ("Personalized Image
Enhancement Featuring Masked Style Modeling", IEEE TCSVT 2023, Sec. IV-A) is
crawled from Flickr users' public photos. :class:`ReplayServer` serves a folder
of photos on a loopback address so that the real, unpatched ``flickrapi``
client (with ``FlickrAPI.REST_URL`` pointed at :attr:`ReplayServer.rest_url`)
and the project's crawler run without reaching Flickr.

Served folder
-------------
One sub-folder per user named by its NSID, holding the photos
(``<photo_id>.jpg``/``.png``) with optional ``<photo_id>.json`` sidecars and a
``user.json``, plus an optional ``groups.json``. The format, its fields and
the deterministic defaults are documented in :mod:`pipeline.replay.corpus`.

Endpoints
---------
``/services/rest/``
    POST form bodies (as ``flickrapi`` sends them, OAuth-signed; signatures
    are not verified) and GET query strings. ``format=json`` with
    ``nojsoncallback=1`` answers JSON, ``format=json`` alone JSONP
    (``jsonFlickrApi(...)``), ``format=rest`` or no format the ``<rsp>`` XML.
    Methods: see :data:`pipeline.replay.api.ReplayApi.METHODS`.
``/static/{server}/{id}_{secret}[_{suffix}].jpg`` and ``..._o.{format}``
    The image host. A size at least as large as the original serves the stored
    bytes; smaller ones are LANCZOS-resized JPEGs (quality 90), square sizes
    centre-cropped. A wrong secret or unknown photo is 404.

Faults (HTTP errors, throttling, slow or cut replies, non-image bodies) are
injected as described in :mod:`pipeline.replay.faults`.
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import logging
import re
import socket
import socketserver
import sys
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from PIL import Image

from manifests.ids import PHOTO_ID_PATTERN, SECRET_PATTERN, SERVER_PATTERN
from pipeline.replay.api import ApiError, ReplayApi, encode_reply, int_argument
from pipeline.replay.corpus import SIZES_BY_SUFFIX, PhotoSize, ReplayPhoto, load_corpus, served_dimensions
from pipeline.replay.faults import (
    API_ERROR_MESSAGES,
    STATUS_KINDS,
    AttemptCounter,
    FaultSpec,
    malformed,
    not_an_image_page,
    status_page,
)

__all__ = ["FaultSpec", "ReplayServer", "render_jpeg"]

log = logging.getLogger("pie.replay")

MAX_BODY_BYTES = 1 << 20
"""Largest POST body read, bytes; a longer one answers 413."""

_STATIC_PATH = re.compile(
    rf"/static/({SERVER_PATTERN.pattern})/({PHOTO_ID_PATTERN.pattern})_({SECRET_PATTERN.pattern})"
    r"(?:_([a-z]{1,2}))?\.([a-z]{3,4})"
)
_OAUTH_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


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
        The served folder (layout in :mod:`pipeline.replay.corpus`); indexed once here.
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
    length = int_argument(handler.headers.get("Content-Length"), 0)
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

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that drops its connection (a timeout, a killed crawler) is normal here: one debug line."""
        error = sys.exc_info()[1]
        log.debug("%s: connection ended: %s: %s", client_address, type(error).__name__, error)

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

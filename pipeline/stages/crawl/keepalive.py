"""HTTP GET over keep-alive connections on an asyncio event loop: the crawl's image requests.

All of a process's downloads run as tasks of one event loop, so a photo's
request and its check (:mod:`.imagecheck`) cost no thread switch. Many
download threads would take the GIL in turn on every socket call, about a
hundred futex calls per photo: on 640-px JPEGs from a loopback server, one
loop costs about 1.4 ms of CPU per downloaded and checked photo against
1.9 ms for eight threads each with an ``http.client`` connection.

The crawl needs only a small part of what a general client does, so this is
that part:

* ``http`` and ``https`` (certificates checked against certifi's bundle, as
  ``requests`` does); connecting, the reply's head and each read of its body
  are each limited to ``timeout``;
* ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` from the environment, as
  ``urllib.request`` reads them: an ``http`` request goes to the proxy with
  its absolute URL, an ``https`` one through a ``CONNECT`` tunnel; the proxy
  itself is reached over plain HTTP, with Basic credentials from its URL;
* bodies framed by ``Content-Length``, by chunked transfer coding, or by the
  end of the connection (RFC 9112, section 6.3);
* redirects (301, 302, 303, 307, 308), at most :data:`MAX_REDIRECTS`;
* a body limit, and a body shorter than its framing says is ``truncated``;
* a kept-alive connection that the server closed in the meantime is
  reopened once at no cost, as browsers do.

Idle connections are kept per scheme, host and port; a connection is only
in use by one request at a time, so the callers' limit on requests in flight
to a host is also the limit on its open connections.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import certifi

#: Redirects followed for one request before it fails.
MAX_REDIRECTS = 10

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Body bytes read from a redirect or error reply to keep its connection; a longer body closes it instead.
_DRAIN_LIMIT = 65536
#: Largest read of a body at once, bytes.
_READ_SIZE = 1 << 20
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_STATUS_CODE = re.compile(r"[1-9][0-9][0-9]")


class TransientError(Exception):
    """A failure worth retrying.

    ``str()`` is the reason: ``timeout``, ``connection-failed``, ``truncated``, ``http-503``.
    """


class PermanentError(Exception):
    """A failure a retry would repeat.

    ``str()`` is the reason: ``http-404``, ``too-large: ...``, ``too-many-redirects``.
    """


class _BadReply(Exception):
    """The server's bytes are not an HTTP/1.x reply head (reported as ``connection-failed``)."""


class KeepAliveClient:
    """GETs with keep-alive connections, for the tasks of one event loop.

    Parameters
    ----------
    timeout : float
        Seconds allowed for connecting, for the reply's head and for each read of its body, > 0.
    max_bytes : int
        Largest accepted body, bytes.
    headers : dict
        Sent with every request (a ``User-Agent``, say).
    tls : ssl.SSLContext, optional
        Checks the certificates of ``https`` hosts; by default against certifi's bundle.
    """

    def __init__(self, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.headers = dict(headers or {})
        self._proxies = urllib.request.getproxies()
        self._tls = tls or ssl.create_default_context(cafile=certifi.where())
        self._routes: dict[tuple[str, str, int], _Route] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def get(self, url: str) -> bytes:
        """The body of a ``200 OK`` reply to ``GET url``, following redirects.

        Raises
        ------
        TransientError
            Timeouts, refused or dropped connections, short bodies, replies that are not HTTP, HTTP 429 and 5xx.
        PermanentError
            Any other status, a body over ``max_bytes``, a redirect loop or a URL that is not http(s).
        """
        for _ in range(MAX_REDIRECTS + 1):
            body, location = await self._request(url)
            if location is None:
                return body
            url = urljoin(url, location)
        raise PermanentError("too-many-redirects")

    def close(self) -> None:
        """Close the idle connections (call it on the loop, once no request is under way)."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.writer.close()

    async def _request(self, url: str) -> tuple[bytes, str | None]:
        """One request: ``(body, None)``, or ``(b"", location)`` for a redirect."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise PermanentError(f"not an http(s) URL: {url[:200]}")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise PermanentError(f"bad port in {url[:200]}") from None
        key = (parts.scheme, parts.hostname, port)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = self._route(*key)
        host = parts.netloc.rpartition("@")[2]
        if route.absolute:
            target = parts._replace(netloc=host, fragment="").geturl()
        else:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            request = _request_head(f"GET {target} HTTP/1.1",
                                    {"Host": host, "Accept-Encoding": "identity", **self.headers, **route.headers})
        except UnicodeEncodeError:
            raise PermanentError(f"not an ASCII URL: {url[:200]}") from None
        for attempt in (1, 2):
            connection = self._take(key) if attempt == 1 else None
            reused = connection is not None
            if connection is None:
                connection = await self._open(key, route)
            try:
                connection.writer.write(request)
                async with asyncio.timeout(self.timeout):
                    reply = await _read_head(connection.reader)
                break
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
                connection.writer.close()
                if not reused or attempt == 2:
                    raise TransientError("connection-failed") from None
            except TimeoutError:
                connection.writer.close()
                raise TransientError("timeout") from None
            except (OSError, asyncio.LimitOverrunError, _BadReply):
                connection.writer.close()
                raise TransientError("connection-failed") from None
        keep = False
        try:
            if reply.status != 200:
                keep = await self._drain(connection.reader, reply)
                return _redirect_or_raise(reply)
            body, keep = await self._read_body(connection.reader, reply)
            return body, None
        finally:
            if keep:
                self._idle.setdefault(key, []).append(connection)
            else:
                connection.writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, reply: _Reply) -> tuple[bytes, bool]:
        """A ``200 OK`` reply's body, and whether its connection can carry another request."""
        try:
            codings = reply.headers.get("transfer-encoding")
            if codings is not None:  # RFC 9112, section 6.3: chunked last, or the body runs to the end
                if codings.rpartition(",")[2].strip().lower() == "chunked":
                    return await self._read_chunked(reader), reply.keep_alive
                return await self._read_to_end(reader), False
            if reply.length is not None:
                if reply.length > self.max_bytes:
                    raise PermanentError(f"too-large: {reply.length} bytes exceed the {self.max_bytes}-byte limit")
                return await self._read_exactly(reader, reply.length), reply.keep_alive
            return await self._read_to_end(reader), False
        except TimeoutError:
            raise TransientError("timeout") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            raise TransientError("truncated") from None

    async def _read_exactly(self, reader: asyncio.StreamReader, size: int) -> bytes:
        """``size`` bytes, each read within the timeout (IncompleteReadError if the connection ends first)."""
        body = bytearray()
        while len(body) < size:
            async with asyncio.timeout(self.timeout):
                chunk = await reader.read(min(size - len(body), _READ_SIZE))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(body), size)
            if len(chunk) == size:
                return chunk
            body += chunk
        return bytes(body)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        """A chunked body (RFC 9112, section 7.1), its trailer skipped."""
        body = bytearray()
        while True:
            async with asyncio.timeout(self.timeout):
                line = await reader.readuntil(b"\r\n")
            digits = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(digits):
                raise ValueError(f"not a chunk size: {digits[:20]!r}")
            size = int(digits, 16)
            if size == 0:
                break
            if len(body) + size > self.max_bytes:
                raise PermanentError(f"too-large: more than {self.max_bytes} bytes")
            body += await self._read_exactly(reader, size)
            async with asyncio.timeout(self.timeout):
                if await reader.readexactly(2) != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
        trailer = 0
        while True:  # trailer fields, up to the empty line
            async with asyncio.timeout(self.timeout):
                line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                return bytes(body)
            trailer += len(line)
            if trailer > _DRAIN_LIMIT:
                raise ValueError("a trailer of more than 64 KiB")

    async def _read_to_end(self, reader: asyncio.StreamReader) -> bytes:
        """A body that runs to the end of the connection."""
        body = bytearray()
        while True:
            async with asyncio.timeout(self.timeout):
                chunk = await reader.read(_READ_SIZE)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > self.max_bytes:
                raise PermanentError(f"too-large: more than {self.max_bytes} bytes")

    async def _drain(self, reader: asyncio.StreamReader, reply: _Reply) -> bool:
        """Read a short error or redirect body; True if the connection can then carry the next request."""
        if reply.length is None or reply.length > _DRAIN_LIMIT or "transfer-encoding" in reply.headers:
            return False
        try:
            await self._read_exactly(reader, reply.length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False  # the reply's status is what counts
        return reply.keep_alive

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        """An idle connection to ``key`` that the server has not closed, or None."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection
            connection.writer.close()
        return None

    async def _open(self, key: tuple[str, str, int], route: _Route) -> _Connection:
        """A new connection along ``route``: to the host itself, to its proxy, or through the proxy's tunnel."""
        scheme, host, port = key
        tls = self._tls if scheme == "https" else None
        try:
            async with asyncio.timeout(self.timeout):
                if route.proxy is None:
                    reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                                   server_hostname=host if tls else None)
                    return _Connection(reader, writer)
                reader, writer = await asyncio.open_connection(*route.proxy)
                if tls is None:
                    return _Connection(reader, writer)
                try:
                    writer.write(_request_head(f"CONNECT {host}:{port} HTTP/1.1",
                                               {"Host": f"{host}:{port}", **route.tunnel_headers}))
                    if (await _read_head(reader)).status != 200:
                        raise _BadReply("the proxy refused the tunnel")
                    await writer.start_tls(tls, server_hostname=host)
                except BaseException:
                    writer.close()
                    raise
                return _Connection(reader, writer)
        except TimeoutError:
            raise TransientError("timeout") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _BadReply):
            raise TransientError("connection-failed") from None

    def _route(self, scheme: str, host: str, port: int) -> _Route:
        """How to reach ``scheme://host:port``: directly, or through the environment's proxy for ``scheme``."""
        proxy = self._proxies.get(scheme)
        if not proxy or urllib.request.proxy_bypass(host):
            return _Route()
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        credentials = {}
        if proxy_parts.username is not None:
            token = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}".encode()
            credentials["Proxy-Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        address = (proxy_parts.hostname, proxy_parts.port or 8080)
        if scheme == "https":
            return _Route(proxy=address, tunnel_headers=credentials)
        return _Route(proxy=address, absolute=True, headers=credentials)


@dataclass(frozen=True)
class _Route:
    """How requests reach one scheme, host and port."""

    #: The proxy's (host, port), or None to connect to the host itself.
    proxy: tuple[str, int] | None = None
    #: Requests carry the absolute URL (an ``http`` request through a proxy).
    absolute: bool = False
    #: Sent with each request on this route (a proxy's credentials).
    headers: dict[str, str] = field(default_factory=dict)
    #: Sent with the ``CONNECT`` request that opens a tunnel (a proxy's credentials).
    tunnel_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass(frozen=True)
class _Reply:
    """A reply's status, its header fields (names in lower case) and how its body is framed."""

    status: int
    headers: dict[str, str]
    #: ``Content-Length`` in bytes, or None.
    length: int | None
    #: HTTP/1.1 without ``Connection: close``.
    keep_alive: bool


def _request_head(request_line: str, fields: dict[str, str]) -> bytes:
    """A request's head: its line and header fields, CRLF-terminated (UnicodeEncodeError if not ASCII)."""
    lines = [request_line, *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _redirect_or_raise(reply: _Reply) -> tuple[bytes, str]:
    """``(b"", location)`` for a redirect; otherwise the error a reply other than ``200 OK`` stands for."""
    location = reply.headers.get("location")
    if reply.status in _REDIRECTS and location:
        return b"", location
    if reply.status == 429 or reply.status >= 500:
        raise TransientError(f"http-{reply.status}")
    raise PermanentError(f"http-{reply.status}")


async def _read_head(reader: asyncio.StreamReader) -> _Reply:
    """The next final reply head on ``reader`` (interim 1xx replies skipped)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not _STATUS_CODE.fullmatch(code):
            raise _BadReply(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:-2]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadReply(f"not a header field: {line[:80]!r}")
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        status = int(code)
        if 100 <= status < 200:
            continue
        declared = headers.get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            raise _BadReply(f"bad Content-Length: {declared[:40]!r}")
        length = 0 if status in (204, 304) else None if declared is None else int(declared)
        closing = "close" in headers.get("connection", "").lower()
        return _Reply(status, headers, length, version == "HTTP/1.1" and not closing)

"""The crawl's asyncio HTTP client against real servers on 127.0.0.1.

Keep-alive, body framing, redirects, limits, failures and proxies.
"""

from __future__ import annotations

import asyncio
import base64
import selectors
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.stages.crawl.keepalive import KeepAliveClient, PermanentError, TransientError

BODY = bytes(range(256)) * 40


class Scripted(BaseHTTPRequestHandler):
    """Answers by path; records each request's path, headers and client port on the server."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append((self.command, self.path, dict(self.headers), self.client_address[1]))
        path = self.path
        if path.startswith("http://"):  # as a proxy: answer for the origin itself
            path = "/" + path.split("/", 3)[3]
        if path == "/body":
            self._reply(200, BODY)
        elif path == "/drop-after":  # keeps the connection's promise but closes it after the reply
            self._reply(200, BODY)
            self.close_connection = True
        elif path.startswith("/redirect-"):
            hops = int(path.rsplit("-", 1)[1])
            self._reply(302, b"moved", location="/body" if hops == 0 else f"/redirect-{hops - 1}")
        elif path == "/loop":
            self._reply(301, b"", location="/loop")
        elif path.startswith("/status-"):
            self._reply(int(path.rsplit("-", 1)[1]), b"<html>no</html>")
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:1000])
            self.close_connection = True
        elif path == "/unsized":  # no Content-Length: the body runs to the connection's end
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        elif path.startswith("/chunked"):  # BODY in chunks of 1000 bytes, with an extension and a trailer
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BODY), 1000):
                piece = BODY[start:start + 1000]
                self.wfile.write(b"%x;note=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            if path == "/chunked-cut":
                self.close_connection = True
        elif path == "/bad-chunk":  # a chunk size int() would take but HTTP does not allow
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"0x1_0\r\n" + BODY[:16] + b"\r\n0\r\n\r\n")
        elif path == "/interim":  # a 100 Continue before the reply
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._reply(200, BODY)
        elif path == "/garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            self.close_connection = True
        elif path == "/slow":
            time.sleep(1.0)
            self._reply(200, BODY)
        else:
            self._reply(404, b"")

    def do_CONNECT(self):  # noqa: N802 - http.server's name
        self.server.seen.append((self.command, self.path, dict(self.headers), self.client_address[1]))
        self._reply(403, b"")

    def _reply(self, status: int, body: bytes, location: str | None = None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up (the timeout test) breaks the reply's pipe


def serve(handler, wrap=None, **attributes):
    """A ThreadingHTTPServer with ``handler`` on 127.0.0.1 (its socket wrapped by ``wrap``); returns it, started."""
    httpd = QuietServer(("127.0.0.1", 0), handler)
    if wrap is not None:
        httpd.socket = wrap(httpd.socket, server_side=True)
    httpd.seen = []
    for name, value in attributes.items():
        setattr(httpd, name, value)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture
def server():
    """A :class:`Scripted` server; yields (base URL, the list of requests it has seen)."""
    httpd = serve(Scripted)
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.seen
    finally:
        httpd.shutdown()
        httpd.server_close()


class Client:
    """A :class:`KeepAliveClient` with its own event loop; ``get`` and ``gather`` run requests to completion."""

    def __init__(self, **overrides):
        self.http = KeepAliveClient(**{"timeout": 5.0, "max_bytes": 1 << 20, "headers": {"User-Agent": "pie-test"},
                                       **overrides})
        self.loop = asyncio.new_event_loop()

    def get(self, url: str) -> bytes:
        return self.loop.run_until_complete(self.http.get(url))

    def gather(self, urls: list[str]) -> list[bytes]:
        async def all_of():
            return await asyncio.gather(*(self.http.get(url) for url in urls))
        return self.loop.run_until_complete(all_of())

    def close(self) -> None:
        self.http.close()
        self.loop.run_until_complete(asyncio.sleep(0))  # let the transports finish closing
        self.loop.close()


@pytest.fixture
def client():
    """Makes :class:`Client` objects and closes them after the test."""
    made = []

    def make(**overrides) -> Client:
        made.append(Client(**overrides))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_sequential_requests_share_one_connection(server, client):
    base, seen = server
    http = client()
    assert all(http.get(f"{base}/body") == BODY for _ in range(5))
    with pytest.raises(PermanentError, match="http-404"):
        http.get(f"{base}/status-404")
    assert http.get(f"{base}/body") == BODY  # a short error body is read, so the connection carries on
    assert len({port for *_, port in seen}) == 1 and len(seen) == 7
    assert all(headers["User-Agent"] == "pie-test" and headers["Host"] == base[7:] for _, _, headers, _ in seen)


def test_concurrent_requests_use_their_own_connections_and_keep_them(server, client):
    base, seen = server
    http = client()
    for _ in range(3):
        assert http.gather([f"{base}/body"] * 3) == [BODY] * 3
    assert len(seen) == 9 and len({port for *_, port in seen}) == 3


def test_a_connection_the_server_closed_is_reopened_without_an_error(server, client):
    base, seen = server
    http = client()
    assert http.get(f"{base}/drop-after") == BODY
    time.sleep(0.1)
    assert http.get(f"{base}/body") == BODY
    assert [path for _, path, _, _ in seen] == ["/drop-after", "/body"] and seen[0][3] != seen[1][3]


def test_chunked_bodies_and_interim_replies_are_read(server, client):
    base, seen = server
    http = client()
    assert http.get(f"{base}/chunked") == BODY
    assert http.get(f"{base}/interim") == BODY
    assert http.get(f"{base}/chunked-cut") == BODY
    assert http.get(f"{base}/body") == BODY
    ports = [port for *_, port in seen]
    assert ports[0] == ports[1] == ports[2] != ports[3]  # kept after a chunked body, closed when the server says so
    with pytest.raises(PermanentError, match="too-large: more than"):
        client(max_bytes=len(BODY) - 1).get(f"{base}/chunked")


def test_redirects_are_followed_up_to_the_limit(server, client):
    base, seen = server
    http = client()
    assert http.get(f"{base}/redirect-3") == BODY
    assert [path for _, path, _, _ in seen] == ["/redirect-3", "/redirect-2", "/redirect-1", "/redirect-0", "/body"]
    with pytest.raises(PermanentError, match="too-many-redirects"):
        http.get(f"{base}/loop")


@pytest.mark.parametrize(("path", "error", "reason"), [
    ("/status-503", TransientError, "http-503"),
    ("/status-429", TransientError, "http-429"),
    ("/status-403", PermanentError, "http-403"),
    ("/short", TransientError, "truncated"),
    ("/bad-chunk", TransientError, "truncated"),
    ("/garbage", TransientError, "connection-failed"),
])
def test_failures_are_transient_or_permanent(server, client, path, error, reason):
    base, _ = server
    http = client()
    with pytest.raises(error) as raised:
        http.get(base + path)
    assert str(raised.value) == reason
    assert http.get(f"{base}/body") == BODY  # the client is still usable


def test_body_limits_with_and_without_a_length(server, client):
    base, _ = server
    small = client(max_bytes=len(BODY) - 1)
    with pytest.raises(PermanentError, match="too-large: 10240 bytes exceed"):
        small.get(f"{base}/body")
    with pytest.raises(PermanentError, match="too-large: more than"):
        small.get(f"{base}/unsized")
    assert client().get(f"{base}/unsized") == BODY


def test_timeouts_and_refused_connections_are_transient(server, client):
    base, _ = server
    with pytest.raises(TransientError, match="timeout"):
        client(timeout=0.2).get(f"{base}/slow")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(TransientError, match="connection-failed"):
        client().get(f"http://127.0.0.1:{closed_port}/body")
    with pytest.raises(PermanentError, match="not an http"):
        client().get("ftp://127.0.0.1/body")
    with pytest.raises(PermanentError, match="not an ASCII URL"):
        client().get(f"{base}/bödy")


def test_http_goes_through_the_proxy_with_its_credentials_unless_bypassed(server, client, monkeypatch):
    base, seen = server
    port = base.rsplit(":", 1)[1]
    monkeypatch.setenv("http_proxy", f"http://pie%40lab:s3cret@127.0.0.1:{port}")
    monkeypatch.setenv("no_proxy", "localhost")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    http = client()
    assert http.get("http://photos.example/body") == BODY
    assert http.get(f"http://localhost:{port}/body") == BODY
    (method, proxied, headers, _), (_, direct, direct_headers, _) = seen
    assert (method, proxied, headers["Host"]) == ("GET", "http://photos.example/body", "photos.example")
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"pie@lab:s3cret").decode()
    assert direct == "/body" and "Proxy-Authorization" not in direct_headers


def test_https_asks_the_proxy_for_a_tunnel_and_a_refusal_fails_it(server, client, monkeypatch):
    base, seen = server
    monkeypatch.setenv("https_proxy", f"http://pie:s3cret@{base[7:]}")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(TransientError, match="connection-failed"):  # this proxy refuses tunnels (403)
        client().get("https://photos.example/body")
    method, path, headers, _ = seen[-1]
    assert (method, path) == ("CONNECT", "photos.example:443")
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"pie:s3cret").decode()


class Tunnelling(Scripted):
    """A proxy that answers ``CONNECT`` by relaying the connection to ``server.tunnel_to``, whatever was asked."""

    def do_CONNECT(self):  # noqa: N802 - http.server's name
        self.server.seen.append((self.command, self.path, dict(self.headers), self.client_address[1]))
        with socket.create_connection(self.server.tunnel_to) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            with selectors.DefaultSelector() as relay:
                relay.register(self.connection, selectors.EVENT_READ, upstream)
                relay.register(upstream, selectors.EVENT_READ, self.connection)
                while open_ := relay.select(timeout=5):
                    for key, _ in open_:
                        data = key.fileobj.recv(65536)
                        if not data:
                            self.close_connection = True
                            return
                        key.data.sendall(data)
        self.close_connection = True


@pytest.fixture
def tls_server():
    """A :class:`Scripted` server over TLS with a certificate for 127.0.0.1, localhost and photos.example.

    Yields (server, client context trusting its test CA).
    """
    import trustme

    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost", "photos.example").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    httpd = serve(Scripted, wrap=server_context.wrap_socket)
    try:
        yield httpd, client_context
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_keeps_its_connection_and_checks_the_certificate(tls_server, client):
    httpd, trusting = tls_server
    base = f"https://localhost:{httpd.server_address[1]}"
    http = client(tls=trusting)
    assert http.get(f"{base}/body") == BODY and http.get(f"{base}/chunked") == BODY
    assert len(httpd.seen) == 2 and httpd.seen[0][3] == httpd.seen[1][3]
    with pytest.raises(TransientError, match="connection-failed"):  # certifi's bundle does not know the test CA
        client().get(f"{base}/body")
    assert len(httpd.seen) == 2


def test_https_through_a_proxy_tunnel_checks_the_origins_certificate(tls_server, client, monkeypatch):
    httpd, trusting = tls_server
    proxy = serve(Tunnelling, tunnel_to=httpd.server_address)
    try:
        monkeypatch.setenv("https_proxy", f"http://pie:s3cret@127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.delenv("NO_PROXY", raising=False)
        http = client(tls=trusting)
        assert http.get("https://photos.example/body") == BODY
        assert http.get("https://photos.example/body") == BODY  # through the same tunnel
        with pytest.raises(TransientError, match="connection-failed"):  # the certificate does not name it
            http.get("https://elsewhere.example/body")
    finally:
        proxy.shutdown()
        proxy.server_close()
    connects = [(method, path) for method, path, _, _ in proxy.seen]
    assert connects == [("CONNECT", "photos.example:443"), ("CONNECT", "elsewhere.example:443")]
    assert proxy.seen[0][2]["Proxy-Authorization"] == "Basic " + base64.b64encode(b"pie:s3cret").decode()
    assert [path for _, path, headers, _ in httpd.seen] == ["/body", "/body"]
    assert all(headers["Host"] == "photos.example" for _, _, headers, _ in httpd.seen)

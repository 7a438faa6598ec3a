"""Loopback origins for tests of proxied clients: the other side of the wire.

An Origin is a small HTTP or HTTPS server on an ephemeral loopback port (IPv4
or IPv6) whose answer the test sets (``.respond``, ``.handler``, or a raw
``Route`` for misbehaviour) and which records what it received, with the
connection each request came on. HTTPS certificates come from a throwaway trustme CA (OriginCA),
including certificates for names the proxy maps to the origin. The pytest
plugin builds its ``origin_http`` and ``origin_https`` fixtures on these, and
fwdproxy's own test suite uses them too; this module knows nothing of pytest.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

log = logging.getLogger("fwdproxy.origin")
DEFAULT_CERT_NAMES = ("localhost", "127.0.0.1", "::1")
Fields = Mapping[str, str] | list[tuple[str, str]]


def fields_list(headers: Fields | None) -> list[tuple[str, str]]:
    """Header fields given as a mapping or a list, as a list of pairs."""
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])


@dataclass
class OriginRequest:
    """A request as the origin received it; ``connection`` numbers the connections from 1."""

    method: str
    path: str  # the request target as received
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]
    version: str = "HTTP/1.1"
    connection: int = 0

    @property
    def target(self) -> str:
        """The request target (the RFC's name for ``path``)."""
        return self.path

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        """Every value of a field, in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class OriginReply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


OriginHandler = Callable[[OriginRequest], OriginReply]
# A route writes its whole response itself, through the connection's handler:
# ``send_raw_head``, then ``wfile``; it may set ``close_connection``.
Route = Callable[["OriginConnection", OriginRequest], None]


def _default_handler(request: OriginRequest) -> OriginReply:
    return OriginReply(200, f"{request.method} {request.path}\n".encode(),
                       [("Content-Type", "text/plain; charset=utf-8")])


class OriginConnection(BaseHTTPRequestHandler):
    """One connection to an Origin: each request is recorded, then routed or handed to the handler."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a head and its body go out in separate writes
    server: Origin

    def setup(self) -> None:
        super().setup()
        self.number = self.server.connection_opened()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # answers a malformed head itself (and Expect: 100-continue)
                return
            try:
                body = self._body()
            except ValueError:  # a chunk size that is not hex: a broken body, not a request
                self.close_connection = True
                return
            request = OriginRequest(self.command, self.path, list(self.headers.items()), body,
                                    self.client_address[:2], self.request_version, self.number)
            self.server.record(request)
            route = self.server.route_for(request.path)
            if route is None:
                self._reply(self.server.handler, request)
            else:
                route(self, request)
            self.wfile.flush()
        except OSError:  # the peer hung up or failed TLS: the test's business, not the origin's
            self.close_connection = True

    def _reply(self, handler: OriginHandler, request: OriginRequest) -> None:
        try:
            reply = handler(request)
        except Exception as exc:  # the test's handler failed: say so where the test will look
            reply = OriginReply(500, f"origin handler raised {exc!r}\n".encode())
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in reply.headers)
        if not framed and reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.status not in (204, 304):
            self.wfile.write(reply.body)

    def send_raw_head(self, status: int, headers: list[tuple[str, str]], reason: str | None = None) -> None:
        """Write a response head exactly as given: no Date, no Server, no framing added."""
        reason = reason if reason is not None else self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}\r\n", *(f"{n}: {v}\r\n" for n, v in headers), "\r\n"]
        self.wfile.write("".join(lines).encode("latin-1"))

    def _body(self) -> bytes:
        """The request body; past ``server.keep_body`` bytes only its size is kept, as ``b"<N bytes>"``."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            pieces = self._chunks()
        else:
            pieces = self._counted(int(self.headers.get("Content-Length") or 0))
        keep, kept, total = self.server.keep_body, [], 0
        for piece in pieces:
            total += len(piece)
            if keep is None or total <= keep:
                kept.append(piece)
        return b"".join(kept) if keep is None or total <= keep else b"<%d bytes>" % total

    def _chunks(self) -> Iterator[bytes]:
        while size := int(self.rfile.readline().split(b";")[0], 16):  # ValueError: a broken body
            yield self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailer fields

    def _counted(self, length: int) -> Iterator[bytes]:
        while length:
            data = self.rfile.read1(min(length, 1 << 20))
            if not data:
                return
            length -= len(data)
            yield data

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read origin.requests, not stderr


class Origin(ThreadingHTTPServer):
    """A loopback HTTP/1.1 origin (HTTPS when given a TLS authority) with a handler the test sets.

    ``handler`` turns each request into an OriginReply. For replies no
    handler can express (a broken body, a close mid-response, a stall), put a
    Route in ``routes`` under a path's first segment ("/stall" serves
    "/stall/5"), or in ``default_route`` for every other path.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, tls: OriginCA | None = None, *, host: str = "127.0.0.1",
                 context: ssl.SSLContext | None = None, keep_body: int | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), OriginConnection)
        self.handler: OriginHandler = _default_handler
        self.routes: dict[str, Route] = {}
        self.default_route: Route | None = None
        self.keep_body = keep_body
        self.requests: list[OriginRequest] = []
        self.connections = 0
        self.stopped = threading.Event()  # set by stop(): a route that stalls should wait on it
        self.tls = tls
        self.scheme = "https" if tls or context else "http"
        self._names = set(DEFAULT_CERT_NAMES)
        self._context = context or (tls.server_context(DEFAULT_CERT_NAMES, self._pick_cert) if tls else None)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would do a reverse DNS lookup
        self.server_name, self.server_port = self.host, self.port

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.authority}{path}"

    def respond(self, status: int = 200, body: bytes = b"", headers: Fields | None = None) -> None:
        """Answer every request with this reply from now on."""
        reply = OriginReply(status, body, fields_list(headers))
        self.handler = lambda request: reply

    def route_for(self, path: str) -> Route | None:
        """The route serving ``path``, if any: by its first segment, else the default route."""
        first = "/" + path.split("?")[0].lstrip("/").split("/")[0]
        return self.routes.get(first, self.default_route)

    @property
    def ca_file(self) -> str:
        """The CA certificate (PEM) a client must trust to reach this HTTPS origin."""
        return self._tls().ca_file

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting this origin's CA."""
        return self._tls().client_context

    def add_name(self, name: str) -> None:
        """Also present a valid certificate for ``name`` (chosen by the client's SNI)."""
        self._names.add(name.lower())

    def _tls(self) -> OriginCA:
        if self.tls is None:
            raise AttributeError("origin_http has no TLS; use origin_https")
        return self.tls

    def _pick_cert(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name and name.lower() in self._names and self.tls:
            sock.context = self.tls.server_context((name.lower(),))

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self._context is not None:  # the handshake runs on the connection's own thread
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._open.add(sock)
        return sock, addr

    def connection_opened(self) -> int:
        with self._lock:
            self.connections += 1
            return self.connections

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def record(self, request: OriginRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A route or handler that failed: logged (pytest shows it with a failing test), never printed."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # a client that hangs up or rejects the certificate is no error
            log.error("origin %s failed serving %s", self.url(), client_address, exc_info=exc)

    def start(self) -> Self:
        # A short poll: stop() waits for the serving loop to notice, once per test.
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.01},
                         name=f"origin-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.shutdown()
        self.server_close()
        with self._lock:
            open_now, self._open = list(self._open), set()
        for sock in open_now:  # kept-alive connections would hold their threads forever
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the connection's thread wakes up and closes it
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Origin {self.url()} requests={len(self.requests)} connections={self.connections}>"


SNICallback = Callable[[Any, str | None, ssl.SSLContext], None]


class OriginCA:
    """A throwaway trustme CA for a session: its PEM file, a client context, server certificates."""

    def __init__(self, directory: Path) -> None:
        try:
            import trustme
        except ImportError as exc:
            raise RuntimeError("origin_https needs trustme: pip install trustme") from exc
        self.ca = trustme.CA()
        self.ca_file = str(directory / "fwdproxy-test-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.client_context = ssl.create_default_context(cafile=self.ca_file)
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def server_context(self, names: tuple[str, ...], sni: SNICallback | None = None) -> ssl.SSLContext:
        """A server context with a certificate for ``names``; cached unless it has its own SNI callback."""
        with self._lock:
            if sni is None and names in self._contexts:
                return self._contexts[names]
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(*names).configure_cert(ctx)
            if sni is None:
                self._contexts[names] = ctx
            else:
                ctx.sni_callback = sni
            return ctx

"""Loopback origins for tests of proxied clients: the other side of the wire.

An Origin is a small HTTP or HTTPS server on an ephemeral loopback port whose
answer the test sets (``.respond`` or ``.handler``) and which records what it
received. HTTPS certificates come from a throwaway trustme CA (OriginCA),
including certificates for names the proxy maps to the origin. The pytest
plugin builds its ``origin_http`` and ``origin_https`` fixtures on these; this
module knows nothing of pytest.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_CERT_NAMES = ("localhost", "127.0.0.1", "::1")
Fields = Mapping[str, str] | list[tuple[str, str]]


def fields_list(headers: Fields | None) -> list[tuple[str, str]]:
    """Header fields given as a mapping or a list, as a list of pairs."""
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])


@dataclass
class OriginRequest:
    """A request as the origin received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


@dataclass
class OriginReply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


OriginHandler = Callable[[OriginRequest], OriginReply]


def _default_handler(request: OriginRequest) -> OriginReply:
    return OriginReply(200, f"{request.method} {request.path}\n".encode(),
                       [("Content-Type", "text/plain; charset=utf-8")])


class _OriginRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Origin

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method goes to the test's handler
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        request = OriginRequest(self.command, self.path, list(self.headers.items()), self._body(),
                                self.client_address[:2])
        self.server.record(request)
        try:
            reply = self.server.handler(request)
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

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read origin.requests, not stderr


class Origin(ThreadingHTTPServer):
    """A loopback HTTP/1.1 origin (HTTPS when given a TLS authority) with a handler the test sets."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: OriginCA | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _OriginRequestHandler)
        self.handler: OriginHandler = _default_handler
        self.requests: list[OriginRequest] = []
        self.connections = 0
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self._names = set(DEFAULT_CERT_NAMES)
        self._context = tls.server_context(DEFAULT_CERT_NAMES, self._pick_cert) if tls else None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would do a reverse DNS lookup
        self.server_name, self.server_port = "127.0.0.1", self.port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def respond(self, status: int = 200, body: bytes = b"", headers: Fields | None = None) -> None:
        """Answer every request with this reply from now on."""
        reply = OriginReply(status, body, fields_list(headers))
        self.handler = lambda request: reply

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
            self.connections += 1
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def record(self, request: OriginRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or rejects the certificate is the test's business, not stderr's

    def start(self) -> Origin:
        # A short poll: stop() waits for the serving loop to notice, once per test.
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.01},
                         name=f"origin-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with self._lock:
            open_now, self._open = list(self._open), set()
        for sock in open_now:  # kept-alive connections would hold their threads forever
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the connection's thread wakes up and closes it
            except OSError:
                pass

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

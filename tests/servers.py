"""Loopback peers for the tests: a scriptable origin (HTTP or HTTPS) and raw-socket origins.

The origin records every request it receives (method, target, header fields in
order, body, which connection it came on), so tests assert on what actually
reached the other side of the proxy.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in separate writes
    server: OriginServer

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.server.connection_opened()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            body = self._read_body()
            received = Received(self.command, self.path, self.request_version,
                                list(self.headers.items()), body, self.conn_id)
            self.server.record(received)
            prefix = "/" + self.path.split("?")[0].lstrip("/").split("/")[0]
            self.server.routes.get(prefix, _echo)(self, received)
            self.wfile.flush()
        except (OSError, ssl.SSLError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    # Large uploads are counted, not kept: the test only needs the size.
                    return b"".join(chunks) if total <= 1 << 20 else b"<%d bytes>" % total
                data = self.rfile.read(size)
                total += len(data)
                if total <= 1 << 20:
                    chunks.append(data)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length and self.headers.get("Expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length > 1 << 20:
            # Large uploads are counted, not kept: the test only needs the size.
            remaining, total = length, 0
            while remaining:
                data = self.rfile.read1(min(remaining, 1 << 20))
                if not data:
                    break
                remaining -= len(data)
                total += len(data)
            return b"<%d bytes>" % total
        return self.rfile.read(length)

    def send_raw_head(self, status: int, headers: list[tuple[str, str]], reason: str | None = None) -> None:
        reason = reason if reason is not None else self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}\r\n"] + [f"{n}: {v}\r\n" for n, v in headers] + ["\r\n"]
        self.wfile.write("".join(lines).encode("latin-1"))

    def log_message(self, format: str, *args: Any) -> None:
        pass


Route = Callable[[_OriginHandler, Received], None]


def _echo(h: _OriginHandler, r: Received) -> None:
    body = json.dumps({"method": r.method, "target": r.target, "version": r.version,
                       "headers": r.headers, "body": r.body.decode("latin-1"),
                       "connection": r.connection}).encode()
    h.send_raw_head(200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    if r.method != "HEAD":
        h.wfile.write(body)


def _size(r: Received) -> int:
    match = re.search(r"/(\d+)$", r.target.split("?")[0])
    return int(match.group(1)) if match else 0


def _pattern(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def _bytes(h: _OriginHandler, r: Received) -> None:
    n = _size(r)
    h.send_raw_head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
    if r.method != "HEAD":
        h.wfile.write(_pattern(n))


def _chunked(h: _OriginHandler, r: Received) -> None:
    n = _size(r)
    h.send_raw_head(200, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")])
    data = _pattern(n)
    for i in range(0, n, 1000):
        piece = data[i:i + 1000]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\nX-Sum: 1\r\n\r\n")


def _close_delimited(h: _OriginHandler, r: Received) -> None:
    h.send_raw_head(200, [("Content-Type", "application/octet-stream"), ("Connection", "close")])
    h.wfile.write(_pattern(_size(r)))
    h.close_connection = True


def _status(h: _OriginHandler, r: Received) -> None:
    status = _size(r)
    if status in (204, 304):
        h.send_raw_head(status, [("ETag", '"x"')] + ([("Content-Length", "10")] if status == 304 else []))
    else:
        h.send_raw_head(status, [("Content-Length", "0")])


def _cookies(h: _OriginHandler, r: Received) -> None:
    h.send_raw_head(200, [("Set-Cookie", "a=1; Path=/"), ("X-Order", "1"), ("Set-Cookie", "b=2; Path=/"),
                          ("X-Order", "2"), ("Content-Length", "0")])


def _hop(h: _OriginHandler, r: Received) -> None:
    h.send_raw_head(200, [("Connection", "X-Secret, keep-alive"), ("X-Secret", "hop"),
                          ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                          ("Upgrade", "h2c"), ("X-Kept", "yes"), ("Content-Length", "2")])
    h.wfile.write(b"ok")


def _hang(h: _OriginHandler, r: Received) -> None:
    h.server.stopped.wait(30)
    h.close_connection = True


class OriginServer(ThreadingHTTPServer):
    """A loopback origin; routes by path prefix (/bytes/N, /chunked/N, /close/N, /status/N, ...)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _OriginHandler)
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context else "http"
        self.received: list[Received] = []
        self.connections = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self.routes: dict[str, Route] = {
            "/echo": _echo, "/bytes": _bytes, "/chunked": _chunked, "/close": _close_delimited,
            "/status": _status, "/cookies": _cookies, "/hop": _hop, "/hang": _hang,
        }

    def server_bind(self) -> None:
        import socketserver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def connection_opened(self) -> int:
        with self._lock:
            self.connections += 1
            return self.connections

    def record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def authority(self) -> str:
        host = self.server_address[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.authority}{path}"

    def __enter__(self) -> OriginServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.shutdown()
        self.server_close()


@dataclass
class RawOrigin:
    """An origin that answers each connection with scripted bytes and records what it received.

    ``reply`` is sent once the request head has arrived (after the blank line);
    ``then`` decides what happens next: "close" or "hang" (hold the socket open).
    """

    reply: bytes
    then: str = "close"
    received: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    break
                data += piece
            self.received.append(data)
            if self.reply:
                conn.sendall(self.reply)
            if self.then == "hang":
                self.stopped.wait(30)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass


def loopback_only(address: tuple[str, int], timeout: float) -> socket.socket:
    """A proxy connect function for hostile or mutated targets: never a DNS lookup, never off this machine."""
    if address[0] not in ("127.0.0.1", "::1", "localhost"):
        raise socket.gaierror(socket.EAI_NONAME, "not resolved in tests")
    return socket.create_connection(address, timeout)

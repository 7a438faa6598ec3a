"""Loopback peers for the tests: the suite's routes on the plugin's origin, and raw-socket origins.

The origin (``proxy.testing.origins.Origin``, the one the pytest plugin
serves) records every request it receives (method, target, header fields in
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

from proxy.testing.origins import Origin, OriginConnection, OriginRequest

Received = OriginRequest


def _echo(h: OriginConnection, r: Received) -> None:
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


def _bytes(h: OriginConnection, r: Received) -> None:
    n = _size(r)
    h.send_raw_head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
    if r.method != "HEAD":
        h.wfile.write(_pattern(n))


def _chunked(h: OriginConnection, r: Received) -> None:
    n = _size(r)
    h.send_raw_head(200, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")])
    data = _pattern(n)
    for i in range(0, n, 1000):
        piece = data[i:i + 1000]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\nX-Sum: 1\r\n\r\n")


def _close_delimited(h: OriginConnection, r: Received) -> None:
    h.send_raw_head(200, [("Content-Type", "application/octet-stream"), ("Connection", "close")])
    h.wfile.write(_pattern(_size(r)))
    h.close_connection = True


def _status(h: OriginConnection, r: Received) -> None:
    status = _size(r)
    if status in (204, 304):
        h.send_raw_head(status, [("ETag", '"x"')] + ([("Content-Length", "10")] if status == 304 else []))
    else:
        h.send_raw_head(status, [("Content-Length", "0")])


def _cookies(h: OriginConnection, r: Received) -> None:
    h.send_raw_head(200, [("Set-Cookie", "a=1; Path=/"), ("X-Order", "1"), ("Set-Cookie", "b=2; Path=/"),
                          ("X-Order", "2"), ("Content-Length", "0")])


def _hop(h: OriginConnection, r: Received) -> None:
    h.send_raw_head(200, [("Connection", "X-Secret, keep-alive"), ("X-Secret", "hop"),
                          ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                          ("Upgrade", "h2c"), ("X-Kept", "yes"), ("Content-Length", "2")])
    h.wfile.write(b"ok")


def _hang(h: OriginConnection, r: Received) -> None:
    h.server.stopped.wait(30)
    h.close_connection = True


class OriginServer(Origin):
    """The suite's origin: the plugin's Origin with the routes below; any other path echoes the request.

    Routes by path prefix: /bytes/N, /chunked/N, /close/N, /status/N, /cookies, /hop, /hang.
    Uploads past 1 MiB are counted, not kept: the tests only need their size.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(host=host, context=ssl_context, keep_body=1 << 20)
        self.default_route = _echo
        self.routes.update({
            "/echo": _echo, "/bytes": _bytes, "/chunked": _chunked, "/close": _close_delimited,
            "/status": _status, "/cookies": _cookies, "/hop": _hop, "/hang": _hang,
        })

    @property
    def received(self) -> list[Received]:
        return self.requests


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


def spawn(target: Callable[..., object], *args: object) -> None:
    """Run ``target(*args)`` in a daemon thread."""
    threading.Thread(target=target, args=args, daemon=True).start()


def accept_forever(listener: socket.socket, on_accept: Callable[[socket.socket], object]) -> None:
    """From a daemon thread, hand each connection ``listener`` accepts to ``on_accept`` until the listener closes.

    ``on_accept`` runs in the accepting thread: connections are taken one at a time unless it ``spawn``s.
    """

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            on_accept(conn)

    spawn(serve)


def loopback_only(address: tuple[str, int], timeout: float) -> socket.socket:
    """A proxy connect function for hostile or mutated targets: never a DNS lookup, never off this machine."""
    if address[0] not in ("127.0.0.1", "::1", "localhost"):
        raise socket.gaierror(socket.EAI_NONAME, "not resolved in tests")
    return socket.create_connection(address, timeout)

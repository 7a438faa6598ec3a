"""CONNECT tunnels: open the upstream socket, then relay bytes both ways (RFC 9110 section 9.3.6).

This module owns a tunnel's life: connecting (through an injected connect
function), then a full-duplex relay with half-close, an idle timeout shared by
both directions, and a clean close of both ends. It does not parse requests
or answer the client's CONNECT: the handler writes the 200 and hands over the
two sockets, with any bytes the client sent early.
"""

from __future__ import annotations

import enum
import socket
import threading
import time

from .errors import connect_failure
from .pool import ConnectFn

RELAY_BUFFER = 262144


class State(enum.Enum):
    OPEN = "open"
    HALF_CLOSED = "half-closed"  # one side finished sending, the other still may
    CLOSED = "closed"

    def __repr__(self) -> str:
        return self.name


def open_upstream(host: str, port: int, connect: ConnectFn, timeout: float) -> socket.socket:
    """Connect to the tunnel's target, translating failures to 502/504."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = connect((host, port), timeout)
    except OSError as exc:
        raise connect_failure(exc, where) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Tunnel:
    """A relay between a client socket and an upstream socket.

    Each direction runs on its own thread with blocking sockets, so a slow
    reader on one side never stalls the other side (no head-of-line blocking
    in full-duplex protocols). The socket timeout is the idle timeout; a
    direction that times out keeps waiting while the other one is busy.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket, idle_timeout: float) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.state = State.OPEN
        self.bytes_up = 0
        self.bytes_down = 0
        self.error = ""
        self._last_active = time.monotonic()
        self._lock = threading.Lock()
        self._open_directions = 2

    def run(self, early: bytes = b"") -> None:
        """Relay until both directions finish (or fail, or go idle); then close both sockets."""
        for sock in (self.client, self.upstream):
            sock.settimeout(self.idle_timeout)
        try:
            if early:
                # Bytes the client pipelined behind its CONNECT head, already read
                # into our buffer: they go first (RFC 9110 section 9.3.6).
                self.upstream.sendall(early)
                self.bytes_up += len(early)
            down = threading.Thread(target=self._pump, args=(self.upstream, self.client, False),
                                    name="tunnel-down", daemon=True)
            down.start()
            self._pump(self.client, self.upstream, True)
            down.join()
        except OSError as exc:
            self._fail(exc)
        finally:
            self.state = State.CLOSED
            self.upstream.close()

    def close(self) -> None:
        """End the relay from outside (server shutdown): both pumps wake and exit."""
        self._shutdown(self.client, socket.SHUT_RDWR)
        self._shutdown(self.upstream, socket.SHUT_RDWR)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                try:
                    data = src.recv(RELAY_BUFFER)
                except TimeoutError:
                    if time.monotonic() - self._last_active < self.idle_timeout:
                        continue  # the other direction is busy: not idle
                    self.error = f"idle for {self.idle_timeout:g}s"
                    self.close()
                    return
                if not data:
                    break
                dst.sendall(data)
                self._last_active = time.monotonic()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
            # Half-close: pass the end of this direction on, keep the other open.
            self._shutdown(dst, socket.SHUT_WR)
            with self._lock:
                self._open_directions -= 1
                self.state = State.HALF_CLOSED if self._open_directions else State.CLOSED
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self.error:
            self.error = f"{type(exc).__name__}: {exc}"
        self.close()

    @staticmethod
    def _shutdown(sock: socket.socket, how: int) -> None:
        try:
            sock.shutdown(how)
        except OSError:
            pass  # already closed or never connected

    def __repr__(self) -> str:
        return f"<Tunnel {self.state!r} up={self.bytes_up} down={self.bytes_down}>"

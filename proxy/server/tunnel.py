"""CONNECT tunnels: open the upstream socket, then relay bytes both ways (RFC 9110 section 9.3.6).

This module owns a tunnel's life after the handler has dialled the target
(``connect.dial``) and answered 200: relaying with half-close, backpressure,
an idle timeout, and a clean close of both ends.

One Relay thread serves every tunnel of a server through a selector, with
non-blocking sockets: an idle tunnel costs two sockets and a small record,
not a thread and its stack. On Linux bytes move socket -> pipe -> socket
with splice(2) and never enter Python; elsewhere they are copied through
one shared buffer (recv_into, send). Either way a side that cannot take
more stops the other side being read until it can (no unbounded
buffering), and the bytes it has not taken wait in a pipe (or a bytes
object) owned by that direction only for as long as it is blocked.
"""

from __future__ import annotations

import enum
import fcntl
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

RELAY_BUFFER = 262144
_SWEEP_INTERVAL = 1.0
_SPLICE = hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_PIPE_SIZE = 1 << 20
_SPARE_PIPES = 16
Pipe = tuple[int, int]  # read end, write end


class State(enum.Enum):
    OPEN = "open"
    HALF_CLOSED = "half-closed"  # one side finished sending, the other still may
    CLOSED = "closed"

    def __repr__(self) -> str:
        return self.name


class Tunnel:
    """A relayed pair of sockets and what went through it; changed only by the relay thread."""

    def __init__(self, client: socket.socket, upstream: socket.socket, early: bytes,
                 on_close: Callable[[Tunnel], None], early_down: bytes = b"") -> None:
        self.client, self.upstream = client, upstream
        self.on_close = on_close
        self.state = State.OPEN
        self.bytes_up = len(early)
        self.bytes_down = len(early_down)
        self.error = ""
        self.last_active = time.monotonic()
        # Bytes read from one side that the other has not taken yet, keyed by
        # the socket they are waiting to be written to.
        self.pending = {sock: data for sock, data in ((upstream, early), (client, early_down)) if data}
        # Spliced bytes a socket has not taken yet: the pipe holding them and how many.
        self.piped: dict[socket.socket, tuple[Pipe, int]] = {}
        self.ended: set[socket.socket] = set()  # sockets that sent EOF
        # Since when a socket with bytes waiting for it has taken none: a side
        # that stops reading is cut after the idle timeout even while the other
        # direction keeps the tunnel busy.
        self.stalled: dict[socket.socket, float] = {dst: self.last_active for dst in self.pending}
        self.finished: set[socket.socket] = set()  # sockets we shut for writing

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def side(self, sock: socket.socket) -> str:
        return "client" if sock is self.client else "upstream"

    def waiting(self, dst: socket.socket) -> bool:
        """Whether bytes are queued for dst (so its peer is not read meanwhile)."""
        return bool(self.pending.get(dst)) or dst in self.piped

    def __repr__(self) -> str:
        return f"<Tunnel {self.state!r} up={self.bytes_up} down={self.bytes_down}>"


class Relay:
    """Relays every tunnel of a server on one thread."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._selector = selectors.DefaultSelector()
        self._buffer = bytearray(RELAY_BUFFER)
        self._view = memoryview(self._buffer)
        self._tunnels: set[Tunnel] = set()
        self._incoming: list[Tunnel] = []
        self._lock = threading.Lock()
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._selector.register(self._waker_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._next_sweep = 0.0
        self._splice = _SPLICE
        self._scratch: Pipe | None = None  # empty between pumps; lent out when a side blocks
        self._spare: list[Pipe] = []

    # -- called from other threads -----------------------------------------

    def add(self, client: socket.socket, upstream: socket.socket, early: bytes,
            on_close: Callable[[Tunnel], None], *, early_down: bytes = b"") -> Tunnel:
        """Take over both sockets; ``on_close`` runs (on the relay thread) when the tunnel ends."""
        client.setblocking(False)
        upstream.setblocking(False)
        tunnel = Tunnel(client, upstream, early, on_close, early_down)
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._incoming.append(tunnel)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="fwdproxy-relay", daemon=True)
                    self._thread.start()
        if stopping:  # the server is shutting down: the tunnel ends before it starts
            tunnel.error = "proxy shutting down"
            tunnel.state = State.CLOSED
            client.close()
            upstream.close()
            on_close(tunnel)
            return tunnel
        self._wake()
        return tunnel

    def count(self) -> int:
        with self._lock:
            return len(self._tunnels) + len(self._incoming)

    def stop(self) -> None:
        """Close every tunnel and end the thread."""
        with self._lock:  # add() starts the thread under this lock: seen here, it has started
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(5)
        if thread is None or not thread.is_alive():
            self._waker_r.close()
            self._waker_w.close()
            self._selector.close()
            for pipe in [*self._spare, *([self._scratch] if self._scratch else [])]:
                _close_pipe(pipe)
            self._spare, self._scratch = [], None

    def _wake(self) -> None:
        try:
            self._waker_w.send(b"x")
        except OSError:
            pass  # already awake with a full pipe, or stopped

    # -- the relay thread ----------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            for key, mask in self._selector.select(_SWEEP_INTERVAL):
                if key.data is None:
                    self._admit()
                else:
                    self._service(key.data, key.fileobj, mask)  # type: ignore[arg-type]
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_INTERVAL
                self._sweep(now)
        self._admit()
        for tunnel in list(self._tunnels):
            tunnel.error = tunnel.error or "proxy shutting down"
            self._close(tunnel)

    def _sweep(self, now: float) -> None:
        """Close tunnels idle too long, and those where one side stopped taking bytes for as long."""
        limit = self.idle_timeout
        for tunnel in list(self._tunnels):
            stuck = [sock for sock, since in tunnel.stalled.items() if now - since > limit]
            if stuck:
                tunnel.error = tunnel.error or f"{tunnel.side(stuck[0])} stopped reading for {limit:g}s"
            elif now - tunnel.last_active > limit:
                tunnel.error = tunnel.error or f"idle for {limit:g}s"
            else:
                continue
            self._close(tunnel)

    def _admit(self) -> None:
        try:
            while self._waker_r.recv(4096):
                pass
        except OSError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
            self._tunnels.update(incoming)
        for tunnel in incoming:
            self._interest(tunnel, tunnel.client)
            self._interest(tunnel, tunnel.upstream)

    def _service(self, tunnel: Tunnel, sock: socket.socket, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(tunnel, sock)
            if mask & selectors.EVENT_READ and tunnel.state is not State.CLOSED:
                self._pump(tunnel, sock)
        except OSError as exc:
            tunnel.error = tunnel.error or f"{type(exc).__name__}: {exc}"
            self._close(tunnel)
            return
        if tunnel.state is not State.CLOSED:
            self._interest(tunnel, tunnel.client)
            self._interest(tunnel, tunnel.upstream)

    def _pump(self, tunnel: Tunnel, src: socket.socket) -> None:
        """Read what src has and pass it on; whatever dst cannot take now waits for it."""
        dst = tunnel.peer(src)
        try:
            if self._splice:
                self._scratch = self._scratch or self._new_pipe()
                n = os.splice(src.fileno(), self._scratch[1], _PIPE_SIZE, flags=_SPLICE_FLAGS)
            else:
                n = src.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        tunnel.last_active = time.monotonic()
        if n == 0:
            tunnel.ended.add(src)
            self._maybe_finish(tunnel, dst)
            return
        if src is tunnel.client:
            tunnel.bytes_up += n
        else:
            tunnel.bytes_down += n
        if self._scratch is not None and self._splice:
            pipe = self._scratch
            try:
                left = self._drain(pipe, dst, n)
            except OSError:
                # dst failed with bytes still in the pipe: they must never reach
                # another tunnel, so the pipe goes with this one.
                self._scratch = None
                _close_pipe(pipe)
                raise
            if left:
                tunnel.piped[dst] = (pipe, left)  # dst's until taken; a new scratch next time
                tunnel.stalled[dst] = tunnel.last_active
                self._scratch = None
            return
        try:
            sent = dst.send(self._view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < n:
            tunnel.pending[dst] = bytes(self._view[sent:n])
            tunnel.stalled[dst] = tunnel.last_active

    def _drain(self, pipe: Pipe, dst: socket.socket, count: int) -> int:
        """Move up to count bytes from pipe to dst; how many are left in the pipe."""
        while count:
            try:
                moved = os.splice(pipe[0], dst.fileno(), count, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            if moved == 0:
                break
            count -= moved
        return count

    def _new_pipe(self) -> Pipe:
        if self._spare:
            return self._spare.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)  # fewer, larger moves
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default size works too
        return r, w

    def _release_pipe(self, pipe: Pipe) -> None:
        if len(self._spare) < _SPARE_PIPES:
            self._spare.append(pipe)
        else:
            _close_pipe(pipe)

    def _flush(self, tunnel: Tunnel, dst: socket.socket) -> None:
        if dst in tunnel.piped:
            pipe, before = tunnel.piped[dst]
            left = self._drain(pipe, dst, before)
            if left < before:
                tunnel.last_active = tunnel.stalled[dst] = time.monotonic()
            if left:
                tunnel.piped[dst] = (pipe, left)
                return
            del tunnel.piped[dst]
            tunnel.stalled.pop(dst, None)
            self._release_pipe(pipe)
            self._maybe_finish(tunnel, dst)
            return
        data = tunnel.pending.get(dst)
        if not data:
            return
        try:
            sent = dst.send(data)
        except (BlockingIOError, InterruptedError):
            return
        tunnel.last_active = tunnel.stalled[dst] = time.monotonic()
        if sent < len(data):
            tunnel.pending[dst] = data[sent:]
            return
        del tunnel.pending[dst]
        tunnel.stalled.pop(dst, None)
        self._maybe_finish(tunnel, dst)

    def _maybe_finish(self, tunnel: Tunnel, dst: socket.socket) -> None:
        """Pass an EOF on once everything before it has been delivered (half-close)."""
        src = tunnel.peer(dst)
        if src not in tunnel.ended or dst in tunnel.finished or tunnel.waiting(dst):
            return
        tunnel.finished.add(dst)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if len(tunnel.finished) == 2:
            self._close(tunnel)
        else:
            tunnel.state = State.HALF_CLOSED

    def _interest(self, tunnel: Tunnel, sock: socket.socket) -> None:
        """Read sock while its peer can take more; write it while it has bytes waiting."""
        events = 0
        if sock not in tunnel.ended and not tunnel.waiting(tunnel.peer(sock)):
            events |= selectors.EVENT_READ
        if tunnel.waiting(sock):
            events |= selectors.EVENT_WRITE
        try:
            key = self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, tunnel)
            return
        if not events:
            self._selector.unregister(sock)
        elif key.events != events:
            self._selector.modify(sock, events, tunnel)

    def _close(self, tunnel: Tunnel) -> None:
        if tunnel.state is State.CLOSED:
            return
        tunnel.state = State.CLOSED
        for sock in (tunnel.client, tunnel.upstream):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        for pipe, _ in tunnel.piped.values():
            _close_pipe(pipe)  # undelivered bytes go with it
        tunnel.piped.clear()
        with self._lock:
            self._tunnels.discard(tunnel)
        tunnel.on_close(tunnel)


def _close_pipe(pipe: Pipe) -> None:
    for fd in pipe:
        try:
            os.close(fd)
        except OSError:
            pass

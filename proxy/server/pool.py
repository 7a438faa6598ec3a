"""Upstream connections: an http.client connection per origin, pooled and kept alive.

The pool owns idle connections keyed by origin (scheme, host, port), shared by
every client of the proxy: reusing an origin connection across clients is what
makes forwarding cheap. It knows nothing of clients or of the request being
sent; the forward step borrows a connection and gives it back only if the
exchange left it clean.

Connections are opened by ``connect.dial`` with an injected connect function
(``socket.create_connection`` by default), so tests can stand in for DNS,
which a loopback server cannot.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..http1.chunked import MAX_SIZE_LINE, parse_chunk_size
from ..http1.errors import ProxyError
from ..http1.headers import Headers, Limits, content_length, is_chunked, keep_alive, read_section
from ..http1.target import Origin
from .connect import ConnectFn, dial
from .watchdog import Deadline, Watchdog

# Origins may send more and larger fields than we accept from clients (cookies).
RESPONSE_LIMITS = Limits(request_line=65536, header_bytes=131072, header_count=200)


class MalformedResponse(http.client.HTTPException):
    """The origin's response head breaks the framing rules; it is never relayed."""


class UpstreamResponse(http.client.HTTPResponse):
    """An HTTPResponse whose head is parsed and checked by this project's rules.

    ``begin`` is replaced rather than extended: the stdlib parses the head with
    the email package (tens of microseconds per response, the hottest spot on
    the forward path), silently stops at a line without a colon, reads "5, 5"
    as no Content-Length and lets Transfer-Encoding quietly win over
    Content-Length. Here the head goes through ``http1.headers.read_fields`` and
    ambiguous framing raises MalformedResponse (RFC 9112 section 6.3). The
    attributes http.client's body readers use (chunked, chunk_left, length,
    will_close) are set exactly as the stdlib defines them; ``headers`` and
    ``msg`` hold a Headers, which answers get/get_all/items like HTTPMessage.

    Interim responses other than 100 (103 Early Hints, 102) are collected in
    ``informational`` so the proxy can relay them (RFC 9110 section 15.2).
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.informational: list[tuple[int, str, Headers]] = []
        self.trailers: Headers | None = None  # of a chunked body, once read to its end

    def begin(self) -> None:
        if self.headers is not None:
            return
        version, status, reason = self._read_status()
        if not version.startswith("HTTP/1."):
            raise http.client.UnknownProtocol(version)
        fields = self._read_fields()
        try:
            chunked, length = is_chunked(fields), content_length(fields)
        except ProxyError as exc:
            raise MalformedResponse(exc.reason) from None
        if chunked and length is not None:
            raise MalformedResponse("both Content-Length and Transfer-Encoding")
        self.code = self.status = status
        self.reason = reason.strip()
        self.version = 10 if version == "HTTP/1.0" else 11
        self.headers = self.msg = fields
        self.chunked, self.chunk_left = chunked, None
        if status in (204, 304) or self._method == "HEAD":
            self.length = 0
        else:
            self.length = None if chunked else length
        # Without a length the body runs to the close (RFC 9112 section 6.3 rule 8).
        self.will_close = not keep_alive(version, fields) or (not chunked and self.length is None)
        if status == 101:
            # The connection goes on in another protocol: the forward step takes the
            # socket over (or closes it); otherwise getresponse() would close it first.
            self.will_close = False

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if status == 101 or not 100 <= status < 200:
                return version, status, reason
            fields = self._read_fields()
            if status != 100:  # 100 Continue answers our own Expect; it is not relayed
                if len(self.informational) >= 16:
                    raise MalformedResponse("too many 1xx responses")
                self.informational.append((status, reason.strip(), fields))

    def _read_fields(self) -> Headers:
        try:
            return read_section(self.fp, RESPONSE_LIMITS)
        except ProxyError as exc:
            raise MalformedResponse(exc.reason) from None

    def _read_and_discard_trailer(self) -> None:
        # Despite the stdlib's name, kept rather than discarded: a proxy passes
        # trailer fields on to a client that takes chunked (RFC 9112 section 7.1.2).
        self.trailers = self._read_fields()

    def _read_next_chunk_size(self) -> int:
        # http.client reads sizes with int(x, 16), which takes "+5", " 5", "0x5"
        # and "1_0": a body framed one way for us and another for the next hop.
        # The strict parser is shared with request bodies (RFC 9112 section 7.1).
        line = self.fp.readline(MAX_SIZE_LINE + 1)
        if len(line) > MAX_SIZE_LINE:
            raise http.client.LineTooLong("chunk size")
        return parse_chunk_size(line)


class UpstreamConnection(http.client.HTTPConnection):
    """An HTTPConnection with an injected connect function and a watchdog deadline.

    Once connected the socket is blocking with no timeout (see watchdog.py):
    the forward step calls ``progress()`` before each blocking call, and a
    silent origin gets its socket cut, which ``timed_out()`` then reports.
    """

    response_class = UpstreamResponse

    def __init__(self, origin: Origin, *, connect_timeout: float, read_timeout: float,
                 connect: ConnectFn = socket.create_connection, watchdog: Watchdog | None = None) -> None:
        super().__init__(origin.host, origin.port, timeout=connect_timeout)
        self.origin = origin
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.idle_since = 0.0
        self.requests = 0
        self._connect_fn = connect
        self._watchdog = watchdog
        self.deadline: Deadline | None = None

    def connect(self) -> None:
        """Dial the origin; a failure raises the ProxyError to answer with (see failures.py)."""
        self.sock = dial(self._connect_fn, self.host, self.port, self.connect_timeout, self.origin.authority)
        if self._watchdog is None:
            self.sock.settimeout(self.read_timeout)
        else:
            self.sock.settimeout(None)
            self.deadline = self._watchdog.watch(self.sock)

    def progress(self) -> None:
        """The next blocking call on this connection (a read or a send) must return within read_timeout."""
        if self.deadline is not None:
            self.deadline.arm_write(self.read_timeout)

    def idle(self) -> None:
        """Resting in the pool: no deadline (the pool's idle expiry applies instead)."""
        if self.deadline is not None:
            self.deadline.clear()

    def detach(self) -> socket.socket:
        """Hand the socket over (a protocol switch): no deadline, no pool, not closed with this."""
        sock = self.sock
        assert sock is not None
        if self.deadline is not None and self._watchdog is not None:
            self._watchdog.forget(self.deadline)
            self.deadline = None
        self.sock = None
        return sock

    def timed_out(self) -> bool:
        return self.deadline is not None and self.deadline.fired

    def close(self) -> None:
        if self.deadline is not None and self._watchdog is not None:
            self._watchdog.forget(self.deadline)
        super().close()

    def __repr__(self) -> str:
        state = "CLOSED" if self.sock is None else "OPEN"
        return f"<UpstreamConnection [{self.origin}, {state}, Request Count: {self.requests}]>"


def is_dropped(sock: socket.socket | None) -> bool:
    """True if an idle connection is unusable: closed by the peer, or holding stray bytes.

    An idle HTTP/1.1 connection has nothing to read; anything readable is
    either EOF (the origin timed it out) or garbage we must not take as the
    next response. poll() rather than select(): descriptors may exceed 1024.
    """
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _dropped(conns: list[UpstreamConnection]) -> set[UpstreamConnection]:
    """The idle connections with something to read (EOF or stray bytes), in one poll() call."""
    poller = select.poll()
    by_fd = {}
    for conn in conns:
        if conn.sock is not None:
            try:
                by_fd[conn.sock.fileno()] = conn
                poller.register(conn.sock, select.POLLIN)
            except (OSError, ValueError):
                continue  # closed meanwhile by the acquire that took it
    return {by_fd[fd] for fd, _ in poller.poll(0) if fd in by_fd}


class Pool:
    """Idle upstream connections per origin, handed out most-recently-used first.

    Bounded per origin and in total (the oldest idle connection anywhere makes
    room for a newer one), and swept from a timer (``sweep``): a connection
    idle past ``idle_timeout``, or one the origin has closed, is closed
    whether or not more traffic comes.
    """

    def __init__(self, factory: Callable[[Origin], UpstreamConnection], *,
                 max_idle_per_origin: int = 32, max_idle_total: int = 1024, idle_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._max_idle = max_idle_per_origin
        self._max_total = max_idle_total
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._total = 0
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self.opened = 0
        self.reused = 0

    def acquire(self, origin: Origin, *, fresh: bool = False) -> tuple[UpstreamConnection, bool]:
        """A connection to origin and whether it was reused; a new one is not yet connected.

        ``fresh`` skips the idle ones, for a retry after a reused one went stale.
        """
        now = self._clock()
        while not fresh:
            with self._lock:
                idle = self._idle.get(origin)
                candidate = idle.pop() if idle else None
                if candidate is not None:
                    self._total -= 1
            if candidate is None:
                break
            # Checked outside the lock: poll() releases the GIL, and a lock held
            # across it makes every other thread queue behind this one.
            if now - candidate.idle_since < self._idle_timeout and not is_dropped(candidate.sock):
                with self._lock:
                    self.reused += 1
                return candidate, True
            candidate.close()
        with self._lock:
            self.opened += 1
        return self._factory(origin), False

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose last exchange completed cleanly."""
        conn.idle_since = self._clock()
        evicted = None
        with self._lock:
            idle = self._idle.setdefault(conn.origin, [])
            keep = conn.sock is not None and len(idle) < self._max_idle and self._max_total > 0
            if keep:
                if self._total >= self._max_total:
                    evicted = self._take_oldest()
                idle.append(conn)
                self._total += 1
        if not keep:
            conn.close()
        if evicted is not None:
            evicted.close()

    def _take_oldest(self) -> UpstreamConnection | None:
        """Remove the connection idle longest, over every origin (lock held)."""
        heads = [(idle[0].idle_since, origin) for origin, idle in self._idle.items() if idle]
        if not heads:
            return None
        origin = min(heads, key=lambda head: head[0])[1]
        self._total -= 1
        return self._idle[origin].pop(0)

    def sweep(self) -> None:
        """Close connections idle too long or closed by their origin (at most once a second).

        Runs on a timer (the watchdog thread), so a burst's connections do not
        sit open, or in CLOSE_WAIT once the origin leaves, until the next request.
        """
        now = self._clock()
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + 1.0
            idle = [c for conns in self._idle.values() for c in conns]
        stale = {c for c in idle if now - c.idle_since >= self._idle_timeout}
        stale |= _dropped([c for c in idle if c not in stale])
        if not stale:
            return
        removed = []  # only those still idle: one taken by acquire meanwhile is its user's now
        with self._lock:
            for origin, conns in list(self._idle.items()):
                kept = [c for c in conns if c not in stale]
                removed += [c for c in conns if c in stale]
                if kept:
                    self._idle[origin] = kept
                else:
                    del self._idle[origin]
            self._total -= len(removed)
        for conn in removed:
            conn.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        """Close every idle connection (in-flight ones are closed by their users)."""
        with self._lock:
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
            self._total = 0
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"<Pool idle={self.idle_count()} opened={self.opened} reused={self.reused}>"

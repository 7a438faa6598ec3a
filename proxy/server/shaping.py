"""The client side of one exchange, misbehaving as a fault Plan's Shape says.

ShapedDownstream stands in for the handler's Downstream on the forward path:
it writes the response slowly, in tiny pieces, late, damaged, cut short, or
not at all after the head, and reads the request body slowly. It tells the
head from the body by the blank line that ends a final (non-1xx) head, so
``after_bytes`` counts body bytes. Every wait is bounded: a stall ends when
the client closes, the proxy shuts the socket, or the proxy's timeout passes.
"""

from __future__ import annotations

import io
import select
import socket
import struct
import time

from ..http1.errors import Abort, BadRequest
from .downstream import Downstream
from .faults import Shape

_PACE = 20  # writes (or reads) a second when throttled


class ShapedDownstream(Downstream):
    """A Downstream whose sends and body reads follow ``shape``; ``body`` is a request body read already."""

    def __init__(self, base: Downstream, shape: Shape, body: bytes | None = None) -> None:
        rfile = base.rfile if shape.rate_up is None else _PacedReader(base.rfile, shape.rate_up)
        super().__init__(rfile, base.sock, base.deadline, base.timeout)
        self.shape = shape
        self.held = body
        self.sent = 0  # bytes written, heads included
        self.body_sent = 0
        self._head = b""  # a head not yet complete
        self._in_head = True
        self._chunked = False
        self._start = time.monotonic()

    def read_exact(self, n: int) -> bytes:
        if self.held is not None and len(self.held) == n:
            body, self.held = self.held, None
            return body
        return super().read_exact(n)

    def send(self, data: bytes) -> None:
        while data:
            if self._in_head:
                head, data = self._take_head(data)
                self._write(head)
            else:
                self._send_body(data)
                return

    def _take_head(self, data: bytes) -> tuple[bytes, bytes]:
        """Split off what belongs to the head; note when a final head is complete."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return data, b""
        head, rest = self._head[:end + 4], self._head[end + 4:]
        self._head = b""
        if not head.startswith(b"HTTP/1.1 1") and not head.startswith(b"HTTP/1.0 1"):
            self._in_head = False
            self._chunked = b"\r\ntransfer-encoding: chunked\r\n" in head.lower()
        return data[:len(data) - len(rest)], rest

    def _send_body(self, data: bytes) -> None:
        shape = self.shape
        if shape.stall:
            self._stall()
        if shape.corrupt and self.body_sent == 0:
            data = _corrupt(data, self._chunked)
        cut = shape.truncate_after
        if cut is not None and self.body_sent + len(data) > cut:
            self._write(data[:cut - self.body_sent])
            raise Abort(f"response truncated by a fault rule after {cut} body bytes")
        self.body_sent += len(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        shape = self.shape
        if not data:
            return
        if shape.first_byte_delay and not self.sent:
            time.sleep(shape.first_byte_delay)
            self._start = time.monotonic()
        if shape.reset_after is not None and self.sent + len(data) > shape.reset_after:
            super().send(data[:shape.reset_after - self.sent])
            self.abort()
        step = len(data)
        if shape.rate_down is not None:
            step = max(1, int(shape.rate_down / _PACE))
        if shape.fragment is not None:
            step = min(step, shape.fragment)
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            super().send(piece)
            self.sent += len(piece)
            if shape.rate_down is not None:
                _wait_until(self._start + self.sent / shape.rate_down)

    def _stall(self) -> None:
        """Send nothing more until the client closes (or the proxy's timeout passes), then close."""
        limit = self.shape.stall_seconds if self.shape.stall_seconds is not None else self.timeout
        end = time.monotonic() + limit
        self.rest()
        poller = select.poll()  # not select(): descriptors past 1023 are common in a busy proxy
        poller.register(self.sock, select.POLLIN | select.POLLRDHUP)
        while (left := end - time.monotonic()) > 0:
            readable = poller.poll(left * 1000)
            if readable and not _peek(self.sock):
                raise Abort("stalled by a fault rule until the client closed")
            if readable:  # pipelined bytes, not a close: look again after a moment
                time.sleep(min(0.05, max(left, 0)))
        raise Abort(f"stalled by a fault rule for {limit:g}s")

    def abort(self) -> None:
        """End the exchange here; SO_LINGER 0 makes the handler's close() an RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise Abort("connection reset by a fault rule")


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b"?"
    except OSError:
        return b""


def _corrupt(data: bytes, chunked: bool) -> bytes:
    """Damage the first body piece: a chunk-size line that is not hex, or a flipped first byte."""
    if chunked:
        size_end = data.find(b"\r\n")
        return b"z" * max(size_end, 1) + data[max(size_end, 0):]
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _wait_until(moment: float) -> None:
    ahead = moment - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)


class _PacedReader(io.BufferedReader):
    """The client's reader, giving out at most ``rate`` bytes a second (a throttled upload)."""

    def __init__(self, inner: io.BufferedReader, rate: float) -> None:
        super().__init__(io.BytesIO())  # never read: every method goes to ``inner``
        self.inner = inner
        self.rate = rate
        self.step = max(1, int(rate / _PACE))
        self.taken = 0
        self.start = time.monotonic()

    def _paced(self, data: bytes) -> bytes:
        self.taken += len(data)
        _wait_until(self.start + self.taken / self.rate)
        return data

    def read1(self, size: int = -1) -> bytes:
        return self._paced(self.inner.read1(self.step if size < 0 else min(size, self.step)))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._paced(self.inner.read())
        pieces = []
        while size > 0 and (piece := self.read1(size)):
            pieces.append(piece)
            size -= len(piece)
        return b"".join(pieces)

    def readline(self, size: int | None = -1) -> bytes:
        return self._paced(self.inner.readline(size))

    def peek(self, size: int = 0) -> bytes:
        return self.inner.peek(size)


# RFC 8446 section 6 (and 5246 section 7.2): an alert record, TLS 1.2 on the wire, fatal handshake_failure.
_HANDSHAKE_FAILURE = bytes([21, 3, 3, 0, 2, 2, 40])


def fail_handshake(client: Downstream, established: bytes) -> None:
    """Open the tunnel (200), read the client's first TLS record, answer it with a fatal alert, close.

    No origin is dialled: the client sees its handshake refused, as from a
    server or an interception it does not accept.
    """
    client.send(established)
    try:
        header = client.read_exact(5)  # the record header of the ClientHello
        if header[0] == 22:  # a handshake record: read it whole, so the close is not a reset
            client.read_exact(int.from_bytes(header[3:5], "big"))
    except BadRequest as exc:  # the client went away or sent less than a record: the alert is all it gets
        client.send(_HANDSHAKE_FAILURE)
        raise Abort("TLS handshake failed by a fault rule (the client sent no ClientHello)") from exc
    client.send(_HANDSHAKE_FAILURE)
    raise Abort("TLS handshake failed by a fault rule")

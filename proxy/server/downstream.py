"""Downstream: the client side of one exchange, as the forward step and fault rules use it.

It owns the client's buffered reader and raw socket for the length of an
exchange, and the client's deadline: every send and read first arms it, so a
slow client is served and a silent or deaf one is cut. A client that stops
receiving ends the exchange (``Abort``); one whose body never arrives is a 400.
"""

from __future__ import annotations

import socket
from io import BufferedReader

from ..http1.errors import Abort, BadRequest
from .watchdog import Deadline


class Downstream:
    """The client side of an exchange: its buffered reader, its raw socket, its deadline.

    Every send and read first arms the deadline ``timeout`` seconds ahead: a
    client may be slow, but not silent (or deaf) for longer than that. A send
    arms it to cut both sides, since only that wakes a send blocked on a
    client that stopped reading; a read cuts the read side only, so an error
    can still be written.
    """

    def __init__(self, rfile: BufferedReader, sock: socket.socket, deadline: Deadline | None = None,
                 timeout: float = 60.0) -> None:
        self.rfile = rfile
        self.sock = sock
        self.deadline = deadline
        self.timeout = timeout

    def progress(self) -> None:
        """The client is about to be read from: it has ``timeout`` seconds to send something."""
        if self.deadline is not None:
            self.deadline.arm_read(self.timeout)

    def rest(self) -> None:
        """Nothing is expected from the client for now (the origin is being waited for)."""
        if self.deadline is not None:
            self.deadline.clear()

    def send(self, data: bytes) -> None:
        if self.deadline is not None:
            self.deadline.arm_write(self.timeout)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            if self.deadline is not None and self.deadline.fired:
                raise Abort(f"client stopped reading for {self.timeout:g}s") from exc
            raise Abort(f"client stopped receiving: {exc}") from exc

    def read_exact(self, n: int) -> bytes:
        self.progress()
        try:
            data = self.rfile.read(n)
        except OSError as exc:
            raise BadRequest(f"request body not received: {exc}") from exc
        if len(data) != n:
            raise BadRequest(f"request body ended after {len(data)} of {n} bytes")
        return data

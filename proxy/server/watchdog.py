"""Deadlines on blocking socket calls: one thread cuts the sockets whose time is up.

The proxy's sockets run in blocking mode with no socket timeout. A socket
timeout in CPython costs a poll() before every recv and send, and each of
those releases and retakes the GIL: with many threads that doubles the
system calls and the lock traffic per request. Instead each connection
holds one Deadline, moved forward as the exchange makes progress (an
attribute write, no lock), and a single Watchdog thread shuts down the
sockets whose deadline has passed, which returns any blocked call at once.

Shutting down only the read side (SHUT_RD) still lets the owner write a
last word (a 408 for a client that dribbled its head); SHUT_RDWR also
unblocks a send to a peer that stopped reading. It also defeats slowloris,
which a per-call timeout cannot: a deadline counts from the phase's start,
however the bytes trickle in.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
import time


class Deadline:
    """When a socket's current phase must be over, and how to cut it if not."""

    __slots__ = ("at", "fired", "how", "key", "sock")

    def __init__(self, key: int, sock: socket.socket) -> None:
        self.key, self.sock = key, sock
        self.at = math.inf
        self.how = socket.SHUT_RDWR
        self.fired = False

    def set(self, seconds: float, how: int = socket.SHUT_RDWR) -> None:
        """Start a phase that must end (or make progress) within ``seconds``."""
        self.how = how
        self.at = time.monotonic() + seconds

    def clear(self) -> None:
        self.at = math.inf


class Watchdog:
    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._armed: dict[int, Deadline] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket) -> Deadline:
        """A deadline for sock, unset (never due) until ``Deadline.set``."""
        deadline = Deadline(next(self._keys), sock)
        with self._lock:
            self._armed[deadline.key] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fwdproxy-watchdog", daemon=True)
                self._thread.start()
        return deadline

    def forget(self, deadline: Deadline) -> None:
        with self._lock:
            self._armed.pop(deadline.key, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            with self._lock:
                expired = [d for d in self._armed.values() if d.at <= now]
                for deadline in expired:
                    del self._armed[deadline.key]
            for deadline in expired:
                deadline.fired = True
                try:
                    deadline.sock.shutdown(deadline.how)
                except OSError:
                    pass  # closed meanwhile

"""Deadlines on blocking reads: a single thread that cuts sockets whose time is up.

A per-recv socket timeout cannot stop a client that dribbles a byte just
before each timeout (slowloris). A Watchdog holds an absolute deadline per
armed socket and, when one passes, shuts the socket's read side: the blocked
read returns at once, and the handler can still write its 408 before closing.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time


class Deadline:
    """An armed deadline; ``fired`` tells the reader why its read came back empty."""

    __slots__ = ("at", "fired", "key", "sock")

    def __init__(self, key: int, sock: socket.socket, at: float) -> None:
        self.key, self.sock, self.at, self.fired = key, sock, at, False


class Watchdog:
    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._armed: dict[int, Deadline] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, seconds: float) -> Deadline:
        deadline = Deadline(next(self._keys), sock, time.monotonic() + seconds)
        with self._lock:
            self._armed[deadline.key] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fwdproxy-watchdog", daemon=True)
                self._thread.start()
        return deadline

    def disarm(self, deadline: Deadline) -> None:
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
                    deadline.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # closed meanwhile

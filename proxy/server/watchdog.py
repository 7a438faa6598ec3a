"""Deadlines on blocking socket calls: one thread cuts the sockets whose time is up.

The proxy's sockets run in blocking mode with no socket timeout. A socket
timeout in CPython costs a poll() before every recv and send, and each of
those releases and retakes the GIL: with many threads that doubles the
system calls and the lock traffic per request. Instead each connection
holds one Deadline, moved forward as the exchange makes progress (one
attribute write, no lock), and a single Watchdog thread shuts down the
sockets whose deadline has passed, which returns any blocked call at once.

A deadline armed for reading cuts only the read side (SHUT_RD), so the owner
can still write a last word (a 408 for a client that dribbled its head). That
does not wake a blocked send: a deadline armed for writing cuts both sides,
and only that bounds a send to a peer that stopped reading. What a deadline
cuts and when are one value, written at once, so no caller can move the time
and leave the cut of an earlier phase behind. It also defeats slowloris,
which a per-call timeout cannot: a deadline counts from the phase's start,
however the bytes trickle in.

The same thread runs a few periodic chores (the upstream pool's idle sweep),
so nothing idle waits for traffic to be cleaned up.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
import time
from collections.abc import Callable

_NEVER = (math.inf, socket.SHUT_RDWR)


class Deadline:
    """When a socket's current phase must be over, and which side to cut if it is not."""

    __slots__ = ("_cut", "_due", "_fired", "key", "sock")

    def __init__(self, key: int, sock: socket.socket) -> None:
        self.key, self.sock = key, sock
        self._due = _NEVER  # (monotonic time, shutdown how): replaced whole, never half-set
        self._fired = False
        self._cut = socket.SHUT_RDWR

    def arm_read(self, seconds: float) -> None:
        """A read phase: if not over within ``seconds``, cut the read side only (a reply can follow)."""
        self._due = (time.monotonic() + seconds, socket.SHUT_RD)

    def arm_write(self, seconds: float) -> None:
        """Anything that may block on sending: if not over within ``seconds``, cut both sides."""
        self._due = (time.monotonic() + seconds, socket.SHUT_RDWR)

    def extend(self, seconds: float) -> None:
        """Progress within the armed phase: ``seconds`` more from now, cutting what it cut.

        On a cleared deadline this arms for writing (cut both sides), the safe default.
        """
        self._due = (time.monotonic() + seconds, self._due[1])

    def clear(self) -> None:
        """Nothing is expected on this socket for now."""
        self._due = _NEVER

    @property
    def fired(self) -> bool:
        """Whether the watchdog has cut this socket (sticky: a cut socket stays cut)."""
        return self._fired

    @property
    def write_side_open(self) -> bool:
        """Whether the watchdog cut only the read side, so a last response can still be written."""
        return self._fired and self._cut == socket.SHUT_RD

    def _expire(self, now: float) -> int | None:
        """Called by the watchdog: the shutdown to apply if due (and disarm), else None."""
        at, how = self._due
        if at > now:
            return None
        self._due = _NEVER
        self._fired, self._cut = True, how
        return how

    def __repr__(self) -> str:
        at, how = self._due
        state = "idle" if at == math.inf else f"due in {at - time.monotonic():.2f}s"
        state = "fired" if self._fired else state
        return f"<Deadline {state} cuts={'read' if how == socket.SHUT_RD else 'both'}>"


class Watchdog:
    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self._watched: dict[int, Deadline] = {}
        self._chores: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket) -> Deadline:
        """A deadline for sock, never due until armed; watched until ``forget``."""
        deadline = Deadline(next(self._keys), sock)
        with self._lock:
            self._watched[deadline.key] = deadline
            self._start()
        return deadline

    def forget(self, deadline: Deadline) -> None:
        with self._lock:
            self._watched.pop(deadline.key, None)

    def every_tick(self, chore: Callable[[], None]) -> None:
        """Run ``chore`` on the watchdog thread at every tick (it must be quick and never raise).

        The thread itself starts with the first ``watch``: a chore needs no
        thread before any socket exists (and the CLI forks workers before then).
        """
        with self._lock:
            self._chores.append(chore)

    def stop(self) -> None:
        self._stop.set()

    def _start(self) -> None:
        if self._thread is None:  # lock held
            self._thread = threading.Thread(target=self._run, name="fwdproxy-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            with self._lock:
                due = [(d, how) for d in self._watched.values() if (how := d._expire(now)) is not None]
                chores = list(self._chores)
            for deadline, how in due:
                try:
                    deadline.sock.shutdown(how)
                except OSError:
                    pass  # closed meanwhile
            for chore in chores:
                chore()

"""Faults on demand: make the proxy misbehave on cue, for tests of proxied clients.

A Faults registry holds rules, each a matcher (method, host, path: exact,
glob or compiled regex; nothing given matches everything) and an action.
The handler asks it once per request which rules apply; this module also
holds the client-side wrapper that throttles or resets a response. Nothing
here is random: a fault fires on every matching request, in the order added.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..http1.errors import Abort
from .downstream import Downstream
from .match import Match, PathMatcher

__all__ = ["ACTIONS", "Fault", "Faults", "Match", "PathMatcher", "ShapedDownstream"]


@dataclass
class Fault:
    """One rule: what to do (``action``) to which requests (``match``)."""

    action: str  # respond, fail, delay, reset, refuse_connect, throttle, require_auth
    match: Match
    params: dict[str, Any] = field(default_factory=dict)
    hits: int = 0

    def __repr__(self) -> str:
        return f"<Fault {self.action} {self.params} on {self.match} hits={self.hits}>"


ACTIONS = ("respond", "fail", "delay", "reset", "refuse_connect", "throttle", "require_auth")


class Faults:
    """The rules in force; thread-safe, consulted once per request."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, action: str, match: Match, **params: Any) -> Fault:
        if action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r}; one of {', '.join(ACTIONS)}")
        fault = Fault(action, match, params)
        with self._lock:
            self._rules = [*self._rules, fault]
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._rules = [f for f in self._rules if f is not fault]

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def __bool__(self) -> bool:
        return bool(self._rules)

    def applying(self, method: str, host: str, path: str) -> list[Fault]:
        """Rules matching this request, in the order they were added; each counts a hit."""
        hits = [f for f in self._rules if f.match.matches(method, host, path)]
        for fault in hits:
            fault.hits += 1
        return hits

    def rules(self) -> list[Fault]:
        return list(self._rules)


class ShapedDownstream(Downstream):
    """A client side that sends at most ``rate`` bytes a second, or resets after ``reset_after`` bytes."""

    def __init__(self, base: Downstream, *, rate: float | None = None,
                 reset_after: int | None = None) -> None:
        super().__init__(base.rfile, base.sock, base.deadline, base.timeout)
        self.rate = rate
        self.reset_after = reset_after
        self.sent = 0
        self._start = time.monotonic()

    def send(self, data: bytes) -> None:
        if self.reset_after is not None and self.sent + len(data) > self.reset_after:
            super().send(data[:self.reset_after - self.sent])
            self.abort()
        if self.rate is None:
            super().send(data)
            self.sent += len(data)
            return
        step = max(1, int(self.rate / 20))  # about 20 writes a second
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            super().send(piece)
            self.sent += len(piece)
            ahead = self.sent / self.rate - (time.monotonic() - self._start)
            if ahead > 0:
                time.sleep(ahead)

    def abort(self) -> None:
        """End the exchange here; SO_LINGER 0 makes the handler's close() an RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise Abort("connection reset by a fault rule")

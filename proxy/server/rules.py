"""Fault rules as typed values: which requests (a Match), how many times, and what to do.

A rule is one dataclass per kind of fault, with a Match (method, host glob,
path: exact, glob or compiled regex), a budget ``times`` (None: no limit) and
a ``hits`` count. Rules that answer a request (respond, fail, close, ...)
end the search for more; the others change how the exchange goes. Plain
values only: the registry that tries them is ``faults``, chaos is in
``chaos`` and recorded answers in ``replay``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

PathMatcher = str | re.Pattern[str] | None


@dataclass(frozen=True)
class Match:
    """Which requests a fault applies to; None matches anything."""

    method: str | None = None
    host: str | None = None
    path: PathMatcher = None

    def matches(self, method: str, host: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.host is not None and not fnmatch.fnmatchcase(host.lower(), self.host.lower()):
            return False
        return self.path is None or _path_matches(self.path, path)

    def covers(self, other: Match) -> bool:
        """True if every request ``other`` matches is matched here too (conservatively)."""
        return (_covers(self.method and self.method.upper(), other.method and other.method.upper())
                and _covers(self.host and self.host.lower(), other.host and other.host.lower())
                and _covers(self.path, other.path))

    def __str__(self) -> str:
        shown = [f"{name}={value!r}" for name, value in
                 (("method", self.method), ("host", self.host), ("path", _show_path(self.path)))
                 if value is not None]
        return ", ".join(shown) or "every request"


def _path_matches(matcher: str | re.Pattern[str], path: str) -> bool:
    if isinstance(matcher, re.Pattern):
        return matcher.search(path) is not None
    bare = path.split("?", 1)[0]
    return matcher in (path, bare) or fnmatch.fnmatchcase(bare, matcher)


def _covers(mine: PathMatcher, theirs: PathMatcher) -> bool:
    if mine is None or mine == theirs:
        return True
    if theirs is None or isinstance(mine, re.Pattern) or isinstance(theirs, re.Pattern):
        return False
    return fnmatch.fnmatchcase(theirs, mine)  # a glob that matches the other's pattern text


def _show_path(path: PathMatcher) -> str | None:
    return f"re:{path.pattern}" if isinstance(path, re.Pattern) else path


class Exchange(Enum):
    """What kind of exchange a rule can act on."""

    HTTP = "http"  # a forwarded request (plain, or inside an intercepted tunnel)
    TUNNEL = "tunnel"  # a CONNECT request, before the tunnel opens


@dataclass(eq=False)
class Rule:
    """One fault rule. Subclasses say what it does; ``times`` limits how often it fires."""

    match: Match = field(default_factory=Match)
    times: int | None = None
    hits: int = field(default=0, init=False)
    number: int = field(default=0, init=False)  # its place in the registry, from 1

    name: ClassVar[str] = "rule"
    # Answers the request itself (the search ends, the origin is never contacted).
    answers: ClassVar[bool] = False
    # Adds to what earlier rules of its kind did (delays); otherwise the first to fire sets it.
    stacks: ClassVar[bool] = False
    acts_on: ClassVar[frozenset[Exchange]] = frozenset({Exchange.HTTP})

    def __post_init__(self) -> None:
        if self.times is not None and (isinstance(self.times, bool) or self.times < 1):
            raise ValueError(f"{self.name}: times={self.times!r}; a rule fires at least once "
                             "(times=None, the default, means on every matching request)")

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times

    @property
    def used(self) -> bool:
        """Fired on as many requests as planned: at least once, or ``times`` times."""
        return self.hits >= (self.times or 1)

    def params(self) -> str:
        return ""

    def describe(self) -> str:
        times = "" if self.times is None else f", times={self.times}"
        return f"#{self.number} {self.name}({self.params()}) on {self.match}{times}"

    def __repr__(self) -> str:
        return f"<{self.describe()} hits={self.hits}>"


# -- rules that answer the request --------------------------------------------------


@dataclass(eq=False, repr=False)
class Respond(Rule):
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    name: ClassVar[str] = "respond"
    answers: ClassVar[bool] = True

    def params(self) -> str:
        return f"{self.status}, {len(self.body)} bytes"


@dataclass(eq=False, repr=False)
class Fail(Rule):
    status: int = 502
    name: ClassVar[str] = "fail"
    answers: ClassVar[bool] = True

    def params(self) -> str:
        return str(self.status)


@dataclass(eq=False, repr=False)
class Close(Rule):
    name: ClassVar[str] = "close"
    answers: ClassVar[bool] = True
    acts_on: ClassVar[frozenset[Exchange]] = frozenset(Exchange)


@dataclass(eq=False, repr=False)
class DnsError(Rule):
    name: ClassVar[str] = "dns_error"
    answers: ClassVar[bool] = True
    acts_on: ClassVar[frozenset[Exchange]] = frozenset(Exchange)


@dataclass(eq=False, repr=False)
class TlsFailure(Rule):
    """A CONNECT answered 200, then the client's TLS handshake refused with a fatal alert."""

    name: ClassVar[str] = "tls_failure"
    answers: ClassVar[bool] = True
    acts_on: ClassVar[frozenset[Exchange]] = frozenset({Exchange.TUNNEL})


@dataclass(eq=False, repr=False)
class RefuseConnect(Rule):
    status: int = 403
    name: ClassVar[str] = "refuse_connect"
    answers: ClassVar[bool] = True
    acts_on: ClassVar[frozenset[Exchange]] = frozenset({Exchange.TUNNEL})

    def params(self) -> str:
        return str(self.status)


# -- rules that change how the exchange goes ---------------------------------------


@dataclass(eq=False, repr=False)
class Passthrough(Rule):
    """Changes nothing, but plans the request: strict mode lets it reach its origin."""

    name: ClassVar[str] = "passthrough"
    acts_on: ClassVar[frozenset[Exchange]] = frozenset(Exchange)


@dataclass(eq=False, repr=False)
class RequireAuth(Rule):
    user: str = ""
    password: str = ""
    name: ClassVar[str] = "require_auth"
    acts_on: ClassVar[frozenset[Exchange]] = frozenset(Exchange)

    def params(self) -> str:
        return repr(self.user)


@dataclass(eq=False, repr=False)
class Delay(Rule):
    """Wait before forwarding (or tunnelling)."""

    seconds: float = 0.0
    name: ClassVar[str] = "delay"
    stacks: ClassVar[bool] = True
    acts_on: ClassVar[frozenset[Exchange]] = frozenset(Exchange)

    def params(self) -> str:
        return f"{self.seconds:g}"


class Direction(Enum):
    DOWN = "down"  # the response, toward the client
    UP = "up"  # the request body, from the client
    BOTH = "both"


@dataclass(eq=False, repr=False)
class Throttle(Rule):
    bytes_per_second: float = 0.0
    direction: Direction = Direction.DOWN
    name: ClassVar[str] = "throttle"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bytes_per_second <= 0:
            raise ValueError(f"throttle: bytes_per_second={self.bytes_per_second!r} must be positive")

    def params(self) -> str:
        return f"{self.bytes_per_second:g}, {self.direction.value}"


@dataclass(eq=False, repr=False)
class Reset(Rule):
    after_bytes: int = 0
    name: ClassVar[str] = "reset"

    def params(self) -> str:
        return f"after_bytes={self.after_bytes}"


@dataclass(eq=False, repr=False)
class Truncate(Rule):
    after_bytes: int = 0
    name: ClassVar[str] = "truncate"

    def params(self) -> str:
        return f"after_bytes={self.after_bytes}"


@dataclass(eq=False, repr=False)
class Stall(Rule):
    seconds: float | None = None  # None: until the proxy's timeout
    name: ClassVar[str] = "stall"


@dataclass(eq=False, repr=False)
class FirstByteDelay(Rule):
    seconds: float = 0.0
    name: ClassVar[str] = "first_byte_delay"
    stacks: ClassVar[bool] = True

    def params(self) -> str:
        return f"{self.seconds:g}"


@dataclass(eq=False, repr=False)
class Fragment(Rule):
    size: int = 1
    name: ClassVar[str] = "fragment"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 1:
            raise ValueError(f"fragment: size={self.size!r} must be at least 1")

    def params(self) -> str:
        return f"size={self.size}"


@dataclass(eq=False, repr=False)
class CorruptChunk(Rule):
    name: ClassVar[str] = "corrupt_chunk"

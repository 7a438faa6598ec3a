"""Fault rules: which requests the proxy misbehaves on, how, and how many times.

A rule is a typed value (one dataclass per kind of fault) with a Match (method,
host glob, path: exact, glob or compiled regex), a budget ``times`` (None: no
limit) and a ``hits`` count. The Faults registry keeps rules in the order they
were added and turns one request into a Plan: the rules are tried in that
order, each matching rule with budget left fires and counts a hit, and the
first rule that answers the request itself (respond, fail, close, ...) ends
the search. The handler carries the Plan out; shaping of the client side
(throttle, truncate, stall, ...) lives in ``shaping``. This module is pure:
no sockets, no clocks, no pytest. Chaos is random only through a seed.
"""

from __future__ import annotations

import fnmatch
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from ..http1.errors import ProxyError

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
class RefuseConnect(Rule):
    status: int = 403
    name: ClassVar[str] = "refuse_connect"
    answers: ClassVar[bool] = True
    acts_on: ClassVar[frozenset[Exchange]] = frozenset({Exchange.TUNNEL})

    def params(self) -> str:
        return str(self.status)


# -- rules that change how the exchange goes ---------------------------------------


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


# -- probabilistic and recorded answers ---------------------------------------------


@dataclass(frozen=True)
class ChaosChoice:
    """What chaos did to the ``n``-th matching request of ``route`` (from 0)."""

    route: str
    n: int
    outcome: str  # "pass", "error 503", "reset", "truncate"
    latency: float

    def __str__(self) -> str:
        return f"{self.route} #{self.n}: {self.outcome}" + (f" +{self.latency:.3f}s" if self.latency else "")


@dataclass(eq=False, repr=False)
class Chaos(Rule):
    """Random faults whose choices depend only on the seed and each route's request order."""

    seed: int = 0
    error_rate: float = 0.0
    statuses: tuple[int, ...] = (500, 502, 503, 504)
    latency: tuple[float, float] | None = None
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    choices: list[ChaosChoice] = field(default_factory=list, init=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False)
    name: ClassVar[str] = "chaos"

    def __post_init__(self) -> None:
        super().__post_init__()
        rates = {"error_rate": self.error_rate, "reset_rate": self.reset_rate,
                 "truncate_rate": self.truncate_rate}
        for key, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"chaos: {key}={rate!r} is not between 0 and 1")
        if sum(rates.values()) > 1.0:
            raise ValueError(f"chaos: error_rate, reset_rate and truncate_rate add up to "
                             f"{sum(rates.values()):g}, more than 1")
        if self.error_rate and not self.statuses:
            raise ValueError("chaos: error_rate needs at least one status in statuses")
        if self.latency is not None and not 0 <= self.latency[0] <= self.latency[1]:
            raise ValueError(f"chaos: latency={self.latency!r} must be (low, high) with 0 <= low <= high")

    def choose(self, route: str) -> ChaosChoice:
        """The next choice for ``route`` (call with the registry's lock held)."""
        n = self._counts.get(route, 0)
        self._counts[route] = n + 1
        rng = random.Random(f"{self.seed}/{route}/{n}")  # str seeds are hashed with SHA-512: stable
        latency = rng.uniform(*self.latency) if self.latency else 0.0
        draw = rng.random()
        if draw < self.error_rate:
            outcome = f"error {rng.choice(self.statuses)}"
        elif draw < self.error_rate + self.reset_rate:
            outcome = "reset"
        elif draw < self.error_rate + self.reset_rate + self.truncate_rate:
            outcome = "truncate"
        else:
            outcome = "pass"
        choice = ChaosChoice(route, n, outcome, latency)
        self.choices.append(choice)
        return choice

    def params(self) -> str:
        return f"seed={self.seed}"


@dataclass(frozen=True)
class Recorded:
    """One recorded exchange a Replay rule can answer with."""

    method: str
    url: str
    request_body: bytes
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    label: str  # where it came from, for messages: "api.har entry 3"


@dataclass(eq=False, repr=False)
class Replay(Rule):
    """Answers from recorded exchanges (each played once, in order), matched by method, URL and body."""

    entries: Sequence[Recorded] = ()
    source: str = ""
    match_body: bool = True
    strict: bool = True  # a request with no recording left gets a 502 and counts as unplanned
    _played: set[int] = field(default_factory=set, init=False)
    name: ClassVar[str] = "replay"

    def take(self, method: str, url: str, body: bytes | None) -> Recorded | None:
        """The first unplayed recording for this request (call with the registry's lock held)."""
        for i, entry in enumerate(self.entries):
            if i in self._played or entry.method != method.upper() or entry.url != url:
                continue
            if self.match_body and body is not None and not _same_text(entry.request_body, body):
                continue
            self._played.add(i)
            return entry
        return None

    def params(self) -> str:
        return f"{self.source!r}, {len(self.entries)} entries"

    def describe(self) -> str:
        return f"#{self.number} replay of {self.source} ({len(self._played)} of {len(self.entries)} played)"

    @property
    def used(self) -> bool:
        return len(self._played) == len(self.entries)


def _same_text(a: bytes, b: bytes) -> bool:
    # HAR keeps request bodies as text: compare as the cassette could store them.
    return a == b or a.decode("utf-8", "replace") == b.decode("utf-8", "replace")


# -- what one request gets ----------------------------------------------------------


@dataclass
class Shape:
    """How the client side of one exchange misbehaves; None/False: normally."""

    rate_down: float | None = None
    rate_up: float | None = None
    reset_after: int | None = None
    truncate_after: int | None = None
    stall: bool = False
    stall_seconds: float | None = None
    first_byte_delay: float = 0.0
    fragment: int | None = None
    corrupt: bool = False

    def __bool__(self) -> bool:
        return self != Shape()


@dataclass
class Answer:
    """A response the proxy sends itself."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


@dataclass
class Request:
    """The request as fault rules see it. ``body`` is given only when a Replay rule wants it."""

    exchange: Exchange
    method: str
    host: str
    path: str
    url: str
    body: bytes | None = None

    @property
    def route(self) -> str:
        return f"{self.method} {self.host}{self.path.split('?', 1)[0]}"


@dataclass
class Plan:
    """What the handler does with one request, in this order: wait, check credentials, then
    answer it (error, close, response) or forward it with the client side shaped."""

    fired: list[str] = field(default_factory=list)  # rule names, for the flow record
    delay: float = 0.0
    auth: tuple[str, str] | None = None
    error: ProxyError | None = None
    close: bool = False
    answer: Answer | None = None
    shape: Shape = field(default_factory=Shape)
    chaos: list[ChaosChoice] = field(default_factory=list)


UNPLANNED = "unplanned"  # the name a Plan fires for a request strict mode refused


class Faults:
    """The rules in force, in the order added; thread-safe, consulted once per request.

    ``strict`` refuses (502) every request that no rule answers; the flow
    then carries ``UNPLANNED`` among its faults.
    """

    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.strict = False
        self._added = 0

    def add(self, rule: Rule) -> Rule:
        """Append a rule. Raises ValueError if an earlier rule leaves it nothing to match."""
        with self._lock:
            self._added += 1
            rule.number = self._added
            for earlier in self._rules:
                if _shadows(earlier, rule):
                    raise ValueError(
                        f"fault rule {rule.describe()} can never fire: rule {earlier.describe()} "
                        "comes first, has no times= limit and matches every request it would; "
                        "give the earlier rule times=N, or narrow it")
            self._rules = [*self._rules, rule]
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        with self._lock:
            self._rules = []
            self.strict = False
            self._added = 0

    def __bool__(self) -> bool:
        return self.strict or bool(self._rules)

    def rules(self) -> list[Rule]:
        return list(self._rules)

    def unused(self) -> list[Rule]:
        """Rules that fired on fewer requests than planned (see Rule.used)."""
        return [rule for rule in self._rules if not rule.used]

    @property
    def wants_body(self) -> bool:
        """A Replay rule matches on request bodies: the handler reads small ones first."""
        return any(isinstance(rule, Replay) and rule.match_body for rule in self._rules)

    def plan(self, request: Request) -> Plan:
        """Try the rules in order; each that matches and has budget left fires and counts a hit."""
        plan = Plan()
        with self._lock:
            for rule in self._rules:
                if (request.exchange not in rule.acts_on or rule.spent
                        or not rule.match.matches(request.method, request.host, request.path)):
                    continue
                if _apply(rule, request, plan):
                    rule.hits += 1
                    plan.fired.append(rule.name)
                if _answered(plan):
                    return plan
        if self.strict:
            plan.fired.append(UNPLANNED)
            plan.error = ProxyError(f"strict mode: no rule answers {request.method} {request.url}, "
                                    "so it was not sent on", status=502, kind="http_request_denied")
        return plan


def _answered(plan: Plan) -> bool:
    return plan.error is not None or plan.close or plan.answer is not None


def _shadows(earlier: Rule, later: Rule) -> bool:
    """An earlier rule without a limit that always fires where ``later`` would takes its place."""
    if earlier.times is not None or not earlier.match.covers(later.match):
        return False
    if not later.acts_on & earlier.acts_on:
        return False
    if type(earlier).answers:
        return later.acts_on <= earlier.acts_on
    if type(earlier) is not type(later) or earlier.stacks or isinstance(earlier, (Chaos, Replay)):
        return False
    if isinstance(earlier, Throttle) and isinstance(later, Throttle):
        return earlier.direction in (Direction.BOTH, later.direction)
    return True


def _apply(rule: Rule, request: Request, plan: Plan) -> bool:
    """Add what ``rule`` does to ``plan``; False if it turned out not to fire (a replay miss)."""
    where = f"{request.host}{request.path}"
    if isinstance(rule, Respond):
        plan.answer = Answer(rule.status, rule.body, rule.headers)
    elif isinstance(rule, Fail):
        plan.error = ProxyError(f"failure injected by a fault rule for {where}", status=rule.status,
                                kind="proxy_internal_response")
    elif isinstance(rule, Close):
        plan.close = True
    elif isinstance(rule, DnsError):
        plan.error = ProxyError(f"cannot resolve {request.host}: name not known (a fault rule)",
                                status=502, kind="dns_error")
    elif isinstance(rule, RefuseConnect):
        plan.error = ProxyError(f"CONNECT to {request.host} refused by a fault rule", status=rule.status,
                                kind="http_request_denied")
    elif isinstance(rule, Replay):
        return _replay(rule, request, plan)
    elif isinstance(rule, Chaos):
        _chaos(rule.choose(request.route), plan)
    elif isinstance(rule, Delay):
        plan.delay += rule.seconds
    elif isinstance(rule, FirstByteDelay):
        plan.shape.first_byte_delay += rule.seconds
    elif isinstance(rule, Throttle):
        return _throttle(rule, plan.shape)
    else:
        return _modify(rule, plan)
    return True


def _modify(rule: Rule, plan: Plan) -> bool:
    """Set what a single-valued rule sets, unless an earlier rule did (then it does not fire)."""
    shape = plan.shape
    if isinstance(rule, RequireAuth) and plan.auth is None:
        plan.auth = (rule.user, rule.password)
    elif isinstance(rule, Reset) and shape.reset_after is None:
        shape.reset_after = rule.after_bytes
    elif isinstance(rule, Truncate) and shape.truncate_after is None:
        shape.truncate_after = rule.after_bytes
    elif isinstance(rule, Stall) and not shape.stall:
        shape.stall, shape.stall_seconds = True, rule.seconds
    elif isinstance(rule, Fragment) and shape.fragment is None:
        shape.fragment = rule.size
    elif isinstance(rule, CorruptChunk) and not shape.corrupt:
        shape.corrupt = True
    else:
        return False
    return True


def _throttle(rule: Throttle, shape: Shape) -> bool:
    fired = False
    if rule.direction is not Direction.UP and shape.rate_down is None:
        shape.rate_down, fired = rule.bytes_per_second, True
    if rule.direction is not Direction.DOWN and shape.rate_up is None:
        shape.rate_up, fired = rule.bytes_per_second, True
    return fired


def _chaos(choice: ChaosChoice, plan: Plan) -> None:
    plan.chaos.append(choice)
    plan.delay += choice.latency
    if choice.outcome.startswith("error"):
        status = int(choice.outcome.split()[1])
        plan.error = ProxyError(f"failure injected by chaos ({choice})", status=status,
                                kind="proxy_internal_response")
    elif choice.outcome == "reset":
        plan.shape.reset_after = 0
    elif choice.outcome == "truncate":
        plan.shape.truncate_after = 0


def _replay(rule: Replay, request: Request, plan: Plan) -> bool:
    entry = rule.take(request.method, request.url, request.body if rule.match_body else None)
    if entry is not None:
        plan.answer = Answer(entry.status, entry.body, entry.headers)
        return True
    if rule.strict:
        held = list(dict.fromkeys(f"{e.method} {e.url}" for e in rule.entries))
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        plan.fired.append(UNPLANNED)
        plan.error = ProxyError(f"{request.method} {request.url} is not in the cassette {rule.source} "
                                "(or was played already), so it was not sent on; "
                                f"it holds {shown or 'nothing'}", status=502, kind="http_request_denied")
    return False

"""Faults: the registry of rules in force, and the Plan it makes for one request.

The Faults registry keeps rules (see ``rules``, ``chaos``, ``replay``) in the
order they were added and turns one request into a Plan: the rules are tried
in that order, each matching rule with budget left fires and counts a hit
(under one lock, so counts are exact under concurrent requests), and the
first rule that answers the request itself ends the search. A rule that an
earlier unlimited one hides is refused when added. The handler carries the
Plan out; shaping the client side (throttle, truncate, stall, ...) is
``shaping``'s. Pure: no sockets, no clocks, no pytest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TypeVar

from ..http1.errors import ProxyError
from .chaos import Chaos, ChaosChoice, Outcome
from .replay import Replay
from .rules import (
    Close,
    CorruptChunk,
    Delay,
    Direction,
    DnsError,
    Exchange,
    Fail,
    FirstByteDelay,
    Fragment,
    Match,
    Passthrough,
    PathMatcher,
    RefuseConnect,
    RequireAuth,
    Reset,
    Respond,
    Rule,
    Stall,
    Throttle,
    TlsFailure,
    Truncate,
)

R = TypeVar("R", bound=Rule)

__all__ = ["UNPLANNED", "Answer", "Exchange", "Faults", "Match", "PathMatcher", "Plan", "Request", "Shape"]


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
    intercepted: bool = False  # a CONNECT whose requests the proxy will see (and plan) one by one

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
    tls_failure: bool = False  # a tunnel: 200, then a fatal TLS alert to the client's ClientHello
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

    def add(self, rule: R) -> R:
        """Append a rule. Raises ValueError if an earlier rule leaves it nothing to match."""
        with self._lock:
            rule.number = self._added + 1
            for earlier in self._rules:
                if _shadows(earlier, rule):
                    raise ValueError(
                        f"fault rule {rule.describe()} can never fire: rule {earlier.describe()} "
                        "comes first, has no times= limit and matches every request it would; "
                        "give the earlier rule times=N, or narrow it")
            self._added += 1
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
        if self.strict and "passthrough" not in plan.fired and not request.intercepted:
            plan.fired.append(UNPLANNED)
            plan.error = ProxyError(f"strict mode: no rule answers {request.method} {request.url}, "
                                    "so it was not sent on", status=502, kind="http_request_denied")
        return plan


def _answered(plan: Plan) -> bool:
    return plan.error is not None or plan.close or plan.tls_failure or plan.answer is not None


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
    elif isinstance(rule, TlsFailure):
        plan.tls_failure = True
    elif isinstance(rule, Passthrough):
        pass  # fires (and counts) so that strict mode lets the request through
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
    if choice.outcome is Outcome.ERROR and choice.status is not None:
        plan.error = ProxyError(f"failure injected by chaos ({choice})", status=choice.status,
                                kind="proxy_internal_response")
    elif choice.outcome is Outcome.RESET:
        plan.shape.reset_after = 0
    elif choice.outcome is Outcome.TRUNCATE:
        plan.shape.truncate_after = 0


def _replay(rule: Replay, request: Request, plan: Plan) -> bool:
    if request.exchange is Exchange.TUNNEL:
        if rule.strict and not request.intercepted:  # nothing inside a blind tunnel can be replayed
            plan.fired.append(UNPLANNED)
            plan.error = ProxyError(f"CONNECT {request.host} is a blind tunnel, so the cassette "
                                    f"{rule.source} cannot answer what goes through it; "
                                    "call fwdproxy.intercept()",
                                    status=502, kind="http_request_denied")
        return False
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

"""RuleBook: the verbs a test uses to plan faults (``fwdproxy.fail(503, times=2)``).

Each verb builds one typed rule from ``faults`` and adds it to the proxy's
registry, where rules are tried in the order added; each takes ``times=``
(fire on the first N matching requests, then step aside) and the matchers
``method=``, ``host=`` (glob) and ``path=`` (exact, glob or compiled regex).
Bad arguments (``times=0``, a rule an earlier one hides) raise ValueError
at the call. This module knows nothing of pytest.
"""

from __future__ import annotations

import json as jsonlib
import random
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

from ..server.chaos import Chaos
from ..server.faults import Faults
from ..server.replay import Recorded, Replay
from ..server.rules import (
    Close,
    CorruptChunk,
    Delay,
    Direction,
    DnsError,
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
from .origins import Fields, fields_list

R = TypeVar("R", bound=Rule)


class RuleBook:
    """Fault verbs over a Faults registry; ``seed`` is what ``chaos(seed=None)`` uses."""

    def __init__(self, faults: Faults, seed: int | None = None) -> None:
        self.faults = faults
        self.seed = seed
        self.seeds_used: list[int] = []  # chaos seeds of this test, for its report

    # -- answers ------------------------------------------------------------------

    def respond(self, status: int = 200, body: bytes = b"", headers: Fields | None = None, *,
                json: Any = None, times: int | None = None, method: str | None = None,
                host: str | None = None, path: PathMatcher = None) -> Respond:
        """The proxy answers matching requests itself; the origin is never contacted.

        ``json=`` is a shortcut for a JSON body with its Content-Type.
        """
        fields = fields_list(headers)
        if json is not None:
            body = jsonlib.dumps(json).encode()
            fields.append(("Content-Type", "application/json"))
        return self._add(Respond(_match(method, host, path), times, status=status, body=body, headers=fields))

    def fail(self, status: int = 502, *, times: int | None = None, method: str | None = None,
             host: str | None = None, path: PathMatcher = None) -> Fail:
        """Matching requests get a proxy error page with ``status``."""
        return self._add(Fail(_match(method, host, path), times, status=status))

    def close(self, *, times: int | None = None, method: str | None = None, host: str | None = None,
              path: PathMatcher = None) -> Close:
        """Close the client connection without any response (requests and CONNECT)."""
        return self._add(Close(_match(method, host, path), times))

    def dns_error(self, host: str = "*", *, times: int | None = None, method: str | None = None,
                  path: PathMatcher = None) -> DnsError:
        """Answer as if ``host`` (a glob) did not resolve: 502 with ``Proxy-Status: ...; error=dns_error``."""
        return self._add(DnsError(_match(method, host, path), times))

    def tls_failure(self, host: str = "*", *, times: int | None = None) -> TlsFailure:
        """Open the tunnel to ``host`` (a glob), then fail the client's TLS handshake with a fatal alert."""
        return self._add(TlsFailure(_match("CONNECT", host, None), times))

    def refuse_connect(self, host: str = "*", status: int = 403, *,
                       times: int | None = None) -> RefuseConnect:
        """Answer CONNECT to ``host`` (a glob) with ``status`` instead of a tunnel."""
        return self._add(RefuseConnect(_match("CONNECT", host, None), times, status=status))

    def passthrough(self, *, times: int | None = None, method: str | None = None, host: str | None = None,
                    path: PathMatcher = None) -> Passthrough:
        """Let matching requests (and CONNECTs) reach their origin in strict mode, as planned."""
        return self._add(Passthrough(_match(method, host, path), times))

    # -- changes to the exchange --------------------------------------------------

    def delay(self, seconds: float, *, times: int | None = None, method: str | None = None,
              host: str | None = None, path: PathMatcher = None) -> Delay:
        """Wait ``seconds`` before forwarding (or tunnelling) matching requests."""
        return self._add(Delay(_match(method, host, path), times, seconds=seconds))

    def first_byte_delay(self, seconds: float, *, times: int | None = None, method: str | None = None,
                         host: str | None = None, path: PathMatcher = None) -> FirstByteDelay:
        """Forward at once, but hold the response's first byte for ``seconds``."""
        return self._add(FirstByteDelay(_match(method, host, path), times, seconds=seconds))

    def throttle(self, bytes_per_second: float, direction: Literal["down", "up", "both"] = "down", *,
                 times: int | None = None, method: str | None = None, host: str | None = None,
                 path: PathMatcher = None) -> Throttle:
        """Send responses (``down``), read request bodies (``up``) or both no faster than this."""
        return self._add(Throttle(_match(method, host, path), times, bytes_per_second=bytes_per_second,
                                  direction=Direction(direction)))

    def reset(self, after_bytes: int = 0, *, times: int | None = None, method: str | None = None,
              host: str | None = None, path: PathMatcher = None) -> Reset:
        """Reset the client connection (RST) after ``after_bytes`` bytes of the response, head included."""
        return self._add(Reset(_match(method, host, path), times, after_bytes=after_bytes))

    def truncate(self, after_bytes: int = 0, *, times: int | None = None, method: str | None = None,
                 host: str | None = None, path: PathMatcher = None) -> Truncate:
        """Send the head (promising the whole body) and ``after_bytes`` of the body, then close."""
        return self._add(Truncate(_match(method, host, path), times, after_bytes=after_bytes))

    def stall(self, seconds: float | None = None, *, times: int | None = None, method: str | None = None,
              host: str | None = None, path: PathMatcher = None) -> Stall:
        """Send the head, then nothing until the client gives up (or ``seconds``, or the proxy's timeout)."""
        return self._add(Stall(_match(method, host, path), times, seconds=seconds))

    def fragment(self, size: int = 1, *, times: int | None = None, method: str | None = None,
                 host: str | None = None, path: PathMatcher = None) -> Fragment:
        """Write the response in pieces of ``size`` bytes, each its own send."""
        return self._add(Fragment(_match(method, host, path), times, size=size))

    def corrupt_chunk(self, *, times: int | None = None, method: str | None = None, host: str | None = None,
                      path: PathMatcher = None) -> CorruptChunk:
        """Damage the first piece of the body: a chunk size that is not hex (chunked), else a flipped byte."""
        return self._add(CorruptChunk(_match(method, host, path), times))

    def require_auth(self, user: str, password: str, *, times: int | None = None, method: str | None = None,
                     host: str | None = None, path: PathMatcher = None) -> RequireAuth:
        """407 unless the request carries Proxy-Authorization: Basic for user:password."""
        return self._add(RequireAuth(_match(method, host, path), times, user=user, password=password))

    # -- chance and recordings ------------------------------------------------------

    def chaos(self, seed: int | None = None, *, error_rate: float = 0.0,
              statuses: Iterable[int] = (500, 502, 503, 504), latency: tuple[float, float] | None = None,
              reset_rate: float = 0.0, truncate_rate: float = 0.0, times: int | None = None,
              method: str | None = None, host: str | None = None, path: PathMatcher = None) -> Chaos:
        """Random faults, the same for the same seed: each choice depends only on the seed and
        on how many matching requests for the same route (method, host, path) came before.

        ``seed=None`` takes ``--fwdproxy-seed``, or a fresh seed; a failing test's report prints it.
        """
        if seed is None:
            seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**32)
        self.seeds_used.append(seed)
        return self._add(Chaos(_match(method, host, path), times, seed=seed, error_rate=error_rate,
                               statuses=tuple(statuses), latency=latency, reset_rate=reset_rate,
                               truncate_rate=truncate_rate))

    def replay_entries(self, entries: list[Recorded], source: str, *, match_body: bool = True,
                       strict: bool = True) -> Replay:
        """Answer from recorded exchanges (see cassette.py for reading them from a HAR file)."""
        return self._add(Replay(Match(), None, entries=entries, source=source, match_body=match_body,
                                strict=strict))

    # -- checks -----------------------------------------------------------------------

    def strict(self, on: bool = True) -> None:
        """Refuse (502) every request no rule answers; each goes to ``unplanned``."""
        self.faults.strict = on

    def assert_all_rules_used(self) -> None:
        """Fail, naming them, if some rules fired on fewer requests than planned (once, or ``times``)."""
        unused = self.faults.unused()
        if unused:
            lines = "\n".join(f"  {rule.describe()}: fired {rule.hits} time{'s' * (rule.hits != 1)}"
                              for rule in unused)
            raise AssertionError(f"{len(unused)} fault rule{'s' * (len(unused) > 1)} not used as planned:\n"
                                 f"{lines}")

    def _add(self, rule: R) -> R:
        self.faults.add(rule)
        return rule


def _match(method: str | None, host: str | None, path: PathMatcher) -> Match:
    return Match(method=method, host=host, path=path)

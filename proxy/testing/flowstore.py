"""FlowStore: the flows a test produced, queries over them, and failures that say what was seen.

This module owns collecting finished Flows (the store is a FlowLog sink),
selecting them with the same keyword matchers as fault rules, waiting for
flows that finish later than the client's last read (a tunnel ends when the
client closes it; a forwarded exchange is recorded just after its last byte
went out), and rendering them as a short table. It knows nothing of pytest
or sockets: an unmet expectation is a plain AssertionError listing the flows.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from ..record.flows import Flow
from ..server.rules import Match, PathMatcher
from .flowassert import MISSING, Expected, label, near_misses
from .origins import Fields


@dataclass(frozen=True)
class FlowQuery:
    """Which flows a query selects; None matches anything (path: exact, glob or compiled regex)."""

    method: str | None = None
    host: str | None = None
    path: PathMatcher = None
    port: int | None = None
    status: int | None = None
    kind: str | None = None
    url: str | None = None  # a glob over Flow.url

    def __call__(self, flow: Flow) -> bool:
        if self.kind is not None and flow.kind != self.kind:
            return False
        if self.status is not None and flow.status != self.status:
            return False
        if self.port is not None and flow.port != self.port:
            return False
        if self.url is not None and not fnmatch.fnmatchcase(flow.url, self.url):
            return False
        if self.path is not None and flow.kind == "tunnel":
            return False  # a tunnel has no path: a path matcher never selects one
        return Match(self.method, self.host, self.path).matches(flow.method, flow.host, flow.path)


# How long a query waits for exchanges in progress to be recorded before it looks.
SETTLE = 1.0


class FlowMatch(TypedDict, total=False):
    """The keyword matchers of FlowStore's queries (see FlowQuery)."""

    method: str | None
    host: str | None
    path: PathMatcher
    port: int | None
    status: int | None
    kind: str | None
    url: str | None
    finished: bool | None  # False: tunnels still open; True: flows already recorded


class FlowStore:
    """The flows of one test, in the order they started; thread-safe, cleared between tests.

    A flow is recorded when its exchange ends. A tunnel ends only when the
    client closes it, which many clients put off until garbage collection, so
    tunnels are also seen as they open (``opened``): queries find them at
    once, with status 200 and byte counts that stay 0 until they close.
    """

    def __init__(self, label: str = "fwdproxy", busy: Callable[[], bool] | None = None) -> None:
        self.label = label
        # Says whether an exchange is in progress: the client has its response a moment
        # before the proxy records the flow, so queries first let those finish.
        self._busy = busy or (lambda: False)
        self._finished: list[Flow] = []
        self._open: list[Flow] = []
        self._since = time.time()
        self._changed = threading.Condition()

    def opened(self, flow: Flow) -> None:
        """A tunnel is established; its flow is recorded again when it ends."""
        with self._changed:
            if flow.started >= self._since:
                self._open.append(flow)
                self._changed.notify_all()

    def record(self, flow: Flow) -> None:
        """The sink: keep a finished flow unless it began before the last clear()."""
        with self._changed:
            # A tunnel or keep-alive exchange left over from an earlier test belongs to that test.
            if flow.started >= self._since:
                self._open = [f for f in self._open if f is not flow]
                self._finished.append(flow)
            self._changed.notify_all()  # also wakes _settle

    def clear(self) -> None:
        with self._changed:
            self._finished, self._open = [], []
            self._since = time.time()

    @property
    def since(self) -> float:
        """When the store was last cleared (time.time()); older flows belong to an earlier test."""
        return self._since

    def is_open(self, flow: Flow) -> bool:
        """True for a tunnel not yet closed."""
        with self._changed:
            return any(f is flow for f in self._open)

    def all(self) -> list[Flow]:
        """The flows so far, finished ones and open tunnels, by start time.

        Exchanges in progress are waited for (up to SETTLE seconds) first.
        """
        with self._changed:
            self._settle()
            return self._select(FlowQuery(), None)

    def filter(self, **match: Unpack[FlowMatch]) -> list[Flow]:
        """The flows so far that match every keyword given (after in-progress ones finish, as all())."""
        query, finished = _query(match)
        with self._changed:
            self._settle()
            return self._select(query, finished)

    def one(self, *, timeout: float = 2.0, **match: Unpack[FlowMatch]) -> Flow:
        """The one flow matching; waits up to ``timeout`` for it, fails if none or several."""
        found = self._wait(match, 1, timeout)
        if len(found) != 1:
            waited = f" within {timeout:g}s" if not found else ""
            raise AssertionError(self.describe(f"expected exactly one flow matching {_show(match)}, "
                                               f"found {len(found)}{waited}"))
        return found[0]

    def wait_for(self, *, timeout: float = 5.0, **match: Unpack[FlowMatch]) -> Flow:
        """The first flow matching, waiting up to ``timeout`` for it (for asynchronous clients)."""
        found = self._wait(match, 1, timeout)
        if not found:
            raise AssertionError(self.describe(f"no flow matching {_show(match)} within {timeout:g}s"))
        return found[0]

    def wait_for_count(self, count: int, *, timeout: float = 5.0, **match: Unpack[FlowMatch]) -> list[Flow]:
        """Waits until at least ``count`` flows match; returns all that do."""
        found = self._wait(match, count, timeout)
        if len(found) < count:
            raise AssertionError(self.describe(f"expected {count} flows matching {_show(match)} within "
                                               f"{timeout:g}s, found {len(found)}"))
        return found

    def _wait(self, match: FlowMatch, count: int, timeout: float) -> list[Flow]:
        query, finished = _query(match)
        with self._changed:
            self._settle(min(timeout, SETTLE))
            self._changed.wait_for(lambda: len(self._select(query, finished)) >= count, timeout)
            return self._select(query, finished)

    def _settle(self, timeout: float | None = None) -> None:
        """Let exchanges in progress finish and be recorded (lock held); every record wakes us."""
        self._changed.wait_for(lambda: not self._busy(), SETTLE if timeout is None else timeout)

    def _select(self, query: FlowQuery, finished: bool | None) -> list[Flow]:
        """Matching flows by start time (lock held)."""
        pools = {None: self._finished + self._open, True: self._finished, False: self._open}[finished]
        return sorted((flow for flow in pools if query(flow)), key=lambda flow: flow.started)

    def assert_called(self, *, method: str | None = None, url: str | None = None, host: str | None = None,
                      path: PathMatcher = None, times: int | None = None, body: bytes | str | None = None,
                      json: Any = MISSING, headers: Fields | None = None, timeout: float = 0.0) -> list[Flow]:
        """The flows matching every expectation given; fails unless there are ``times`` of them
        (or at least one), listing the flows that came closest and how each differs.

        ``timeout`` waits that long for enough matching flows (for clients still running).
        """
        expected = Expected(method, url, host, path, body, json, headers)
        if timeout > 0:
            with self._changed:
                self._changed.wait_for(lambda: sum(not expected.differences(flow) for flow in
                                                   self._select(FlowQuery(), None)) >= (times or 1), timeout)
        flows = self.all()
        found = [flow for flow in flows if not expected.differences(flow)]
        if (times is None and found) or len(found) == times:
            return found
        wanted = "at least once" if times is None else f"{times} time{'s' * (times != 1)}"
        headline = f"expected a call with {expected} {wanted}, found {len(found)}"
        lines = [f"  {label(flow)}" for flow in found] if found else near_misses(expected, flows)
        if not flows:
            raise AssertionError(f"{headline}; {self.label} saw no flows in this test")
        title = "matching" if found else "closest"
        raise AssertionError(f"{headline}; {title} of the {len(flows)} flows {self.label} saw:\n"
                             + "\n".join(lines))

    def assert_not_called(self, **expected: Any) -> None:
        """Fails, listing them, if any flow matches."""
        self.assert_called(times=0, **expected)

    @property
    def upstream_opened(self) -> int:
        """Forwarded exchanges that needed a new connection to their origin."""
        return sum(flow.upstream_reused is False for flow in self.all())

    @property
    def upstream_reused(self) -> int:
        """Forwarded exchanges that went over a kept-alive origin connection."""
        return sum(flow.upstream_reused is True for flow in self.all())

    def table(self) -> str:
        with self._changed:
            self._settle()
            flows, still_open = self._select(FlowQuery(), None), list(self._open)
        return flow_table(flows, still_open) if flows else "  (no flows)"

    def describe(self, headline: str) -> str:
        """A failure message: the headline, then every flow this store saw."""
        with self._changed:
            count = len(self._select(FlowQuery(), None))
        if not count:
            return f"{headline}; {self.label} saw no flows in this test"
        return f"{headline}; {self.label} saw {count} in this test:\n{self.table()}"

    def __len__(self) -> int:
        return len(self.all())

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.all())

    def __repr__(self) -> str:
        return f"<FlowStore {self.label} flows={len(self)}>"


def _query(match: FlowMatch) -> tuple[FlowQuery, bool | None]:
    fields = {name: value for name, value in match.items() if name != "finished"}
    return FlowQuery(**fields), match.get("finished")  # type: ignore[arg-type]


def _show(match: FlowMatch) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in match.items() if value is not None) or "anything"


_COLUMNS = ("kind", "method", "url or target", "status", "up", "down", "ms", "upstream", "notes")


def flow_table(flows: list[Flow], still_open: list[Flow] | None = None, indent: str = "  ") -> str:
    """Flows as an aligned plain-text table, one line each."""
    rows = [_COLUMNS, *(_row(flow, any(flow is f for f in still_open or ())) for flow in flows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    return "\n".join(indent + line for line in lines)


def _row(flow: Flow, still_open: bool) -> tuple[str, ...]:
    upstream = {True: "reused", False: "new", None: ""}[flow.upstream_reused]
    notes = ["open"] if still_open else []
    notes += [f"faults={','.join(flow.faults)}"] if flow.faults else []
    if flow.error:
        notes.append(f"error={flow.error!r}")
    return (flow.kind, flow.method, flow.url, str(flow.status or "-"), str(flow.bytes_up),
            str(flow.bytes_down), f"{flow.duration_ms:.1f}", upstream, " ".join(notes))

"""Replay: answers from recorded exchanges, each played once, in order.

A Replay rule holds Recorded answers (read from a HAR cassette by the testing
kit) and matches a request to the first unplayed one with the same method,
URL and, unless told otherwise, body. A request with nothing left to play is
refused as unplanned when the rule is strict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .rules import Exchange, Rule


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
    acts_on: ClassVar[frozenset[Exchange]] = frozenset(Exchange)  # a blind CONNECT is refused

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

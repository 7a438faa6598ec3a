"""Expected calls: does a flow match what a test expected, and if not, how does it differ?

``Expected`` holds what ``flows.assert_called(...)`` was given (method, URL or
host and path, body, JSON, header fields) and says, for any flow, which of
those it gets wrong, in words a failure message can show ("path differs from
/api/items"). The flows with the fewest differences are the near misses.
Pure: plain values in, strings out.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any

from ..record.flows import Flow
from ..server.rules import Match, PathMatcher
from .origins import Fields, fields_list

NEAR_MISSES = 3
MISSING = object()


@dataclass(frozen=True)
class Expected:
    """What a call must look like; None is anything (url: exact or glob; path: exact, glob or regex)."""

    method: str | None = None
    url: str | None = None
    host: str | None = None
    path: PathMatcher = None
    body: bytes | str | None = None
    json: Any = MISSING
    headers: Fields | None = None

    def differences(self, flow: Flow) -> list[str]:
        """What ``flow`` gets wrong, one phrase per expectation it misses."""
        found = []
        if self.method is not None and flow.method.upper() != self.method.upper():
            found.append(f"method differs from {self.method.upper()}")
        if self.url is not None and flow.url != self.url and not fnmatch.fnmatchcase(flow.url, self.url):
            found.append(f"url differs from {self.url}")
        if self.host is not None and not Match(host=self.host).matches("", flow.host, ""):
            found.append(f"host differs from {self.host}")
        if self.path is not None and (flow.kind == "tunnel" or
                                      not Match(path=self.path).matches("", "", flow.path)):
            shown = self.path.pattern if not isinstance(self.path, str) else self.path
            found.append(f"path differs from {shown}")
        found += self._body_differences(flow)
        for name, value in fields_list(self.headers):
            have = [v for n, v in flow.request_headers if n.lower() == name.lower()]
            if value not in have:
                found.append(f"header {name} is {have[0]!r}, not {value!r}" if have
                             else f"header {name} missing")
        return found

    def _body_differences(self, flow: Flow) -> list[str]:
        found = []
        if self.body is not None:
            want = self.body.encode() if isinstance(self.body, str) else self.body
            if flow.request_body != want:
                found.append(f"body {_short(flow.request_body)} differs from {_short(want)}")
        if self.json is not MISSING:
            try:
                have = json.loads(flow.request_body)
            except ValueError:
                found.append(f"body {_short(flow.request_body)} is not JSON")
            else:
                if have != self.json:
                    found.append(f"json {json.dumps(have)[:80]} differs from {json.dumps(self.json)[:80]}")
        return found

    def __str__(self) -> str:
        shown = [f"{name}={value!r}" for name, value in self.__dict__.items()
                 if value is not None and value is not MISSING]
        return ", ".join(shown) or "any request"


def _short(body: bytes) -> str:
    return repr(body[:60]) + ("..." if len(body) > 60 else "")


def label(flow: Flow) -> str:
    """A flow as a near-miss line names it: method and path (or tunnel target)."""
    return f"{flow.method} {flow.path if flow.kind == 'http' and flow.path else flow.url}"


def near_misses(expected: Expected, flows: list[Flow], limit: int = NEAR_MISSES) -> list[str]:
    """Lines for the flows that came closest, fewest differences first."""
    scored = sorted(((expected.differences(flow), i) for i, flow in enumerate(flows)),
                    key=lambda pair: len(pair[0]))
    return [f"  {label(flows[i])}: {'; '.join(diffs)}" for diffs, i in scored[:limit] if diffs]

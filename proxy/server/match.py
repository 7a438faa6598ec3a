"""Request matchers: which requests a fault or a rewrite rule applies to.

One syntax for both: a method, a host glob (case-insensitive) and a path that
is exact, a glob (matched against the path without its query) or a compiled
regex (searched in the path with its query). Nothing given matches anything.
Pure string work.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

PathMatcher = str | re.Pattern[str] | None


@dataclass(frozen=True)
class Match:
    """Which requests a rule applies to; None matches anything."""

    method: str | None = None
    host: str | None = None
    path: PathMatcher = None

    def matches(self, method: str, host: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.host is not None and not fnmatch.fnmatchcase(host.lower(), self.host.lower()):
            return False
        return self.path is None or path_matches(self.path, path)


def path_matches(matcher: str | re.Pattern[str], path: str) -> bool:
    if isinstance(matcher, re.Pattern):
        return matcher.search(path) is not None
    bare = path.split("?", 1)[0]
    return matcher in (path, bare) or fnmatch.fnmatchcase(bare, matcher)

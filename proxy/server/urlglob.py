"""URL globs for rewrite rules: ``[SCHEME://]HOST[:PORT][/PATH]``, matched as fault rules match.

A URL glob is the fault rules' Match (a host glob, and a path that is exact,
or a glob on the path without its query) plus a scheme and a port, so rules
given as flags match the way the pytest plugin's faults do. Pure string work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .rules import Match

_HOST_GLOB = re.compile(r"[A-Za-z0-9.*?_~\-\[\]:]+")
_WILDCARDS = "*?["


@dataclass(frozen=True)
class UrlGlob:
    """Which URLs a rule applies to."""

    text: str
    scheme: str | None  # None: any
    port: int | None  # None: any
    match: Match
    path_prefix: str  # the path glob's literal start, replaced by map-remote

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if self.scheme is not None and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        return self.match.matches("GET", host, path)


def parse_glob(text: str) -> UrlGlob:
    scheme: str | None = None
    rest = text.strip()
    if "://" in rest:
        scheme_text, _, rest = rest.partition("://")
        if scheme_text.lower() not in ("http", "https", "*"):
            raise ValueError(f"scheme {scheme_text!r} is not http, https or *")
        scheme = None if scheme_text == "*" else scheme_text.lower()
    slash = rest.find("/")
    authority, path = (rest, None) if slash == -1 else (rest[:slash], rest[slash:])
    host, port = _glob_host_port(authority)
    prefix = ""
    if path is not None:
        cut = min([path.find(c) for c in _WILDCARDS if c in path] or [len(path)])
        prefix = path[:cut]
    return UrlGlob(text, scheme, port, Match(host=None if host == "*" else host,
                                             path=None if path in (None, "/*") else path), prefix)


def _glob_host_port(authority: str) -> tuple[str, int | None]:
    port_text = ""
    if authority.startswith("[") and "]" in authority and not authority.startswith("[]"):
        end = authority.index("]")
        host, tail = authority[1:end], authority[end + 1:]
        if tail and not tail.startswith(":"):
            raise ValueError(f"malformed host {authority!r}")
        port_text = tail[1:]
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
    else:
        host = authority
    if not host or not _HOST_GLOB.fullmatch(host):
        raise ValueError(f"invalid host pattern {authority!r}")
    if port_text in ("", "*"):
        return host.lower(), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port {port_text!r}")
    return host.lower(), int(port_text)

"""Request targets: absolute-form URLs and CONNECT authorities (RFC 9112 section 3.2).

Pure string work, no sockets, no DNS. Parsing is strict on purpose: a proxy
that reads a target differently from the origin behind it is a proxy that can
be steered somewhere it was not told to go, so anything unusual is refused
with a 400 rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import BadRequest

DEFAULT_PORTS = {"http": 80, "https": 443}

# RFC 3986 reg-name, narrowed to what DNS names use in practice (underscores
# appear in real host names). Percent-encoded and sub-delim characters are
# refused: origins and resolvers disagree about them.
_REG_NAME = re.compile(r"[A-Za-z0-9_~-]+(?:\.[A-Za-z0-9_~-]+)*\.?")
_PORT = re.compile(r"[0-9]{1,5}")
_USERINFO = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:]*")


@dataclass(frozen=True)
class Origin:
    """Where a request goes: scheme, host (lowercase, no brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """host[:port] as it belongs in a Host header (port left out when default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


def parse_absolute(target: str, method: str = "GET") -> tuple[Origin, str]:
    """Split an absolute-form target into its origin and origin-form path.

    The path and query pass through byte for byte (no decoding, no
    normalisation); userinfo and fragment are dropped (RFC 9110 section 4.2.4:
    userinfo is deprecated and must not be forwarded as credentials).
    """
    scheme, sep, rest = target.partition("://")
    if not sep or not scheme:
        raise BadRequest(f"request target is not an absolute URL: {_short(target)}")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadRequest(f"unsupported scheme {scheme!r}: this proxy forwards http:// and https:// only")
    end = len(rest)
    for delim in "/?#":
        found = rest.find(delim)
        if found != -1:
            end = min(end, found)
    authority, path = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    if at and not _USERINFO.fullmatch(userinfo):
        # A backslash or other stray character here is read as a delimiter by
        # WHATWG parsers and as userinfo by RFC 3986 ones: refuse the ambiguity.
        raise BadRequest("invalid characters before '@' in the target's authority")
    host, port = _split_host_port(hostport if at else authority, DEFAULT_PORTS[scheme])
    path = path.partition("#")[0]
    if not path.startswith("/"):
        # RFC 9112 section 3.2.1 and 3.2.4: an empty path is "/", or "*" for OPTIONS.
        path = ("*" if method == "OPTIONS" and not path else "/") + path
    return Origin(scheme, host, port), path


def parse_authority(target: str) -> tuple[str, int]:
    """Parse a CONNECT target, authority-form host:port (RFC 9112 section 3.2.3)."""
    if "@" in target or "/" in target:
        raise BadRequest(f"CONNECT target must be host:port, not {_short(target)}")
    if target.count(":") > 1 and not target.startswith("["):
        # Python 3.11's set_tunnel() sends IPv6 literals unbracketed ("::1:443").
        # A CONNECT target always ends in a port, so the last colon is unambiguous.
        literal, _, port = target.rpartition(":")
        return _split_host_port(f"[{literal}]:{port}", None)
    return _split_host_port(target, None)


def _split_host_port(hostport: str, default_port: int | None) -> tuple[str, int]:
    if hostport.startswith("["):
        literal, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise BadRequest(f"malformed IPv6 literal in {_short(hostport)}")
        host, port_text = _ipv6(literal), tail[1:] if tail else None
    else:
        name, colon, port_text_ = hostport.partition(":")
        host, port_text = _reg_name_or_ipv4(name), port_text_ if colon else None
    if port_text is None or port_text == "":
        if default_port is None:
            raise BadRequest(f"target {_short(hostport)} has no port")
        return host, default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"invalid port {_short(port_text)!r}")
    return host, int(port_text)


def _ipv6(literal: str) -> str:
    if "%" in literal:
        raise BadRequest("IPv6 zone identifiers are not accepted in targets")
    try:
        return str(ipaddress.IPv6Address(literal))
    except ValueError:
        raise BadRequest(f"invalid IPv6 address {_short(literal)!r}") from None


def _reg_name_or_ipv4(name: str) -> str:
    if not name:
        raise BadRequest("target has an empty host")
    if len(name) > 253 or not _REG_NAME.fullmatch(name):
        raise BadRequest(f"invalid host name {_short(name)!r}")
    return name.lower()


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

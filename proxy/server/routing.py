"""Routing: whether a target is reached directly or through the parent proxy.

This module owns the parent proxy's settings (``--upstream-proxy``), the
bypass list (``--upstream-bypass``, NO_PROXY syntax plus CIDRs) and the one
decision made per target. It is pure: no sockets, no DNS, and no environment
variables. The proxy never takes its own parent from HTTP_PROXY/HTTPS_PROXY:
users often export those pointing at this very proxy.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from ..config import ConfigError, Network


@dataclass(frozen=True)
class Parent:
    """A parent (upstream) HTTP proxy; credentials are sent to it as Basic."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization value for the parent, or None without credentials."""
        if self.user is None:
            return None
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def __str__(self) -> str:  # never shows the credentials: this goes in logs and errors
        return f"parent proxy {self.authority}"

    def __repr__(self) -> str:
        return f"<Parent http://{self.authority}{' (with credentials)' if self.user else ''}>"


def parse_parent(url: str) -> Parent:
    """``http://[user:pass@]host:port`` -> Parent; anything else is a ConfigError naming the problem."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise ConfigError(f"upstream proxy {url!r} must be a URL: http://[user:pass@]host:port")
    if scheme.lower() != "http":
        raise ConfigError(f"upstream proxy scheme {scheme!r} is not supported; use http://")
    authority, slash, path = rest.partition("/")
    if (slash and path) or "?" in authority or "#" in authority:
        raise ConfigError(f"upstream proxy {_hide(url)!r} must have no path: http://host:port")
    userinfo, at, hostport = authority.rpartition("@")
    user = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        if not colon or not name:
            raise ConfigError(f"upstream proxy credentials must be user:password@ in {_hide(url)!r}")
        user, password = unquote(name), unquote(secret)
    host, port = _host_port(hostport, url)
    return Parent(host, port, user, password)


def _host_port(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        valid = bool(bracket) and _is_ip(host)
    else:
        host, _, port_text = hostport.rpartition(":")
        valid = bool(host) and ":" not in host
    if not valid or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"upstream proxy {_hide(url)!r} needs a host and a port: http://host:port")
    return host.lower(), int(port_text)


def _hide(url: str) -> str:
    """The URL with its password masked, for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hostport}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class BypassEntry:
    """One NO_PROXY item: every host (``*``), a domain and its subdomains, or a network; maybe a port."""

    domain: str | None = None  # "example.com" matches it and *.example.com; "" matches everything
    network: Network | None = None
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            address = _address(host)
            return address is not None and address in self.network
        assert self.domain is not None
        return self.domain == "" or host == self.domain or host.endswith("." + self.domain)

    def __str__(self) -> str:
        where = str(self.network) if self.network is not None else (self.domain or "*")
        return where if self.port is None else f"{where}:{self.port}"


def parse_bypass(items: str | Iterable[str]) -> tuple[BypassEntry, ...]:
    """``"localhost,.corp.example,10.0.0.0/8,[::1]:8080,*"`` -> entries (curl's NO_PROXY rules)."""
    texts = items.split(",") if isinstance(items, str) else [p for i in items for p in i.split(",")]
    return tuple(_bypass_entry(text.strip()) for text in texts if text.strip())


def _bypass_entry(text: str) -> BypassEntry:
    if text == "*":
        return BypassEntry(domain="")
    if "/" in text:
        try:
            return BypassEntry(network=ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"bypass entry {text!r} is not a valid CIDR") from None
    host, port = text, None
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port = _bypass_port(tail[1:], text) if tail else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _bypass_port(port_text, text)
    if _is_ip(host):
        return BypassEntry(network=ipaddress.ip_network(host), port=port)
    domain = host.lower().lstrip("*").lstrip(".")  # ".example.com" and "*.example.com" as curl reads them
    if not domain or any(c in domain for c in "*?[]/@ "):
        raise ConfigError(f"bypass entry {text!r} is not a host, domain, address or CIDR")
    return BypassEntry(domain=domain, port=port)


def _bypass_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"bypass entry {entry!r} has an invalid port")
    return int(text)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class RouteRule:
    """Per-host routing: targets matching ``entries`` go through ``parent``, or direct if it is None."""

    entries: tuple[BypassEntry, ...]
    parent: Parent | None
    text: str

    def matches(self, host: str, port: int) -> bool:
        return any(entry.matches(host, port) for entry in self.entries)

    def __str__(self) -> str:
        return self.text


def parse_route_rule(text: str) -> RouteRule:
    """``"LIST=http://[user:pass@]host:port"`` or ``"LIST=direct"``; LIST in NO_PROXY syntax."""
    hosts, sep, where = text.partition("=")
    if not sep or not hosts.strip() or not where.strip():
        raise ConfigError(f"route {_hide(text)!r} must be HOSTS=http://host:port or HOSTS=direct")
    parent = None if where.strip().lower() == "direct" else parse_parent(where)
    return RouteRule(parse_bypass(hosts), parent, _hide(text))


@dataclass(frozen=True)
class Route:
    """Where a target goes: ``parent`` None means direct; ``reason`` says why, for logs and tests."""

    parent: Parent | None
    reason: str

    def __str__(self) -> str:
        return f"via {self.parent}" if self.parent else "direct"


def route(host: str, port: int, parent: Parent | None, bypass: tuple[BypassEntry, ...] = (),
          rules: tuple[RouteRule, ...] = ()) -> Route:
    """Decide direct or via a parent for ``host:port``, in guard clauses (names are never resolved).

    The first per-host rule that matches wins; then the bypass list; then the default parent.
    """
    host = host.lower().rstrip(".")
    for rule in rules:
        if rule.matches(host, port):
            return Route(rule.parent, f"{host} matches route {rule}")
    if parent is None:
        return Route(None, "no upstream proxy configured")
    for entry in bypass:
        if entry.matches(host, port):
            return Route(None, f"{host} matches bypass entry {entry}")
    return Route(parent, f"{host} is not in the bypass list")


@dataclass(frozen=True)
class Router:
    """The routing settings of one proxy instance, and the decision as a method."""

    parent: Parent | None = None
    bypass: tuple[BypassEntry, ...] = ()
    rules: tuple[RouteRule, ...] = ()

    @classmethod
    def from_settings(cls, upstream: str | None, bypass: Iterable[str] = (),
                      routes: Iterable[str] = ()) -> Router:
        return cls(parse_parent(upstream) if upstream else None, parse_bypass(list(bypass)),
                   tuple(parse_route_rule(text) for text in routes))

    @property
    def parents(self) -> tuple[Parent, ...]:
        """Every parent a target may be sent to (the default one first)."""
        found = [self.parent] if self.parent else []
        found += [rule.parent for rule in self.rules if rule.parent and rule.parent not in found]
        return tuple(found)

    def route(self, host: str, port: int) -> Route:
        return route(host, port, self.parent, self.bypass, self.rules)

    def parent_for(self, host: str, port: int) -> Parent | None:
        if self.parent is None and not self.rules:  # the common case: two attribute reads
            return None
        return self.route(host, port).parent

    def parent_at(self, host: str, port: int) -> Parent | None:
        """The parent listening at host:port, if it is one of ours."""
        return next((p for p in self.parents if (p.host, p.port) == (host, port)), None)

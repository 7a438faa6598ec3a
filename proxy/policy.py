"""Who may use the proxy and where it may go; pure decisions on plain values.

This module owns access control: client networks, Basic proxy credentials
(compared in constant time), host allow/deny rules, CONNECT port rules, the
private-address rule and the open-proxy guard. It never opens a socket:
``connect.py`` applies the address rules to the address actually connected to.
Every refusal is a ProxyError with its status and a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import AuthRequired, Forbidden

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NETWORKS: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                          ipaddress.ip_network("::1/128"))
# Cloud metadata services live on link-local addresses already; these are the
# ones outside that range.
_METADATA = (ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200"))


class ConfigError(ValueError):
    """A configuration that must not start (the message says how to proceed)."""


def parse_networks(text: str | Iterable[str]) -> tuple[Network, ...]:
    """``"10.0.0.0/8, ::1"`` -> networks; bare addresses become /32 or /128."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())
    except ValueError as exc:
        raise ConfigError(f"invalid network: {exc}") from None


def parse_ports(text: str) -> frozenset[int]:
    """``"443,8443,9000-9100"`` -> the set of ports."""
    ports: set[int] = set()
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ConfigError(f"invalid port or range {item.strip()!r}") from None
        if not 0 < first <= last < 65536:
            raise ConfigError(f"invalid port or range {item.strip()!r}")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def _as_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def client_allowed(client_ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether a client address is in one of the networks (cached: parsing costs per connection)."""
    address = _as_address(client_ip)
    return address is not None and any(address in net for net in networks)


def check_credentials(header: str | None, credentials: Sequence[tuple[str, str]]) -> str:
    """The user named by a valid ``Proxy-Authorization: Basic`` value; 407 otherwise.

    Every configured credential is compared, each with hmac.compare_digest, so
    the time taken says nothing about which user or how much of a password matched.
    """
    if header is None:
        raise AuthRequired("proxy authentication required")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthRequired("proxy authentication must use the Basic scheme")
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthRequired("malformed Basic credentials") from None
    matched = None
    for user, password in credentials:
        expected = f"{user}:{password}".encode()
        if hmac.compare_digest(decoded, expected):
            matched = user
    if matched is None:
        raise AuthRequired("wrong proxy credentials")
    return matched


@dataclass(frozen=True)
class HostRules:
    """Allow/deny rules on targets: globs on names, networks on addresses. Deny wins."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def check(self, host: str) -> None:
        if self.deny and _matches(host, self.deny):
            raise Forbidden(f"access to {host} is denied by this proxy's rules")
        if self.allow and not _matches(host, self.allow):
            raise Forbidden(f"{host} is not in this proxy's allowed hosts")


_HOST_GLOB = re.compile(r"[A-Za-z0-9*?.\[\]!_-]+")


def check_host_pattern(pattern: str) -> None:
    """A host rule must be a CIDR or address, or a glob of host-name characters (``*.example.com``)."""
    if "/" in pattern or _as_address(pattern) is not None:
        try:
            ipaddress.ip_network(pattern, strict=False)
        except ValueError as exc:
            raise ConfigError(f"invalid network in host rule {pattern!r}: {exc}") from None
    elif not _HOST_GLOB.fullmatch(pattern) or pattern.count("[") != pattern.count("]"):
        raise ConfigError(f"invalid host pattern {pattern!r}: expected a host glob such as "
                          "*.example.com, or a CIDR such as 10.0.0.0/8")


def _matches(host: str, patterns: Iterable[str]) -> bool:
    address = _as_address(host)
    for pattern in patterns:
        if "/" in pattern or _as_address(pattern) is not None:
            if address is not None and address in ipaddress.ip_network(pattern, strict=False):
                return True
        elif address is None and fnmatch.fnmatchcase(host.lower().rstrip("."), pattern.lower()):
            return True
    return False


def check_connect_port(port: int, allowed: frozenset[int] | None) -> None:
    if allowed is not None and port not in allowed:
        raise Forbidden(f"CONNECT to port {port} is not allowed")


def is_private(address: Address) -> bool:
    """Loopback, private, link-local (incl. 169.254.169.254), unspecified, reserved, multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local
            or address.is_unspecified or address.is_reserved or address.is_multicast
            or address in _METADATA)


def check_exposure(host: str, allow_from: Sequence[Network], auth: bool) -> str | None:
    """Refuse to become an accidental open proxy; returns a warning to print, if any."""
    bound = _as_address(host)
    loopback_only = host == "localhost" or (bound is not None and bound.is_loopback)
    admits_others = any(not (net.network_address.is_loopback and net.broadcast_address.is_loopback)
                        for net in allow_from)
    if loopback_only or auth:
        return None
    if not admits_others:
        raise ConfigError(
            f"refusing to listen on {host} as an open proxy: only loopback clients would be "
            "allowed anyway. Say who may use it with --allow-from CIDR (e.g. --allow-from "
            "10.0.0.0/8) and/or require credentials with --auth user:password")
    if any(net.prefixlen == 0 for net in allow_from):
        return (f"warning: listening on {host} with --allow-from admitting every address and no "
                "--auth: this is an open proxy to anyone who can reach it")
    return None

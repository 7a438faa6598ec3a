"""Who may use the proxy and where it may go; pure decisions on plain values.

This module owns access control: client networks, Basic proxy credentials
(compared in constant time), host allow/deny rules, CONNECT port rules, the
private-address rule. It never opens a socket:
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import Address, Network, parse_address
from ..http1.errors import AuthRequired, Forbidden

# Cloud metadata services live on link-local addresses already; these are the
# ones outside that range.
_METADATA = (ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200"))


@functools.lru_cache(maxsize=4096)
def client_allowed(client_ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether a client address is in one of the networks (cached: parsing costs per connection)."""
    address = parse_address(client_ip)
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


def _matches(host: str, patterns: Iterable[str]) -> bool:
    address = parse_address(host)
    for pattern in patterns:
        if "/" in pattern or parse_address(pattern) is not None:
            if address is not None and address in ipaddress.ip_network(pattern, strict=False):
                return True
        elif address is None and fnmatch.fnmatchcase(host.lower().rstrip("."), pattern.lower()):
            return True
    return False


def check_connect_port(port: int, allowed: frozenset[int] | None) -> None:
    if allowed is not None and port not in allowed:
        raise Forbidden(f"CONNECT to port {port} is not allowed (--connect-ports)")


def is_private(address: Address) -> bool:
    """Loopback, private, link-local (incl. 169.254.169.254), unspecified, reserved, multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local
            or address.is_unspecified or address.is_reserved or address.is_multicast
            or address in _METADATA)

"""Config: every setting of a proxy instance, as one frozen, validated value.

This module owns defaults and validation, including the network rules a
setting is parsed with and the open-proxy guard. It knows nothing of sockets or
argparse: the CLI turns flags into a Config, tests build one directly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NETWORKS: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                          ipaddress.ip_network("::1/128"))

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Config:
    """Settings of one proxy instance; times are in seconds."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Upstream: waiting for an origin to accept, then for each read from it.
    connect_timeout: float = 10.0
    timeout: float = 60.0
    # Client side: how long a kept-alive client may sit between requests.
    client_idle_timeout: float = 60.0
    # A CONNECT tunnel with no bytes either way for this long is closed.
    tunnel_idle_timeout: float = 600.0
    # Upstream pool: idle connections kept per origin, and for how long.
    pool_max_idle_per_origin: int = 256
    pool_idle_timeout: float = 30.0
    pool_max_idle_total: int = 1024  # over all origins
    # How long SIGINT/SIGTERM waits for in-flight exchanges.
    shutdown_grace: float = 5.0
    log_level: str = "info"
    log_format: str = "text"
    # Access control (see server/policy.py). Only loopback clients by default.
    allow_from: tuple[Network, ...] = LOOPBACK_NETWORKS
    auth: tuple[tuple[str, str], ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    # None: any port while only loopback clients are admitted, else 443 only.
    connect_ports: frozenset[int] | None = None
    deny_private: bool = False
    # Limits on what a client may send, and how slowly.
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_header_count: int = 100
    max_body: int | None = None
    max_clients: int = 2048
    header_timeout: float = 10.0
    # Flow records keep plain HTTP bodies up to this many bytes each way (0: none).
    capture_bodies: int = 0
    # Upgrade protocols forwarded on plain requests (RFC 9110 section 7.8); others are stripped.
    upgrade_protocols: tuple[str, ...] = ("websocket",)
    # Recording (see proxy/record/): a SQLite flow store, a HAR file written at stop,
    # JSON lines per flow ("-": stdout); secrets kept in recordings only if asked.
    record: str = ""
    har: str = ""
    flows_jsonl: str = ""
    record_secrets: bool = False
    # The traffic page (proxy/ui/) on its own port, over the --record store (a temporary one without it).
    ui: bool = False
    ui_host: str = "127.0.0.1"
    ui_port: int = 8081
    # Processes sharing the listening port (SO_REUSEPORT); the CLI forks them.
    workers: int = 1
    # Threads per process computing at once (server/scheduler.py); more start for work that waits.
    threads: int = 1
    # Routing (routing.py): a parent proxy URL, and targets that go direct anyway.
    upstream_proxy: str | None = None
    upstream_bypass: tuple[str, ...] = ()
    # Per-host routes, first match wins: "HOSTS=http://parent:port" or "HOSTS=direct".
    upstream_routes: tuple[str, ...] = ()
    # Rewrite rules (rewrite.py) as (kind, text) pairs, e.g. ("block", "*.tracker.test").
    rewrite_rules: tuple[tuple[str, str], ...] = ()
    # GET /metrics (Prometheus): counted from finished flows; readable by these
    # networks without credentials, and by any client with valid --auth ones.
    metrics: bool = True
    metrics_allow_from: tuple[Network, ...] = LOOPBACK_NETWORKS
    # TLS interception (intercept.py): off unless asked; targets by glob/CIDR, no-intercept wins.
    intercept: bool = False
    intercept_hosts: tuple[str, ...] = ()
    no_intercept_hosts: tuple[str, ...] = ()
    ca_dir: str | None = None  # None: tls.ca.default_ca_dir()
    # Seconds a client may take to send its first bytes in a tunnel before it is relayed blindly.
    intercept_wait: float = 1.0
    # TLS toward origins (intercepted and https:// absolute-form requests).
    upstream_ca: tuple[str, ...] = ()
    upstream_insecure: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        for field in ("connect_timeout", "timeout", "client_idle_timeout", "header_timeout",
                      "tunnel_idle_timeout", "pool_idle_timeout", "intercept_wait"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must not be negative")
        if self.pool_max_idle_per_origin < 0 or self.pool_max_idle_total < 0:
            raise ValueError("pool_max_idle_per_origin and pool_max_idle_total must not be negative")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        for field in ("max_request_line", "max_header_bytes", "max_header_count", "max_clients", "workers",
                      "threads"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        if self.capture_bodies < 0:
            raise ValueError("capture_bodies must not be negative")
        if self.workers > 1 and (self.record or self.har or self.flows_jsonl):
            raise ValueError("--record, --har and --flows-jsonl need --workers 1 (one writer per file)")
        if self.workers > 1 and self.ui:
            raise ValueError("--ui needs --workers 1 (the page reads the one recording)")
        if not 0 <= self.ui_port <= 65535:
            raise ValueError(f"ui_port must be 0..65535, not {self.ui_port}")
        if self.max_body is not None and self.max_body < 0:
            raise ValueError("max_body must not be negative")
        for user, _ in self.auth:
            if not user or ":" in user:
                raise ValueError("auth user names must be non-empty and contain no ':'")
        for pattern in (*self.allow_hosts, *self.deny_hosts):
            check_host_pattern(pattern)  # raises ConfigError
        check_exposure(self.host, self.allow_from, bool(self.auth))  # raises ConfigError

    @property
    def exposure_warning(self) -> str | None:
        """A warning worth printing at startup (an open proxy by choice), or None."""
        return check_exposure(self.host, self.allow_from, bool(self.auth))

    @property
    def allowed_connect_ports(self) -> frozenset[int] | None:
        """CONNECT ports allowed; None means any."""
        if self.connect_ports is not None:
            return self.connect_ports
        loopback_only = all(net.network_address.is_loopback and net.broadcast_address.is_loopback
                            for net in self.allow_from)
        return None if loopback_only else frozenset({443})

    def replace(self, **changes: object) -> Config:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


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


_HOST_GLOB = re.compile(r"[A-Za-z0-9*?.\[\]!_-]+")


def check_host_pattern(pattern: str) -> None:
    """A host rule must be a CIDR or address, or a glob of host-name characters (``*.example.com``)."""
    if "/" in pattern or parse_address(pattern) is not None:
        try:
            ipaddress.ip_network(pattern, strict=False)
        except ValueError as exc:
            raise ConfigError(f"invalid network in host rule {pattern!r}: {exc}") from None
    elif not _HOST_GLOB.fullmatch(pattern) or pattern.count("[") != pattern.count("]"):
        raise ConfigError(f"invalid host pattern {pattern!r}: expected a host glob such as "
                          "*.example.com, or a CIDR such as 10.0.0.0/8")


def parse_address(text: str) -> Address | None:
    """An IP address (zone dropped, IPv4-mapped IPv6 unwrapped), or None for a name."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def check_exposure(host: str, allow_from: Sequence[Network], auth: bool) -> str | None:
    """Refuse to become an accidental open proxy; returns a warning to print, if any."""
    bound = parse_address(host)
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

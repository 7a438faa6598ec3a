"""Config: every setting of a proxy instance, as one frozen, validated value.

This module owns defaults and validation. It knows nothing of sockets or
argparse: the CLI turns flags into a Config, tests build one directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .policy import LOOPBACK_NETWORKS, Network, check_exposure
from .rewrite import parse_rules
from .routing import Router

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
    # How long SIGINT/SIGTERM waits for in-flight exchanges.
    shutdown_grace: float = 5.0
    log_level: str = "info"
    log_format: str = "text"
    # Access control (see policy.py). Only loopback clients by default.
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
    # Processes sharing the listening port (SO_REUSEPORT); the CLI forks them.
    workers: int = 1
    # Routing (routing.py): a parent proxy URL, and targets that go direct anyway.
    upstream_proxy: str | None = None
    upstream_bypass: tuple[str, ...] = ()
    # Rewrite rules (rewrite.py) as (kind, text) pairs, e.g. ("block", "*.tracker.test").
    rewrite_rules: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        for field in ("connect_timeout", "timeout", "client_idle_timeout", "header_timeout",
                      "tunnel_idle_timeout", "pool_idle_timeout"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive")
        if self.shutdown_grace < 0:
            raise ValueError("shutdown_grace must not be negative")
        if self.pool_max_idle_per_origin < 0:
            raise ValueError("pool_max_idle_per_origin must not be negative")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        for field in ("max_request_line", "max_header_bytes", "max_header_count", "max_clients", "workers"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        if self.max_body is not None and self.max_body < 0:
            raise ValueError("max_body must not be negative")
        for user, _ in self.auth:
            if not user or ":" in user:
                raise ValueError("auth user names must be non-empty and contain no ':'")
        check_exposure(self.host, self.allow_from, bool(self.auth))  # raises ConfigError
        self.router()  # raises ConfigError naming a bad parent URL or bypass entry
        parse_rules(self.rewrite_rules)  # raises RuleError naming the rule

    def router(self) -> Router:
        return Router.from_settings(self.upstream_proxy, self.upstream_bypass)

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

"""Live: what a running server reads per exchange, built from one Config and swapped whole.

A reload (SIGHUP) builds a new Live and replaces the server's reference in one
assignment, so every read sees either the whole old policy or the whole new one
(host rules always match the config they were built from), and the hot path takes
no lock. The server's ``config``, ``host_rules``, ``limits``, ``connect`` (the routed
dialler), ``router`` and rewrite ``rules`` read through it, so a reload changes the
parent, the routes and the rules too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config
from ..http1.headers import Limits
from .connect import ConnectFn, Connector
from .dialler import Dialler
from .policy import HostRules, client_allowed
from .rewrite import Rule, parse_rules
from .routing import Router


@dataclass(frozen=True)
class Live:
    config: Config
    host_rules: HostRules
    limits: Limits
    connect: Dialler
    router: Router
    rules: tuple[Rule, ...]
    _admitted: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def admits(self, client_ip: str) -> bool:
        """Whether allow_from admits a client address; asked per exchange, so remembered per address."""
        admitted = self._admitted.get(client_ip)
        if admitted is None:
            if len(self._admitted) >= 4096:
                self._admitted.clear()  # a scan from many addresses: start over rather than grow
            admitted = self._admitted[client_ip] = client_allowed(client_ip, self.config.allow_from)
        return admitted

    @classmethod
    def build(cls, config: Config, connect: ConnectFn, own_address: Callable[[], tuple[str, int]],
              via_name: str) -> Live:
        """Everything from one Config; a bad parent, route or rewrite rule raises its ConfigError."""
        router = Router.from_settings(config.upstream_proxy, config.upstream_bypass, config.upstream_routes)
        # The one seam for connections to targets (tunnels, pooled origins, TLS to origins): direct,
        # or through a CONNECT to the parent. Only the parents' own pooled connections, which carry
        # plain HTTP in absolute-form, are dialled beside it (Dialler.parent_dial).
        dialler = Dialler(Connector(connect, deny_private=config.deny_private, own_address=own_address),
                          router, via_name=via_name, read_timeout=config.timeout,
                          parent_connector=Connector(connect, own_address=own_address),
                          deny_private=config.deny_private)
        return cls(config, HostRules(config.allow_hosts, config.deny_hosts),
                   Limits(config.max_request_line, config.max_header_bytes, config.max_header_count),
                   dialler, router, parse_rules(config.rewrite_rules))

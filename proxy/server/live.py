"""Live: what a running server reads per exchange, built from one Config and swapped whole.

A reload (SIGHUP) builds a new Live and replaces the server's reference in one
assignment, so every read sees either the whole old policy or the whole new one
(host rules always match the config they were built from), and the hot path takes
no lock. The server's ``config``, ``host_rules``, ``limits`` and ``connect`` read
through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config
from ..http1.headers import Limits
from .connect import ConnectFn, Connector
from .policy import HostRules, client_allowed


@dataclass(frozen=True)
class Live:
    config: Config
    host_rules: HostRules
    limits: Limits
    connect: Connector
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
    def build(cls, config: Config, connect: ConnectFn,
              own_address: Callable[[], tuple[str, int]]) -> Live:
        return cls(config, HostRules(config.allow_hosts, config.deny_hosts),
                   Limits(config.max_request_line, config.max_header_bytes, config.max_header_count),
                   Connector(connect, deny_private=config.deny_private, own_address=own_address))

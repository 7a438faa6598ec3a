"""Live: what a running server reads per exchange, built from one Config and swapped whole.

A reload (SIGHUP) builds a new Live and replaces the server's reference in one
assignment, so an exchange reads either the old policy or the new one, never a
half-applied mix of one object's fields, and the hot path takes no lock. The
server's ``config``, ``host_rules``, ``limits`` and ``connect`` read through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config
from ..http1.headers import Limits
from .connect import ConnectFn, Connector
from .policy import HostRules


@dataclass(frozen=True)
class Live:
    config: Config
    host_rules: HostRules
    limits: Limits
    connect: Connector

    @classmethod
    def build(cls, config: Config, connect: ConnectFn,
              own_address: Callable[[], tuple[str, int]]) -> Live:
        return cls(config, HostRules(config.allow_hosts, config.deny_hosts),
                   Limits(config.max_request_line, config.max_header_bytes, config.max_header_count),
                   Connector(connect, deny_private=config.deny_private, own_address=own_address))

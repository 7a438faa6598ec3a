"""ServerBase: what one connection's handler may use of the server that accepted it.

The listener builds these (config, pool, watchdog, flow log, ...) and subclasses
this class; the handler reads them and calls the four methods below. Declaring
them here, below both, lets the handler name its server's type without
importing the listener, which imports the handler.
"""

from __future__ import annotations

import contextlib
import socket
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from ..config import Config
from ..http1.headers import Limits
from ..record.flows import Flow, FlowLog
from ..record.metrics import Metrics
from .dialler import Dialler
from .faults import Faults
from .intercept import Interception
from .live import Live
from .policy import HostRules
from .pool import Pool
from .rewrite import Rule
from .routing import Router
from .watchdog import Watchdog


class Client(Protocol):
    """A live client connection as the server sees it: busy mid-exchange, and cut on shutdown."""

    @property
    def busy(self) -> bool: ...

    def close_now(self) -> None: ...


class ServerBase(ThreadingHTTPServer):
    """The state every connection of one server shares, and the calls a handler makes on it."""

    live: Live  # what exchanges read: one reference, swapped whole by a reload
    metrics: Metrics
    via_name: str
    watchdog: Watchdog
    faults: Faults
    interception: Interception | None  # TLS interception, when on (the plugin turns it on per test)
    pool: Pool
    flows: FlowLog
    stopping: bool

    @property
    def config(self) -> Config:
        return self.live.config

    @property
    def host_rules(self) -> HostRules:
        return self.live.host_rules

    @property
    def limits(self) -> Limits:
        return self.live.limits

    @property
    def connect(self) -> Dialler:
        return self.live.connect

    @property
    def router(self) -> Router:
        return self.live.router

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.live.rules

    def track(self, client: Client) -> None:
        raise NotImplementedError

    def untrack(self, client: Client) -> None:
        raise NotImplementedError

    def relay_tunnel(self, client: socket.socket, upstream: socket.socket, early: bytes,
                     flow: Flow, start: float, *, early_down: bytes = b"") -> None:
        raise NotImplementedError

    def park(self, handler: Any) -> bool:
        """Hold an idle keep-alive connection without a thread; False to keep serving it here."""
        return False

    def others_waiting(self) -> bool:
        """Whether other connections wait for a thread (see scheduler.py)."""
        return False

    def detached(self) -> contextlib.AbstractContextManager[None]:
        """Around a long wait on a connection's thread that cannot park (see scheduler.py)."""
        return contextlib.nullcontext()

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

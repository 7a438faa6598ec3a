"""The proxy a test sees: FwdProxy over a running ProxyServer, and the HostMap it connects through.

FwdProxy gives a test the proxy's address and environment, its flows, the
fault verbs (from RuleBook), host mappings, strict mode's unplanned requests
and cassette replay. HostMap is the proxy's connect function: mapped names
first (api.test -> a loopback origin), then loopback only when offline.
The pytest fixtures that hand these out are in ``pytest_plugin``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..record.flows import Flow
from ..server.faults import UNPLANNED
from ..server.intercept import Interception
from ..server.listener import ProxyServer
from ..server.replay import Replay
from . import cassette
from .flowstore import FlowStore
from .interception import SessionTLS
from .origins import Origin
from .rulebook import RuleBook

if TYPE_CHECKING:
    import pytest

# What a flow keeps of each plain HTTP body for assertions and HAR files.
CAPTURE_BODIES = 65536


# -- where the proxy connects ---------------------------------------------------


class HostMap:
    """The proxy's connect function: mapped names first, then the system resolver.

    ``offline`` refuses (as a DNS failure, so the client sees a 502) any name
    that is neither mapped nor a loopback address, so a suite can promise it
    never leaves the machine.
    """

    def __init__(self, offline: bool = False) -> None:
        self.offline = offline
        self._names: dict[tuple[str, int | None], tuple[str, int | None]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, host: str, port: int | None = None, *, only_port: int | None = None) -> None:
        """Send connections for ``name`` (on ``only_port``, or any) to ``host`` (on ``port``, or the same)."""
        with self._lock:
            self._names[name.lower(), only_port] = (host, port)

    def clear(self) -> None:
        with self._lock:
            self._names.clear()

    def __call__(self, address: tuple[str, int], timeout: float) -> socket.socket:
        host, port = address
        with self._lock:
            mapped = self._names.get((host.lower(), port)) or self._names.get((host.lower(), None))
        if mapped is not None:
            return socket.create_connection((mapped[0], mapped[1] or port), timeout)
        if self.offline and not _is_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not mapped, and fwdproxy_offline "
                                  "allows only loopback addresses")
        return socket.create_connection(address, timeout)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the proxy a test sees --------------------------------------------------------


class FwdProxy(RuleBook):
    """A running proxy as a test uses it: address, environment, flows, faults, host mappings.

    The fault verbs (``respond``, ``fail``, ``chaos``, ``strict`` ...) come from RuleBook.
    """

    def __init__(self, server: ProxyServer, hosts: HostMap, label: str) -> None:
        super().__init__(server.faults)
        self.server = server
        self.hosts = hosts
        self.flows = FlowStore(f"{label} {server.url}", busy=server.busy)
        self.test_dir = Path.cwd()  # where relative cassette paths start; the fixture sets the test's
        self._unplanned: list[Flow] = []
        server.flows.add(self.flows.record)
        server.flows.add(self._note_unplanned)
        server.flows.add_opened(self.flows.opened)
        self.configured_interception = server.interception  # what clear() goes back to
        self.tls_source: Callable[[], SessionTLS] | None = None  # the fixtures hand the session's CA in
        self._tls: SessionTLS | None = None  # set while this test intercepts

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.config.host

    @property
    def port(self) -> int:
        return self.server.port

    def env(self) -> dict[str, str]:
        """Proxy variables in both cases (curl reads only lowercase http_proxy), NO_PROXY emptied.

        While the test intercepts, also the CA variables of common clients (see ``intercept``).
        """
        env = {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "http_proxy": self.url,
               "https_proxy": self.url, "NO_PROXY": "", "no_proxy": ""}
        return {**env, **self._tls.env()} if self._tls is not None else env

    def intercept(self, *host_patterns: str, no_intercept: tuple[str, ...] = ()) -> str:
        """Decrypt HTTPS through this proxy for this test (only ``host_patterns``, if given); the CA file.

        Clients must trust ``ca_file`` (``env()`` and ``apply_env()`` now point the usual
        variables at it); the proxy trusts the session's ``origin_https`` CA. Faults and
        flow queries then apply to each request inside the tunnel, with https:// URLs.
        """
        if self.tls_source is None:
            raise RuntimeError("intercept() needs the fwdproxy or fwdproxy_factory fixture")
        self._tls = tls = self.tls_source()
        self.server.origin_tls.trust(tls.origin_ca_file)
        self.server.interception = Interception(tls.mint, tuple(host_patterns), tuple(no_intercept),
                                                first_bytes_wait=self.server.config.intercept_wait)
        return tls.ca_file

    @property
    def ca_file(self) -> str:
        """The CA certificate (PEM) clients must trust while this test intercepts."""
        if self._tls is None:
            raise AttributeError("ca_file exists once the test calls fwdproxy.intercept()")
        return self._tls.ca_file

    def apply_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's environment at the proxy for the test (a preset NO_PROXY removed)."""
        for name, value in self.env().items():
            if value:
                monkeypatch.setenv(name, value)
            else:
                monkeypatch.delenv(name, raising=False)

    def map_host(self, name: str, to: Origin | tuple[str, int] | str) -> None:
        """Connect to ``to`` whenever a client asks for ``name`` ("api.test", or "api.test:443").

        ``to`` is an origin fixture (which then also presents a certificate
        for ``name``), a (host, port) pair, or a host that keeps the port asked for.
        """
        host, _, port = name.rpartition(":") if re.search(r":\d+$", name) else (name, "", "")
        only_port = int(port) if port else None
        if isinstance(to, Origin):
            if to.tls:
                to.add_name(host)
                self.server.origin_tls.trust(to.ca_file)  # for intercepted and https:// requests
            self.hosts.add(host, to.host, to.port, only_port=only_port)
        elif isinstance(to, tuple):
            self.hosts.add(host, to[0], to[1], only_port=only_port)
        else:
            self.hosts.add(host, to, only_port=only_port)

    # -- strict mode and cassettes ------------------------------------------------------

    @property
    def unplanned(self) -> list[Flow]:
        """Requests refused because no rule answered them (strict mode, or not in a cassette).

        The test fails at teardown unless it empties this list (``fwdproxy.unplanned.clear()``).
        """
        self.flows.all()  # let exchanges in progress be recorded first
        return self._unplanned

    def _note_unplanned(self, flow: Flow) -> None:
        if UNPLANNED in flow.faults and flow.started >= self.flows.since:
            self._unplanned.append(flow)

    def replay(self, path: str | Path, *, match_body: bool = True) -> Replay:
        """Answer requests from a HAR cassette (relative paths start at the test's folder).

        Requests are matched by method, URL and (unless ``match_body=False``)
        body; each recording is played once, in order. A request with no
        recording left gets a 502 and lands in ``unplanned``.
        """
        where = self.test_dir / path
        return self.replay_entries(cassette.load(where), str(where), match_body=match_body)

    def clear(self) -> None:
        """Forget flows, fault rules, host mappings and strict mode; close idle upstream connections."""
        self.server.faults.clear()
        self.hosts.clear()
        self.server.interception = self.configured_interception
        self._tls = None
        self.server.pool.close()  # so upstream opened/reused counts start from nothing
        self.flows.clear()
        self._unplanned.clear()
        self.seeds_used.clear()

    def stop(self) -> None:
        """Stop the proxy (``close()`` is the fault rule that closes client connections)."""
        self.server.flows.remove(self.flows.record)
        self.server.flows.remove(self._note_unplanned)
        self.server.stop(grace=0)

    def __repr__(self) -> str:
        return f"<FwdProxy {self.url} flows={len(self.flows)} faults={len(self.server.faults.rules())}>"


def start_proxy(label: str, *, offline: bool = False, **settings: Any) -> FwdProxy:
    """A started proxy on an ephemeral loopback port, recording bodies for assertions."""
    config = Config(**{"port": 0, "capture_bodies": CAPTURE_BODIES, **settings})
    hosts = HostMap(offline)
    server = ProxyServer(config, connect=hosts, sinks=[])
    server.start()
    return FwdProxy(server, hosts, label)

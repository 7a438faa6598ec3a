"""The pytest plugin: a proxy in one fixture, flows to assert on, faults on demand.

This module owns the fixtures (``fwdproxy``, ``fwdproxy_factory``,
``origin_http``, ``origin_https``), the per-test facade over a ProxyServer,
the host map that lets a test's proxy reach "api.test" on a loopback origin,
and the reporting hooks (a flow table in a failing test's report, a HAR file
per failing test with ``--fwdproxy-har-dir``). It is registered under the
``pytest11`` entry point, so it loads in every test run of a project with
fwdproxy installed: nothing starts until a test asks for a fixture, nothing
is global, and a run that uses no fixture sees no difference.

The proxy is started once per session (or per xdist worker) on an ephemeral
loopback port; each test gets it with its flows, fault rules, host mappings
and idle upstream connections cleared.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..config import Config
from ..record.har import har_log
from ..server.faults import Fault, Match, PathMatcher
from ..server.listener import ProxyServer
from .flowstore import FlowStore
from .origins import Fields, Origin, OriginCA, OriginReply, OriginRequest, fields_list

__all__ = ["FwdProxy", "HostMap", "Origin", "OriginCA", "OriginReply", "OriginRequest"]

# What a flow keeps of each plain HTTP body for assertions and HAR files.
CAPTURE_BODIES = 65536


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fwdproxy", "fwdproxy: a forward proxy for tests of proxied clients")
    group.addoption("--fwdproxy-har-dir", metavar="DIR", default=None,
                    help="write the flows of each failing test that used fwdproxy as a HAR file in DIR")
    parser.addini("fwdproxy_offline", type="bool", default=False,
                  help="fwdproxy proxies connect only to loopback addresses and mapped names (no DNS)")


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


class FwdProxy:
    """A running proxy as a test uses it: address, environment, flows, faults, host mappings."""

    def __init__(self, server: ProxyServer, hosts: HostMap, label: str) -> None:
        self.server = server
        self.hosts = hosts
        self.flows = FlowStore(f"{label} {server.url}", busy=server.busy)
        server.flows.add(self.flows.record)
        server.flows.add_opened(self.flows.opened)

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
        """Proxy variables in both cases (curl reads only lowercase http_proxy), NO_PROXY emptied."""
        return {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "http_proxy": self.url,
                "https_proxy": self.url, "NO_PROXY": "", "no_proxy": ""}

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
            self.hosts.add(host, to.host, to.port, only_port=only_port)
        elif isinstance(to, tuple):
            self.hosts.add(host, to[0], to[1], only_port=only_port)
        else:
            self.hosts.add(host, to, only_port=only_port)

    # Fault rules (proxy/server/faults.py): each fires on every matching request until the test ends.

    def respond(self, status: int = 200, body: bytes = b"", headers: Fields | None = None, *,
                method: str | None = None, host: str | None = None, path: PathMatcher = None) -> Fault:
        """The proxy answers matching requests itself; the origin is never contacted."""
        return self._add("respond", method, host, path, status=status, body=body,
                         headers=fields_list(headers))

    def fail(self, status: int = 502, *, method: str | None = None, host: str | None = None,
             path: PathMatcher = None) -> Fault:
        """Matching requests get a proxy error page with ``status``."""
        return self._add("fail", method, host, path, status=status)

    def delay(self, seconds: float, *, method: str | None = None, host: str | None = None,
              path: PathMatcher = None) -> Fault:
        """Wait ``seconds`` before forwarding (or tunnelling) matching requests."""
        return self._add("delay", method, host, path, seconds=seconds)

    def reset(self, after_bytes: int = 0, *, method: str | None = None, host: str | None = None,
              path: PathMatcher = None) -> Fault:
        """Reset the client connection (RST) after ``after_bytes`` bytes of the response."""
        return self._add("reset", method, host, path, after_bytes=after_bytes)

    def refuse_connect(self, host: str = "*", status: int = 403) -> Fault:
        """Answer CONNECT to ``host`` (a glob) with ``status`` instead of a tunnel."""
        return self._add("refuse_connect", "CONNECT", host, None, status=status)

    def throttle(self, bytes_per_second: float, *, method: str | None = None, host: str | None = None,
                 path: PathMatcher = None) -> Fault:
        """Send plain HTTP responses no faster than ``bytes_per_second``."""
        return self._add("throttle", method, host, path, bytes_per_second=bytes_per_second)

    def require_auth(self, user: str, password: str, *, method: str | None = None, host: str | None = None,
                     path: PathMatcher = None) -> Fault:
        """407 unless the request carries Proxy-Authorization: Basic for user:password."""
        return self._add("require_auth", method, host, path, user=user, password=password)

    def _add(self, action: str, method: str | None, host: str | None, path: PathMatcher,
             **params: Any) -> Fault:
        return self.server.faults.add(action, Match(method=method, host=host, path=path), **params)

    def clear(self) -> None:
        """Forget flows, fault rules and host mappings, and close idle upstream connections."""
        self.server.faults.clear()
        self.hosts.clear()
        self.server.pool.close()  # so upstream opened/reused counts start from nothing
        self.flows.clear()

    def close(self) -> None:
        self.server.flows.remove(self.flows.record)
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


# -- fixtures ---------------------------------------------------------------------

_USED = pytest.StashKey[list[FwdProxy]]()
ReportWrapper = Generator[None, pytest.TestReport, pytest.TestReport]


def _used_by(node: pytest.Item | pytest.Collector) -> list[FwdProxy]:
    return node.stash.setdefault(_USED, [])


def _offline(config: pytest.Config) -> bool:
    try:
        return bool(config.getini("fwdproxy_offline"))
    except ValueError:  # fixtures imported without the plugin's hooks (a conftest stopgap)
        return False


@pytest.fixture(scope="session")
def _fwdproxy_shared(pytestconfig: pytest.Config) -> Iterator[FwdProxy]:
    proxy = start_proxy("fwdproxy", offline=_offline(pytestconfig))
    yield proxy
    proxy.close()


@pytest.fixture
def fwdproxy(_fwdproxy_shared: FwdProxy, request: pytest.FixtureRequest) -> Iterator[FwdProxy]:
    """A running proxy shared by the session, with flows, faults and host mappings cleared for this test."""
    _fwdproxy_shared.clear()
    _used_by(request.node).append(_fwdproxy_shared)
    yield _fwdproxy_shared
    _fwdproxy_shared.server.faults.clear()  # a fault must never outlive its test
    _fwdproxy_shared.hosts.clear()


@pytest.fixture
def fwdproxy_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., FwdProxy]]:
    """``fwdproxy_factory(**config)``: more proxies with their own Config settings, stopped after the test."""
    made: list[FwdProxy] = []

    def make(**settings: Any) -> FwdProxy:
        settings.setdefault("offline", _offline(request.config))
        proxy = start_proxy(f"fwdproxy_factory#{len(made) + 1}", **settings)
        made.append(proxy)
        _used_by(request.node).append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture(scope="session")
def _fwdproxy_ca(tmp_path_factory: pytest.TempPathFactory) -> OriginCA:
    return OriginCA(tmp_path_factory.mktemp("fwdproxy-ca"))


@pytest.fixture
def origin_http() -> Iterator[Origin]:
    """A loopback HTTP/1.1 origin; set ``.handler`` or call ``.respond()``, read ``.requests``."""
    origin = Origin().start()
    yield origin
    origin.stop()


@pytest.fixture
def origin_https(_fwdproxy_ca: OriginCA) -> Iterator[Origin]:
    """origin_http over TLS, certified by a per-session CA (``.ca_file``, ``.ssl_context``)."""
    origin = Origin(_fwdproxy_ca).start()
    yield origin
    origin.stop()


# -- reporting ----------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> ReportWrapper:
    report = yield
    proxies = item.stash.get(_USED, [])
    if proxies and report.failed and report.when == "call":
        for proxy in proxies:
            report.sections.append((f"flows through {proxy.flows.label}", proxy.flows.table()))
        har_dir = item.config.getoption("fwdproxy_har_dir", None)
        if har_dir:
            _write_har(Path(har_dir), item.nodeid, proxies)
    return report


def _write_har(directory: Path, nodeid: str, proxies: list[FwdProxy]) -> None:
    flows = sorted((flow for proxy in proxies for flow in proxy.flows.all()), key=lambda f: f.started)
    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", nodeid).strip("_")[:200] + ".har"
    document = har_log(flows, comment=f"flows of the failing test {nodeid}")
    (directory / name).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

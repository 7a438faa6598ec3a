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
from ..record.flows import Flow
from ..record.har import har_log
from ..server.faults import UNPLANNED
from ..server.listener import ProxyServer
from ..server.replay import Replay
from . import cassette
from .flowstore import FlowStore
from .origins import Origin, OriginCA, OriginReply, OriginRequest
from .rulebook import RuleBook

__all__ = ["FwdProxy", "HostMap", "Origin", "OriginCA", "OriginReply", "OriginRequest"]

# What a flow keeps of each plain HTTP body for assertions and HAR files.
CAPTURE_BODIES = 65536


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fwdproxy", "fwdproxy: a forward proxy for tests of proxied clients")
    group.addoption("--fwdproxy-har-dir", metavar="DIR", default=None,
                    help="write the flows of each failing test that used fwdproxy as a HAR file in DIR")
    group.addoption("--fwdproxy-seed", metavar="N", type=int, default=None,
                    help="seed for every fwdproxy.chaos() without one (a failing test's report prints it)")
    group.addoption("--fwdproxy-record", metavar="MODE", choices=cassette.MODES, default="none",
                    help="cassettes (@pytest.mark.fwdproxy_cassette): none = replay only (default), once = "
                         "record missing ones, new = replay and record new requests, all = record anew")
    parser.addini("fwdproxy_offline", type="bool", default=False,
                  help="fwdproxy proxies connect only to loopback addresses and mapped names (no DNS)")
    parser.addini("fwdproxy_strict", type="bool", default=False,
                  help="fwdproxy refuses (502) every request no rule answers, and the test fails at teardown")
    parser.addini("fwdproxy_assert_all_rules_used", type="bool", default=False,
                  help="a test fails at teardown if one of its fwdproxy fault rules fired less than planned")


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


_MARKERS = (
    "fwdproxy_strict: fwdproxy refuses requests no rule answers; the test fails at teardown naming them",
    "fwdproxy_all_rules_used: the test fails at teardown if a fwdproxy fault rule fired less than planned",
    "fwdproxy_cassette(name, match_body=True, redact=...): replay (or with --fwdproxy-record, record) "
    "the test's exchanges from the HAR file name, next to the test",
)


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


# -- fixtures ---------------------------------------------------------------------

_USED = pytest.StashKey[list[FwdProxy]]()
_CALL = pytest.StashKey[pytest.TestReport]()
ReportWrapper = Generator[None, pytest.TestReport, pytest.TestReport]


def _used_by(node: pytest.Item | pytest.Collector) -> list[FwdProxy]:
    return node.stash.setdefault(_USED, [])


def _ini(config: pytest.Config, name: str) -> bool:
    try:
        return bool(config.getini(name))
    except ValueError:  # fixtures imported without the plugin's hooks (a conftest stopgap)
        return False


def _offline(config: pytest.Config) -> bool:
    return _ini(config, "fwdproxy_offline")


@pytest.fixture(scope="session")
def _fwdproxy_shared(pytestconfig: pytest.Config) -> Iterator[FwdProxy]:
    proxy = start_proxy("fwdproxy", offline=_offline(pytestconfig))
    proxy.seed = pytestconfig.getoption("fwdproxy_seed", None)
    yield proxy
    proxy.stop()


@pytest.fixture
def fwdproxy(_fwdproxy_shared: FwdProxy, request: pytest.FixtureRequest) -> Iterator[FwdProxy]:
    """A running proxy shared by the session, with flows, faults and host mappings cleared for this test."""
    proxy = _fwdproxy_shared
    proxy.clear()
    node = request.node
    proxy.test_dir = node.path.parent if isinstance(node, pytest.Item) else Path.cwd()
    _used_by(node).append(proxy)
    recording = _use_cassette(proxy, request)
    strict = _ini(request.config, "fwdproxy_strict") or node.get_closest_marker("fwdproxy_strict")
    if strict and not recording:
        proxy.strict()
    try:
        yield proxy
        if _passed(node):
            _after_test(proxy, request, recording)
    finally:
        proxy.server.faults.clear()  # a fault must never outlive its test
        proxy.hosts.clear()


def _use_cassette(proxy: FwdProxy, request: pytest.FixtureRequest) -> Callable[[], None] | None:
    """Set up the test's cassette marker; returns what writes the recording at teardown, if any."""
    marker = request.node.get_closest_marker("fwdproxy_cassette")
    if marker is None:
        return None
    if len(marker.args) != 1:
        raise pytest.UsageError("@pytest.mark.fwdproxy_cassette takes one file name, e.g. (\"api.har\")")
    path = proxy.test_dir / str(marker.args[0])
    mode = cassette.check_mode(str(marker.kwargs.get("record", request.config.getoption("fwdproxy_record",
                                                                                         "none"))))
    match_body = bool(marker.kwargs.get("match_body", True))
    redact = tuple(marker.kwargs.get("redact", cassette.REDACT))
    replay, record = cassette.plan(path, mode)
    if replay:
        proxy.replay_entries(cassette.load(path), str(path), match_body=match_body, strict=not record)
    if not record:
        return None

    def write() -> None:
        flows = proxy.flows.all()
        tunnels = [flow.url for flow in flows if flow.kind == "tunnel"]
        if tunnels:
            raise AssertionError(f"cannot record into {path}: HTTPS went through blind CONNECT tunnels to "
                                 f"{', '.join(tunnels)}, whose contents the proxy cannot see")
        cassette.write(path, flows, redact=redact, capture=CAPTURE_BODIES, append=mode == "new")

    return write


def _after_test(proxy: FwdProxy, request: pytest.FixtureRequest,
                recording: Callable[[], None] | None) -> None:
    """The teardown checks of a test that passed: unplanned requests, unused rules, the recording."""
    if proxy.unplanned:
        lines = "\n".join(f"  {flow.method} {flow.url}" for flow in proxy.unplanned)
        raise AssertionError(f"{len(proxy.unplanned)} request(s) no fwdproxy rule answered were refused "
                             f"with 502 (strict mode or cassette):\n{lines}\n"
                             "plan them (respond, replay), or empty fwdproxy.unplanned in the test")
    if _ini(request.config, "fwdproxy_assert_all_rules_used") or request.node.get_closest_marker(
            "fwdproxy_all_rules_used"):
        proxy.assert_all_rules_used()
    if recording is not None:
        recording()


def _passed(node: pytest.Item | pytest.Collector) -> bool:
    report = node.stash.get(_CALL, None)
    return report is not None and report.passed


@pytest.fixture
def fwdproxy_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., FwdProxy]]:
    """``fwdproxy_factory(**config)``: more proxies with their own Config settings, stopped after the test."""
    made: list[FwdProxy] = []

    def make(**settings: Any) -> FwdProxy:
        settings.setdefault("offline", _offline(request.config))
        proxy = start_proxy(f"fwdproxy_factory#{len(made) + 1}", **settings)
        proxy.seed = request.config.getoption("fwdproxy_seed", None)
        made.append(proxy)
        _used_by(request.node).append(proxy)
        return proxy

    yield make
    try:
        for proxy in made:
            if _passed(request.node):
                _after_test(proxy, request, None)
    finally:
        for proxy in made:
            proxy.stop()


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
    if report.when == "call":
        item.stash[_CALL] = report  # the fixtures' teardown checks run only after a pass
    proxies = item.stash.get(_USED, [])
    if proxies and report.failed and report.when == "call":
        for proxy in proxies:
            report.sections.append((f"flows through {proxy.flows.label}", proxy.flows.table()))
        seeds = sorted({seed for proxy in proxies for seed in proxy.seeds_used})
        if seeds:
            report.sections.append(("fwdproxy chaos", "".join(
                f"chaos seed {seed}: replay with --fwdproxy-seed {seed}\n" for seed in seeds)))
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

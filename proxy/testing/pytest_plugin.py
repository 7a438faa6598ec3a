"""The pytest plugin: a proxy in one fixture, flows to assert on, faults on demand.

This module owns the options, ini settings and markers, the fixtures
(``fwdproxy``, ``fwdproxy_factory``, ``origin_http``, ``origin_https``) with
their teardown checks (unplanned requests, unused rules, writing a cassette),
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

import json
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..record.har import har_log
from . import cassette
from .facade import CAPTURE_BODIES, FwdProxy, HostMap, start_proxy
from .interception import SessionTLS
from .origins import Origin, OriginCA, OriginReply, OriginRequest

__all__ = ["FwdProxy", "HostMap", "Origin", "OriginCA", "OriginReply", "OriginRequest"]



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
    "fwdproxy_cassette(name, record=None, match_body=True, redact=...): replay (or with --fwdproxy-record "
    "or record=, record) the test's exchanges from the HAR file name, next to the test",
)


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
    proxy.tls_source = lambda: request.getfixturevalue("_fwdproxy_tls")
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
        proxy.server.interception = proxy.configured_interception  # so does interception
        proxy.tls_source = None


def _use_cassette(proxy: FwdProxy, request: pytest.FixtureRequest) -> Callable[[], None] | None:
    """Set up the test's cassette marker; returns what writes the recording at teardown, if any."""
    marker = request.node.get_closest_marker("fwdproxy_cassette")
    if marker is None:
        return None
    if len(marker.args) != 1:
        raise cassette.CassetteError("@pytest.mark.fwdproxy_cassette takes one file name, e.g. (\"api.har\")")
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
        tunnels = [flow.url for flow in flows if flow.kind == "tunnel" and not flow.intercepted]
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
        # intercept=True takes the session's CA, not a CA folder: the same as .intercept().
        intercepting = settings.pop("intercept", False)
        hosts, no_hosts = settings.pop("intercept_hosts", ()), settings.pop("no_intercept_hosts", ())
        proxy = start_proxy(f"fwdproxy_factory#{len(made) + 1}", **settings)
        proxy.seed = request.config.getoption("fwdproxy_seed", None)
        proxy.tls_source = lambda: request.getfixturevalue("_fwdproxy_tls")
        made.append(proxy)
        _used_by(request.node).append(proxy)
        if intercepting:
            proxy.intercept(*hosts, no_intercept=tuple(no_hosts))
            proxy.configured_interception = proxy.server.interception  # kept across clear()
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


@pytest.fixture(scope="session")
def _fwdproxy_tls(tmp_path_factory: pytest.TempPathFactory, _fwdproxy_ca: OriginCA) -> SessionTLS:
    return SessionTLS(tmp_path_factory.mktemp("fwdproxy-intercept"), _fwdproxy_ca)


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

"""Fixtures: loopback origins (HTTP and HTTPS with a trustme CA) and proxies, all on port 0."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from filelock import FileLock
from servers import OriginServer, RawOrigin
from subprocs import Running

from proxy import Config, Flow, ProxyServer

PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
             "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines often preset proxy variables (or NO_PROXY=localhost); tests choose their own."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    with OriginServer() as server:
        yield server


@pytest.fixture(scope="module")
def module_origin() -> Iterator[OriginServer]:
    """One origin for a whole module of many small cases (adversarial, fuzz)."""
    with OriginServer() as server:
        yield server


@pytest.fixture
def tls_origin(server_context: ssl.SSLContext) -> Iterator[OriginServer]:
    with OriginServer(server_context) as server:
        yield server


@pytest.fixture
def raw_origin() -> Iterator[Callable[..., RawOrigin]]:
    made: list[RawOrigin] = []

    def make(reply: bytes, then: str = "close") -> RawOrigin:
        made.append(RawOrigin(reply, then))
        return made[-1]

    yield make
    for raw in made:
        raw.close()


class RunningProxy:
    """A started ProxyServer plus the flows it recorded."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.flows: list[Flow] = []
        self._changed = threading.Condition()
        server.flows.add(self._record)

    def _record(self, flow: Flow) -> None:
        with self._changed:
            self.flows.append(flow)
            self._changed.notify_all()

    def wait_flows(self, count: int, timeout: float = 10.0) -> list[Flow]:
        """The flows once at least ``count`` have finished (tunnels finish after the client closes)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.flows) >= count, timeout):
                raise AssertionError(f"expected {count} flows within {timeout}s, saw {self.flows}")
            return list(self.flows)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def address(self) -> tuple[str, int]:
        return self.server.config.host, self.server.port


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., RunningProxy]]:
    servers: list[ProxyServer] = []

    def make(connect: Any = None, **settings: Any) -> RunningProxy:
        kwargs = {"connect": connect} if connect else {}
        server = ProxyServer(Config(**{"port": 0, **settings}), sinks=[], **kwargs).start()
        servers.append(server)
        return RunningProxy(server)

    yield make
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    """``running(*flags, env=..., preamble=...)``: see ``subprocs.Running``; whatever is still alive is stopped after."""
    made: list[Running] = []

    def start(*flags: str, env: dict[str, str] | None = None, preamble: bool = False) -> Running:
        made.append(Running(*flags, env=env, preamble=preamble))
        return made[-1]

    yield start
    for r in made:
        if r.proc.poll() is None:
            r.proc.terminate()  # SIGTERM reaches the workers too; SIGKILL would orphan them
            try:
                r.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.communicate(timeout=10)


@pytest.fixture
def proxy(proxy_factory: Callable[..., RunningProxy]) -> RunningProxy:
    return proxy_factory()


NODE_DIR = Path(__file__).resolve().parent / "node"


def one_worker_at_a_time(tmp_path_factory: pytest.TempPathFactory, name: str) -> FileLock:
    """A lock shared by the xdist workers of one run (and a plain run), for set-up that must not overlap.

    Every worker's base temp sits in the run's common folder (xdist's documented recipe).
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    return FileLock(shared / f"{name}.lock", timeout=600)


@pytest.fixture(scope="session")
def node_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/node/node_modules (ws, http-proxy-agent, https-proxy-agent), from the lockfile.

    ./scripts/test installs them; this covers a plain ``pytest`` run after a lockfile change.
    """
    stamp = NODE_DIR / "node_modules" / ".fwdproxy-installed"
    want = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    with one_worker_at_a_time(tmp_path_factory, "npm-ci"):  # npm ci empties node_modules first
        if not stamp.is_file() or stamp.read_text().strip() != want:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                           check=True, timeout=300, capture_output=True)
            stamp.write_text(want + "\n")
    return NODE_DIR / "node_modules"

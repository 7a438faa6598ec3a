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
import socketserver
import ssl
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .config import Config
from .faults import Fault, Match, PathMatcher
from .flowstore import FlowStore
from .har import har_log
from .server import ProxyServer

# What a flow keeps of each plain HTTP body for assertions and HAR files.
CAPTURE_BODIES = 65536
DEFAULT_CERT_NAMES = ("localhost", "127.0.0.1", "::1")
Fields = Mapping[str, str] | list[tuple[str, str]]


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


def _fields(headers: Fields | None) -> list[tuple[str, str]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the other side of the wire: loopback origins -----------------------------------


@dataclass
class OriginRequest:
    """A request as the origin received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


@dataclass
class OriginReply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


OriginHandler = Callable[[OriginRequest], OriginReply]


def _default_handler(request: OriginRequest) -> OriginReply:
    return OriginReply(200, f"{request.method} {request.path}\n".encode(),
                       [("Content-Type", "text/plain; charset=utf-8")])


class _OriginRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Origin

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method goes to the test's handler
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        request = OriginRequest(self.command, self.path, list(self.headers.items()), self._body(),
                                self.client_address[:2])
        self.server.record(request)
        try:
            reply = self.server.handler(request)
        except Exception as exc:  # the test's handler failed: say so where the test will look
            reply = OriginReply(500, f"origin handler raised {exc!r}\n".encode())
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in reply.headers)
        if not framed and reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.status not in (204, 304):
            self.wfile.write(reply.body)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read origin.requests, not stderr


class Origin(ThreadingHTTPServer):
    """A loopback HTTP/1.1 origin (HTTPS when given a TLS authority) with a handler the test sets."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: OriginCA | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _OriginRequestHandler)
        self.handler: OriginHandler = _default_handler
        self.requests: list[OriginRequest] = []
        self.connections = 0
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self._names = set(DEFAULT_CERT_NAMES)
        self._context = tls.server_context(DEFAULT_CERT_NAMES, self._pick_cert) if tls else None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would do a reverse DNS lookup
        self.server_name, self.server_port = "127.0.0.1", self.port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def respond(self, status: int = 200, body: bytes = b"", headers: Fields | None = None) -> None:
        """Answer every request with this reply from now on."""
        reply = OriginReply(status, body, _fields(headers))
        self.handler = lambda request: reply

    @property
    def ca_file(self) -> str:
        """The CA certificate (PEM) a client must trust to reach this HTTPS origin."""
        return self._tls().ca_file

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting this origin's CA."""
        return self._tls().client_context

    def add_name(self, name: str) -> None:
        """Also present a valid certificate for ``name`` (chosen by the client's SNI)."""
        self._names.add(name.lower())

    def _tls(self) -> OriginCA:
        if self.tls is None:
            raise AttributeError("origin_http has no TLS; use origin_https")
        return self.tls

    def _pick_cert(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name and name.lower() in self._names and self.tls:
            sock.context = self.tls.server_context((name.lower(),))

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self._context is not None:  # the handshake runs on the connection's own thread
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self.connections += 1
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def record(self, request: OriginRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or rejects the certificate is the test's business, not stderr's

    def start(self) -> Origin:
        # A short poll: stop() waits for the serving loop to notice, once per test.
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.01},
                         name=f"origin-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with self._lock:
            open_now, self._open = list(self._open), set()
        for sock in open_now:  # kept-alive connections would hold their threads forever
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the connection's thread wakes up and closes it
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<Origin {self.url()} requests={len(self.requests)} connections={self.connections}>"


SNICallback = Callable[[Any, str | None, ssl.SSLContext], None]


class OriginCA:
    """A throwaway trustme CA for a session: its PEM file, a client context, server certificates."""


    def __init__(self, directory: Path) -> None:
        try:
            import trustme
        except ImportError as exc:
            raise pytest.UsageError("origin_https needs trustme: pip install trustme") from exc
        self.ca = trustme.CA()
        self.ca_file = str(directory / "fwdproxy-test-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.client_context = ssl.create_default_context(cafile=self.ca_file)
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def server_context(self, names: tuple[str, ...], sni: SNICallback | None = None) -> ssl.SSLContext:
        """A server context with a certificate for ``names``; cached unless it has its own SNI callback."""
        with self._lock:
            if sni is None and names in self._contexts:
                return self._contexts[names]
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(*names).configure_cert(ctx)
            if sni is None:
                self._contexts[names] = ctx
            else:
                ctx.sni_callback = sni
            return ctx


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

    # Fault rules (proxy/faults.py): each fires on every matching request until the test ends.

    def respond(self, status: int = 200, body: bytes = b"", headers: Fields | None = None, *,
                method: str | None = None, host: str | None = None, path: PathMatcher = None) -> Fault:
        """The proxy answers matching requests itself; the origin is never contacted."""
        return self._add("respond", method, host, path, status=status, body=body, headers=_fields(headers))

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

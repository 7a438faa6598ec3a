"""Interception meets bad input: clients and origins that break the TLS rules, or speak no TLS at all.

Each case checks what the client gets (an HTTP error inside its TLS session
with an RFC 9209 Proxy-Status, a blind relay, or a clean close), that the
flow is recorded, that nothing is left open, and that the proxy then serves
a normal client.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme
from servers import RawOrigin, accept_forever
from subprocs import Running
from waiting import wait_until

from proxy.testing.origins import OriginCA
from proxy.testing.pytest_plugin import FwdProxy, Origin

Factory = Callable[..., FwdProxy]


def connect(proxy: FwdProxy, target: str) -> socket.socket:
    """A socket through which the proxy has answered 200 to CONNECT target."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def get(proxy: FwdProxy, url: str) -> requests.Response:
    return requests.get(url, proxies={"https": proxy.url}, verify=proxy.ca_file, timeout=10)


def still_serves(proxy: FwdProxy, name: str = "api.test") -> None:
    assert get(proxy, f"https://{name}/after").status_code == 200


def settle(proxy: FwdProxy) -> None:
    """Wait (bounded) until every client connection is closed, and say so."""
    assert wait_until(lambda: proxy.server.status()["client_connections"] == 0, 10)


@pytest.fixture
def api(fwdproxy: FwdProxy, origin_https: Origin) -> Origin:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.intercept()
    return origin_https


class TLSOrigin:
    """An HTTPS origin presenting the certificate it is given, answering 200 to anything."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        accept_forever(self.listener, self._answer)  # one connection at a time

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass  # the proxy refused our certificate

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def expired_origin() -> Iterator[TLSOrigin]:
    ca = trustme.CA()
    past = datetime.datetime(2020, 1, 1)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("bad.test", not_before=past, not_after=past + datetime.timedelta(days=30)).configure_cert(context)
    origin = TLSOrigin(context)
    origin.ca = ca  # type: ignore[attr-defined]
    yield origin
    origin.close()


# -- origins the proxy must not trust ---------------------------------------------


@pytest.mark.parametrize("case", ["wrong-name", "unknown-ca", "expired"])
def test_an_origin_certificate_that_fails_is_a_502_inside_the_tls_session(
        case: str, fwdproxy: FwdProxy, api: Origin, expired_origin: TLSOrigin, tmp_path: Path) -> None:
    if case == "wrong-name":  # the origin's certificate does not carry the name asked for
        fwdproxy.hosts.add("bad.test", api.host, api.port)
    elif case == "unknown-ca":
        stranger = Origin(OriginCA(tmp_path)).start()
        stranger.add_name("bad.test")
        fwdproxy.hosts.add("bad.test", stranger.host, stranger.port)
    else:
        cafile = str(tmp_path / "expired-ca.pem")
        expired_origin.ca.cert_pem.write_to_path(cafile)  # type: ignore[attr-defined]
        fwdproxy.server.origin_tls.trust(cafile)  # trusted CA, but the certificate is out of date
        fwdproxy.hosts.add("bad.test", "127.0.0.1", expired_origin.port)
    resp = get(fwdproxy, "https://bad.test/secret")
    assert resp.status_code == 502
    assert "error=tls_certificate_error" in resp.headers["Proxy-Status"]
    reason = {"wrong-name": "Hostname mismatch", "unknown-ca": "unable to get local issuer certificate",
              "expired": "certificate has expired"}[case]
    assert resp.text.startswith("fwdproxy: bad.test presented a certificate that does not verify")
    assert reason in resp.text
    assert fwdproxy.flows.one(path="/secret").status == 502
    still_serves(fwdproxy)


def test_upstream_insecure_accepts_it_and_marks_the_flow(fwdproxy_factory: Factory, expired_origin: TLSOrigin) -> None:
    proxy: FwdProxy = fwdproxy_factory(upstream_insecure=True)
    proxy.intercept()
    proxy.hosts.add("bad.test", "127.0.0.1", expired_origin.port)
    resp = get(proxy, "https://bad.test/x")
    assert (resp.status_code, resp.text) == (200, "ok")
    flow = proxy.flows.one(path="/x")
    assert flow.upstream_tls == "unverified" and "upstream-tls=unverified" in flow.as_line()


def test_an_origin_that_does_not_speak_tls_is_a_502(fwdproxy: FwdProxy, api: Origin, origin_http: Origin) -> None:
    fwdproxy.map_host("plain.test", origin_http)
    resp = get(fwdproxy, "https://plain.test/")
    assert resp.status_code == 502 and "error=tls_protocol_error" in resp.headers["Proxy-Status"]
    assert origin_http.requests == []
    still_serves(fwdproxy)


def test_an_origin_that_never_finishes_the_handshake_is_a_504(fwdproxy_factory: Factory, origin_https: Origin) -> None:
    proxy: FwdProxy = fwdproxy_factory(connect_timeout=0.3)
    proxy.intercept()
    silent = RawOrigin(reply=b"", then="hang")  # accepts, then says nothing
    try:
        proxy.hosts.add("silent.test", "127.0.0.1", silent.port)
        resp = get(proxy, "https://silent.test/")
        assert resp.status_code == 504 and "error=connection_timeout" in resp.headers["Proxy-Status"]
        assert "TLS handshake with silent.test not completed within 0.3s" in resp.text
    finally:
        silent.close()
    proxy.map_host("api.test", origin_https)
    still_serves(proxy)


# -- clients that are not what they seem -----------------------------------------


def test_bytes_that_are_not_a_client_hello_are_relayed_blindly(fwdproxy: FwdProxy, api: Origin,
                                                               origin_http: Origin) -> None:
    with connect(fwdproxy, f"127.0.0.1:{origin_http.port}") as sock:
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(sock).endswith(b"GET /plain\n")
    flow = fwdproxy.flows.wait_for(kind="tunnel", finished=True)
    assert not flow.intercepted and flow.bytes_up > 0 and not flow.error
    assert fwdproxy.flows.filter(kind="http") == []


@pytest.fixture
def greeter() -> Iterator[int]:
    """A server that speaks first (as SMTP does), then echoes one line."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"220 greeter ready\r\n")
                conn.sendall(b"echo " + conn.recv(1024))

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def test_a_server_that_speaks_first_still_works(fwdproxy_factory: Factory, greeter: int) -> None:
    proxy: FwdProxy = fwdproxy_factory(intercept_wait=0.2)
    proxy.intercept()
    with connect(proxy, f"127.0.0.1:{greeter}") as sock:
        sock.settimeout(5)  # the relay starts after the 0.2 s wait for a client byte
        assert sock.recv(1024) == b"220 greeter ready\r\n"
        sock.sendall(b"QUIT\r\n")
        assert sock.recv(1024) == b"echo QUIT\r\n"
    assert not proxy.flows.one(kind="tunnel").intercepted


def client_hello(server_name: bytes) -> bytes:
    """A minimal TLS 1.2 ClientHello (RFC 5246 section 7.4.1.2) with one SNI extension, as records."""
    names = struct.pack("!BH", 0, len(server_name)) + server_name
    sni = struct.pack("!H", len(names)) + names
    extensions = struct.pack("!HH", 0, len(sni)) + sni
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\xc0\x2f" + b"\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(piece)) + piece
                    for piece in (handshake[i:i + 16384] for i in range(0, len(handshake), 16384)))


class Subprocess:
    """``fwdproxy --intercept`` in its own process, so its descriptors and threads can be counted."""

    def __init__(self, tmp: Path, upstream_ca: str) -> None:
        running = Running("--port", "0", "--workers", "1", "--log-level", "warning",
                          "--intercept", "--ca-dir", str(tmp), "--upstream-ca", upstream_ca,
                          preamble=True)  # the CA is created first, and says so
        self.proc = running.proc
        self.address = running.address
        self.ca_file = str(tmp / "ca.pem")

    def status(self) -> dict[str, int]:
        with socket.create_connection(self.address, timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            return json.loads(read_all(sock).partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]

    def usage(self, at_most: tuple[int, int] | None = None) -> tuple[int, int]:
        """(descriptors not held by the upstream pool, threads not parked for reuse), once settled.

        A handler closes its socket and parks its thread just after it reports done, so
        this waits (up to 10 s) until the figures reach ``at_most``, or for a baseline,
        until two readings agree.
        """
        seen: list[tuple[int, int]] = []

        def settled() -> bool:
            status = self.status()
            threads = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{self.proc.pid}/status").read_text())
            assert threads
            now = (len(os.listdir(f"/proc/{self.proc.pid}/fd")) - status["upstream_idle"],
                   int(threads.group(1)) - status["idle_workers"])
            last = seen[-1] if seen else None
            seen.append(now)
            quiet = status["client_connections"] <= 1
            return quiet and (now == last if at_most is None else now[0] <= at_most[0] and now[1] <= at_most[1])

        wait_until(settled, 10, interval=0.05)
        return seen[-1]


@pytest.fixture(scope="module")
def separate(tmp_path_factory: pytest.TempPathFactory, _fwdproxy_ca: OriginCA) -> Iterator[Subprocess]:
    proxy = Subprocess(tmp_path_factory.mktemp("ca"), _fwdproxy_ca.ca_file)
    yield proxy
    proxy.proc.terminate()
    proxy.proc.communicate(timeout=10)


def through_separate(proxy: Subprocess, origin: Origin) -> None:
    resp = requests.get(origin.url("/after"), proxies={"https": "http://{}:{}".format(*proxy.address)},
                        verify=proxy.ca_file, timeout=10)
    assert resp.status_code == 200


@pytest.mark.parametrize("data", [
    pytest.param(client_hello(b"api.test")[:40], id="closes-mid-handshake"),
    pytest.param(b"\x16\x03\x01\x00\x10" + b"\xff" * 16 + b"\x17\x03\x03\x00\x04junk", id="garbage-records"),
    pytest.param(client_hello(b"a" * 20000), id="huge-sni"),
    pytest.param(client_hello(b"bad name\xff\x00.test"), id="malformed-sni"),
])
def test_a_broken_client_handshake_ends_cleanly(data: bytes, separate: Subprocess, origin_https: Origin) -> None:
    through_separate(separate, origin_https)
    before = separate.usage()
    for _ in range(5):
        sock = socket.create_connection(separate.address, timeout=10)
        with sock:
            sock.sendall(f"CONNECT 127.0.0.1:{origin_https.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + data)
            sock.shutdown(socket.SHUT_WR)
            answer = read_all(sock)  # 200, an alert at most, then the proxy closes: nothing hangs
        assert answer.startswith(b"HTTP/1.1 200 ")
    through_separate(separate, origin_https)
    after = separate.usage(at_most=before)
    assert after[0] <= before[0] and after[1] <= before[1]
    assert [r.path for r in origin_https.requests] == ["/after", "/after"]


def test_a_broken_client_handshake_is_recorded(fwdproxy: FwdProxy, api: Origin) -> None:
    with connect(fwdproxy, "api.test:443") as sock:
        sock.sendall(client_hello(b"a" * 20000))
        read_all(sock)
    flow = fwdproxy.flows.wait_for(kind="tunnel", finished=True)
    assert flow.error.startswith("TLS handshake with the client failed") and flow.intercepted
    still_serves(fwdproxy)


def test_a_client_that_never_finishes_its_handshake_is_cut_off(fwdproxy_factory: Factory, origin_https: Origin) -> None:
    proxy: FwdProxy = fwdproxy_factory(header_timeout=0.3)
    proxy.intercept()
    proxy.map_host("api.test", origin_https)
    with connect(proxy, "api.test:443") as sock:
        sock.sendall(client_hello(b"api.test")[:20])  # then nothing
        sock.settimeout(5)
        assert read_all(sock) == b""
    flow = proxy.flows.wait_for(kind="tunnel", finished=True)
    assert flow.error == "TLS handshake with the client not completed within 0.3s"


class ManualTLS:
    """A client TLS session driven by hand over a socket, so the test decides how bytes are written."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, name: str) -> None:
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=name)

    def hello(self) -> bytes:
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def finish_handshake(self) -> None:
        while True:
            self.incoming.write(self.sock.recv(65536))
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
        self.sock.sendall(self.outgoing.read())

    def request(self, data: bytes) -> bytes:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"\n"):
            try:
                received += self.tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.incoming.write(chunk)
        return received


def test_a_client_hello_split_over_many_writes_is_intercepted(fwdproxy: FwdProxy, api: Origin) -> None:
    with connect(fwdproxy, "api.test:443") as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = ManualTLS(sock, ssl.create_default_context(cafile=fwdproxy.ca_file), "api.test")
        hello = client.hello()
        for i in range(0, len(hello), 7):
            sock.sendall(hello[i:i + 7])
        client.finish_handshake()
        answer = client.request(b"GET /split HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"GET /split\n")
    assert fwdproxy.flows.one(kind="http").url == "https://api.test/split"


def test_a_client_hello_pipelined_behind_the_connect_is_intercepted(fwdproxy: FwdProxy, api: Origin) -> None:
    sock = socket.create_connection((fwdproxy.host, fwdproxy.port), timeout=10)
    with sock:
        client = ManualTLS(sock, ssl.create_default_context(cafile=fwdproxy.ca_file), "api.test")
        sock.sendall(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n" + client.hello())  # one write
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ")
        client.finish_handshake()
        answer = client.request(b"GET /pipelined HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert answer.endswith(b"GET /pipelined\n")


def test_shutdown_ends_idle_intercepted_sessions(fwdproxy_factory: Factory, origin_https: Origin) -> None:
    proxy: FwdProxy = fwdproxy_factory(intercept=True)
    proxy.map_host("api.test", origin_https)
    context = ssl.create_default_context(cafile=proxy.ca_file)
    with context.wrap_socket(connect(proxy, "api.test:443"), server_hostname="api.test") as tls:
        tls.sendall(b"GET /one HTTP/1.1\r\nHost: api.test\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        proxy.server.stop(grace=30)  # an idle kept-alive session is not waited for
        assert time.monotonic() - started < 10  # far from the grace, whatever the machine's load
        assert tls.recv(65536) == b""  # the proxy's close_notify, then the end of the stream
    tunnel = proxy.flows.wait_for(kind="tunnel", finished=True)
    assert tunnel.intercepted and tunnel.bytes_up > 0 and tunnel.bytes_down > 0


def test_an_unreachable_origin_is_a_502_inside_the_tls_session(fwdproxy: FwdProxy, api: Origin) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    fwdproxy.hosts.add("down.test", "127.0.0.1", port)  # nothing listens there now
    resp = get(fwdproxy, "https://down.test/")
    assert resp.status_code == 502 and "error=connection_refused" in resp.headers["Proxy-Status"]
    assert fwdproxy.flows.one(kind="tunnel").intercepted  # the tunnel was dialled lazily: 200, then TLS
    still_serves(fwdproxy)

"""Who may use the proxy and where it may go: ACLs, auth, host and port rules, loops, limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from servers import OriginServer
from subprocs import Running

if TYPE_CHECKING:
    from conftest import RunningProxy

import base64
import http.client
import socket
import subprocess
import sys
import threading
import time

import requests
from wire import exchange, read_response, through

from proxy.config import parse_networks, parse_ports

ROOT = Path(__file__).resolve().parent.parent


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def get(proxy: RunningProxy, url: str, headers: str = "") -> bytes:
    return exchange(proxy.address, f"GET {url} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())


def tunnel(proxy: RunningProxy, target: str, headers: str = "") -> bytes:
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n".encode())
    data = sock.recv(65536)
    sock.close()
    return data


# -- client networks -----------------------------------------------------------

def test_clients_outside_allow_from_get_403(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(allow_from=parse_networks("10.0.0.0/8"))
    response = get(proxy, origin.url("/echo"))
    assert status_of(response) == 403 and b"client 127.0.0.1 is not allowed" in response
    assert status_of(tunnel(proxy, origin.authority)) == 403
    assert origin.received == []


def test_clients_inside_allow_from_are_served(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(allow_from=parse_networks("10.0.0.0/8,127.0.0.1/32"))
    assert status_of(get(proxy, origin.url("/echo"))) == 200


def test_health_is_answered_even_to_refused_clients(proxy_factory: Callable[..., RunningProxy]) -> None:
    proxy = proxy_factory(allow_from=parse_networks("10.0.0.0/8"), auth=(("u", "p"),))
    response = exchange(proxy.address, b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200


# -- authentication ------------------------------------------------------------

@pytest.fixture
def auth_proxy(proxy_factory: Callable[..., RunningProxy]) -> Any:
    return proxy_factory(auth=(("alice", "s3cret:with:colons"), ("bob", "hunter2")))


@pytest.mark.parametrize("header", [
    "", f"Proxy-Authorization: {basic('alice', 'wrong')}\r\n",
    f"Proxy-Authorization: {basic('mallory', 'hunter2')}\r\n",
    "Proxy-Authorization: Bearer abc\r\n", "Proxy-Authorization: Basic !!!\r\n",
    f"Authorization: {basic('bob', 'hunter2')}\r\n",   # the origin's field is not the proxy's
], ids=["missing", "wrong-password", "unknown-user", "other-scheme", "not-base64", "wrong-field"])
def test_missing_or_wrong_credentials_get_407(auth_proxy: RunningProxy, origin: OriginServer, header: Any) -> None:
    for response in (get(auth_proxy, origin.url("/echo"), header), tunnel(auth_proxy, origin.authority, header)):
        assert status_of(response) == 407
        assert b'Proxy-Authenticate: Basic realm="fwdproxy"\r\n' in response
    assert origin.received == []


def test_valid_credentials_pass_and_are_not_forwarded(auth_proxy: RunningProxy, origin: OriginServer) -> None:
    response = get(auth_proxy, origin.url("/echo"), f"Proxy-Authorization: {basic('alice', 's3cret:with:colons')}\r\n")
    assert status_of(response) == 200
    assert origin.received[-1].header("Proxy-Authorization") is None
    response = tunnel(auth_proxy, origin.authority, f"Proxy-Authorization: {basic('bob', 'hunter2')}\r\n")
    assert response.startswith(b"HTTP/1.1 200 Connection Established")


def test_credentials_never_reach_the_log(auth_proxy: RunningProxy, origin: OriginServer) -> None:
    get(auth_proxy, "http://alice:s3cret@" + origin.authority + "/echo",
        f"Proxy-Authorization: {basic('alice', 's3cret:with:colons')}\r\n")
    lines = " ".join(f.as_line() + f.as_json() for f in auth_proxy.flows)
    assert "s3cret" not in lines and "YWxpY2" not in lines
    assert origin.received[-1].header("Authorization") is None  # userinfo is not turned into a header


def test_requests_with_proxy_credentials(auth_proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    good = {"http": f"http://bob:hunter2@{auth_proxy.address[0]}:{auth_proxy.address[1]}"}
    good["https"] = good["http"]
    assert requests.get(origin.url("/echo"), proxies=good, timeout=10).status_code == 200
    assert requests.get(tls_origin.url("/echo"), proxies=good, verify=ca_file, timeout=10).status_code == 200
    assert requests.get(origin.url("/echo"), proxies={"http": auth_proxy.url}, timeout=10).status_code == 407
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get(tls_origin.url("/echo"), proxies={"https": auth_proxy.url}, verify=ca_file, timeout=10)


def test_curl_with_proxy_user(auth_proxy: RunningProxy, tls_origin: OriginServer, ca_file: str) -> None:
    base = ["curl", "-sS", "--noproxy", "", "-x", auth_proxy.url, "--cacert", ca_file, "-o", "/dev/null",
            "-w", "%{http_code}", tls_origin.url("/echo")]
    ok = subprocess.run([*base, "-U", "bob:hunter2"], capture_output=True, text=True, timeout=30)
    assert ok.stdout == "200"
    bad = subprocess.run([*base, "-U", "bob:nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "407" in bad.stderr + bad.stdout


# -- where the proxy may go ------------------------------------------------------

def test_deny_host_globs_and_cidrs(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(deny_hosts=("*.internal", "127.0.0.0/8"))
    assert status_of(get(proxy, origin.url("/echo"))) == 403
    assert status_of(get(proxy, "http://db.internal/")) == 403
    assert status_of(tunnel(proxy, origin.authority)) == 403
    assert origin.received == []


def test_allow_host_admits_only_matches(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(allow_hosts=("localhost",))
    assert status_of(get(proxy, origin.url("/echo"))) == 403  # 127.0.0.1 is not "localhost"
    assert status_of(get(proxy, f"http://localhost:{origin.port}/echo")) == 200
    assert status_of(get(proxy, "http://other.test/")) == 403


def test_connect_ports(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(connect_ports=parse_ports("443,8000-8100"))
    response = tunnel(proxy, origin.authority)
    assert status_of(response) == 403 and f"port {origin.port} is not allowed (--connect-ports)".encode() in response


def test_connect_ports_default_to_443_when_others_may_connect(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(allow_from=parse_networks("127.0.0.0/8,10.0.0.0/8"))
    assert status_of(tunnel(proxy, origin.authority)) == 403
    assert status_of(get(proxy, origin.url("/echo"))) == 200  # plain requests are not port-limited


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_deny_private_refuses_local_targets(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, target: Any) -> None:
    proxy = proxy_factory(deny_private=True)
    host = target
    response = get(proxy, f"http://{host}:{origin.port}/echo")
    assert status_of(response) == 403, response
    assert status_of(tunnel(proxy, f"{host}:{origin.port}")) == 403
    assert origin.received == []


def test_deny_private_checks_the_address_actually_dialled(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    """A name that resolves to a private address is refused, whatever it looks like."""
    calls = []

    def connect(address: Any, timeout: Any) -> Any:
        calls.append(address)
        return socket.create_connection(address, timeout)

    proxy = proxy_factory(deny_private=True, connect=connect)
    assert status_of(get(proxy, f"http://localhost:{origin.port}/")) == 403
    assert calls == []  # refused before any connection was attempted


# -- loops -------------------------------------------------------------------------

def test_request_to_the_proxy_itself_is_a_loop(proxy: RunningProxy) -> None:
    port = proxy.address[1]
    for target in (f"http://127.0.0.1:{port}/x", f"http://localhost:{port}/x"):
        response = get(proxy, target)
        assert status_of(response) == 508, response
    assert status_of(tunnel(proxy, f"127.0.0.1:{port}")) == 508


def test_loop_is_detected_when_listening_on_a_name(proxy_factory: Callable[..., RunningProxy]) -> None:
    proxy = proxy_factory(host="localhost")  # the check compares addresses, not the configured name
    assert status_of(get(proxy, f"http://127.0.0.1:{proxy.address[1]}/x")) == 508


def test_request_carrying_our_via_is_a_loop(proxy: RunningProxy, origin: OriginServer) -> None:
    response = get(proxy, origin.url("/echo"), f"Via: 1.1 {proxy.server.via_name}\r\n")
    assert status_of(response) == 508
    assert origin.received == []


def test_chained_proxies_are_not_a_loop(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    front, back = proxy_factory(), proxy_factory()
    # back forwards to front's port as if it were an origin: front must see back's Via and serve.
    conn = http.client.HTTPConnection(*back.address, timeout=10)
    conn.request("GET", origin.url("/echo"))
    assert conn.getresponse().status == 200
    conn.close()
    assert front.server.via_name != back.server.via_name


# -- limits ------------------------------------------------------------------------

def test_request_line_too_long_is_414(proxy: RunningProxy, origin: OriginServer) -> None:
    response = get(proxy, origin.url("/" + "a" * 9000))
    assert status_of(response) == 414


def test_header_section_too_large_is_431(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(max_header_bytes=4096, max_header_count=10)
    assert status_of(get(proxy, origin.url("/"), "X-Big: " + "a" * 5000 + "\r\n")) == 431
    assert status_of(get(proxy, origin.url("/"), "".join(f"X-{i}: 1\r\n" for i in range(11)))) == 431
    assert status_of(get(proxy, origin.url("/"), "".join(f"X-{i}: 1\r\n" for i in range(8)))) == 200


def test_body_too_large_is_413(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(max_body=1000)
    response = exchange(proxy.address, f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\n"
                        "Content-Length: 1001\r\n\r\n".encode() + b"x" * 1001)
    assert status_of(response) == 413
    chunked = b"".join(b"%x\r\n%s\r\n" % (300, b"y" * 300) for _ in range(4)) + b"0\r\n\r\n"
    response = exchange(proxy.address, f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n".encode() + chunked)
    assert status_of(response) == 413
    resp, _ = through(proxy.address, "POST", origin.url("/echo"), body=b"z" * 1000)
    assert resp.status == 200


def test_too_many_clients_get_503_with_retry_after(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(max_clients=2)
    held = [socket.create_connection(proxy.address, timeout=10) for _ in range(2)]
    for sock in held:  # make sure both are being served
        sock.sendall(f"GET {origin.url('/bytes/1')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        read_response(sock)
    response = exchange(proxy.address, b"")
    assert response.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in response
    # The proxy counts a connection out before it closes the socket: once this one
    # reads the proxy's EOF, its slot is free.
    held[0].shutdown(socket.SHUT_WR)
    assert held[0].recv(1) == b""
    held[0].close()
    assert status_of(get(proxy, origin.url("/bytes/1")) or b"x 0") == 200  # a slot frees up
    held[1].close()


def test_slowloris_head_is_cut_off_with_408(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(header_timeout=0.5)
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"GET {origin.url('/echo')} HTTP/1.1\r\n".encode())
    start = time.monotonic()
    answered = threading.Event()

    def dribble() -> None:  # a header byte every 0.1 s: never idle, never done
        try:
            while not answered.wait(0.1) and time.monotonic() - start < 10:
                sock.sendall(b"X")
        except OSError:
            pass  # cut off: what the test expects

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    data = b""
    try:
        while piece := sock.recv(4096):
            data += piece
    except OSError:
        pass
    answered.set()
    dribbler.join(10)
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert time.monotonic() - start < 5  # cut while still dribbling (a loaded machine may be seconds late)
    assert origin.received == []


def test_idle_client_is_closed(proxy_factory: Callable[..., RunningProxy]) -> None:
    proxy = proxy_factory(client_idle_timeout=0.3)
    sock = socket.create_connection(proxy.address, timeout=10)
    assert sock.recv(1) == b""  # closed by the proxy, not by our timeout
    sock.close()


# -- the open-proxy guard ----------------------------------------------------------

def run_cli(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_non_loopback_bind_without_acl_or_auth_refuses_to_start() -> None:
    out = run_cli("--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 as an open proxy" in out.stderr
    assert "--allow-from" in out.stderr and "--auth" in out.stderr


def test_everyone_allowed_without_auth_starts_with_a_warning(running: Callable[..., Running]) -> None:
    proxy = running("--host", "0.0.0.0", "--port", "0", "--allow-from", "0.0.0.0/0", preamble=True)
    proxy.stop()
    warning, banner = proxy.head.splitlines()
    assert "open proxy to anyone" in warning and "listening on" in banner


def test_auth_file(tmp_path: Path, origin: OriginServer, running: Callable[..., Running]) -> None:
    creds = tmp_path / "users"
    creds.write_text("# team\ncarol:pa:ss\n\n")
    proxy = running("--port", "0", "--auth-file", str(creds))
    try:
        ok = exchange(proxy.address, f"GET {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      f"Proxy-Authorization: {basic('carol', 'pa:ss')}\r\n\r\n".encode())
        assert status_of(ok) == 200
        assert status_of(exchange(proxy.address, f"GET {origin.url('/')} HTTP/1.1\r\n\r\n".encode())) == 407
    finally:
        proxy.stop()  # SIGTERM: the proxy takes its worker processes down with it

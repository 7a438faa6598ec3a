"""ProxyClient end to end: routes through our proxy, keep-alive, errors, env settings, cookies, retries."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trustme
from servers import OriginServer, RawOrigin, Received

from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

import gzip
import http.cookiejar
import io
import logging
import os
import socket
import subprocess
import sys
import zlib

from client_fixtures import *  # noqa: F403
from client_fixtures import SpyProxy, add_redirects, free_port

from proxy.client import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    ProxyClient,
    ProxyError,
    ReadTimeout,
    Retry,
    Timeout,
    TLSError,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def via_proxy(received: Any) -> bool:
    return any("fwdproxy" in v for v in received.all("Via"))


# -- routes ------------------------------------------------------------------------------


def test_http_goes_in_absolute_form_through_the_proxy(spy_proxy: SpyProxy, origin: OriginServer) -> None:
    with ProxyClient(spy_proxy.url) as client:
        resp = client.post(origin.url("/echo?q=1"), body=b"hi", headers={"X-A": "1"})
    assert resp.status == 200 and resp.url == origin.url("/echo?q=1")
    got = origin.received[-1]
    assert (got.method, got.target, got.body) == ("POST", "/echo?q=1", b"hi")
    assert got.header("X-A") == "1" and got.header("Host") == origin.authority
    assert via_proxy(got) and spy_proxy.dialled == [("127.0.0.1", origin.port)]


def test_https_goes_through_a_connect_tunnel_verified_for_the_target(spy_proxy: SpyProxy, tls_origin: OriginServer, ca_file: str) -> None:
    with ProxyClient(spy_proxy.url, ca_file=ca_file) as client:
        resp = client.get(tls_origin.url("/echo"))
    assert resp.json()["target"] == "/echo"
    got = tls_origin.received[-1]
    assert not via_proxy(got)  # tunnelled: the proxy never saw inside
    assert spy_proxy.dialled == [("127.0.0.1", tls_origin.port)]


def test_https_via_localhost_name_checks_the_target_name(proxy: RunningProxy, tls_origin: OriginServer, ca_file: str) -> None:
    with ProxyClient(proxy.url, ca_file=ca_file) as client:
        resp = client.get(f"https://localhost:{tls_origin.port}/echo")
    assert resp.json()["headers"][0] == ["Host", f"localhost:{tls_origin.port}"]


def test_tls_name_check_is_for_the_target_not_the_proxy(proxy_factory: Callable[..., RunningProxy], ca: trustme.CA, tls_origin: OriginServer, ca_file: str) -> None:
    # The proxy resolves *.test to loopback; the client must check the target's name, api.test.
    def connect(address: Any, timeout: Any) -> Any:
        return socket.create_connection(("127.0.0.1", address[1]), timeout=timeout)

    resolving = proxy_factory(connect=connect)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.test").configure_cert(context)
    with OriginServer(context) as api, ProxyClient(resolving.url, ca_file=ca_file) as client:
        assert client.get(f"https://api.test:{api.port}/echo").status == 200
        assert api.received[-1].header("Host") == f"api.test:{api.port}"
        # The localhost certificate covers the proxy's 127.0.0.1, but not api.test.
        with pytest.raises(TLSError, match=r"api\.test"):
            client.get(f"https://api.test:{tls_origin.port}/echo")


def test_wrong_ca_fails_the_tunnelled_handshake(proxy: RunningProxy, tls_origin: OriginServer) -> None:
    # Negative control for the test above: the system store does not trust the test CA.
    with ProxyClient(proxy.url) as client, pytest.raises(TLSError, match="not trusted"):
        client.get(tls_origin.url("/echo"))
    assert tls_origin.received == []


def test_ssl_context_may_replace_ca_file(proxy: RunningProxy, tls_origin: OriginServer, client_context: ssl.SSLContext) -> None:
    with ProxyClient(proxy.url, ssl_context=client_context) as client:
        assert client.get(tls_origin.url("/echo")).status == 200


def test_tunnel_http_sends_plain_http_through_connect(spy_proxy: SpyProxy, origin: OriginServer) -> None:
    with ProxyClient(spy_proxy.url, tunnel_http=True) as client:
        client.get(origin.url("/echo"))
    got = origin.received[-1]
    assert got.target == "/echo" and not via_proxy(got)
    assert spy_proxy.dialled == [("127.0.0.1", origin.port)]


def test_no_proxy_at_all_is_direct(origin: OriginServer) -> None:
    with ProxyClient() as client:
        client.get(origin.url("/echo"))
    assert not via_proxy(origin.received[-1])


def test_ipv6_target_through_the_proxy(proxy: RunningProxy) -> None:
    with OriginServer(host="::1") as v6, ProxyClient(proxy.url) as client:
        resp = client.get(v6.url("/echo"))
    assert resp.status == 200 and v6.received[-1].header("Host") == v6.authority


# -- proxy credentials ---------------------------------------------------------------------

AUTH_407 = (b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n'
            b"Content-Length: 12\r\n\r\nlog in first")


def test_connect_407_is_a_proxy_error_with_the_proxy_headers(raw_origin: Callable[..., RawOrigin]) -> None:
    fake = raw_origin(AUTH_407)
    with ProxyClient(f"http://user:pass@{fake.authority}") as client, pytest.raises(ProxyError) as info:
        client.get("https://127.0.0.1:9/secret")
    exc = info.value
    assert (exc.status, exc.reason) == (407, "Proxy Authentication Required")
    assert exc.header("Proxy-Authenticate") == 'Basic realm="x"'
    assert "log in first" in str(exc)
    sent = fake.received[0]
    # RFC 9112 section 3.2.3: authority-form, HTTP/1.1, Host; credentials on the CONNECT.
    assert sent.startswith(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n" in sent


def test_connect_403_refusal(raw_origin: Callable[..., RawOrigin]) -> None:
    fake = raw_origin(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    with ProxyClient(f"http://{fake.authority}") as client, pytest.raises(ProxyError) as info:
        client.get("https://127.0.0.1:9/")
    assert info.value.status == 403
    assert b"Proxy-Authorization" not in fake.received[0]


def test_forwarded_407_is_a_proxy_error(raw_origin: Callable[..., RawOrigin]) -> None:
    fake = raw_origin(AUTH_407)
    with ProxyClient(f"http://{fake.authority}") as client, pytest.raises(ProxyError) as info:
        client.get("http://127.0.0.1:9/x")
    assert info.value.status == 407 and info.value.body == b"log in first"


def test_proxy_credentials_go_on_every_forwarded_request_only(raw_origin: Callable[..., RawOrigin], scripted: Any) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    fake = scripted(lambda conn, n, head: ok)
    with ProxyClient(f"http://user:pass@127.0.0.1:{fake.port}") as client:
        client.get("http://target.test/a")
        client.get("http://target.test/b")
    assert [c for c, _ in fake.received] == [1, 1]  # one kept-alive connection
    for _, head in fake.received:
        assert head.startswith(b"GET http://target.test/")
        assert b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n" in head


def test_tunnelled_requests_never_carry_proxy_credentials(proxy: RunningProxy, tls_origin: OriginServer, ca_file: str) -> None:
    with ProxyClient(proxy.url.replace("http://", "http://user:pass@"), ca_file=ca_file) as client:
        client.get(tls_origin.url("/echo"), headers={"Proxy-Authorization": "Basic c2VjcmV0"})
    assert tls_origin.received[-1].header("Proxy-Authorization") is None


def test_connect_refused_by_our_proxy_is_a_502_proxy_error(proxy: RunningProxy) -> None:
    with ProxyClient(proxy.url) as client, pytest.raises(ProxyError) as info:
        client.get(f"https://127.0.0.1:{free_port()}/")
    assert (info.value.status, info.value.reason) == (502, "Bad Gateway")


# -- transport errors and timeouts -----------------------------------------------------------


def test_unreachable_proxy_is_a_connect_error() -> None:
    with ProxyClient(f"http://127.0.0.1:{free_port()}") as client, \
            pytest.raises(ConnectError, match=r"cannot connect to proxy 127\.0\.0\.1"):
        client.get("http://127.0.0.1:9/")


def test_read_timeout(proxy: RunningProxy, origin: OriginServer) -> None:
    with ProxyClient(proxy.url, timeout=Timeout(connect=5, read=0.2)) as client, pytest.raises(ReadTimeout):
        client.get(origin.url("/hang"))


def test_connect_timeout_on_a_silent_proxy(raw_origin: Callable[..., RawOrigin]) -> None:
    silent = raw_origin(b"", then="hang")
    with ProxyClient(f"http://{silent.authority}", timeout=Timeout(connect=0.2, read=5)) as client, \
            pytest.raises(ConnectTimeout, match="did not answer CONNECT"):
        client.get("https://127.0.0.1:9/")


def test_total_deadline_covers_redirects(origin: OriginServer) -> None:
    add_redirects(origin)
    hang = origin.url("/hang")
    with ProxyClient(timeout=Timeout(connect=5, read=5, total=0.3)) as client, pytest.raises(ReadTimeout):
        client.get(origin.url(f"/redirect?status=302&to={hang}"))


def test_truncated_body_is_an_error(raw_origin: Callable[..., RawOrigin]) -> None:
    short = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with ProxyClient() as client, pytest.raises(Exception, match="bytes of the body not received"):
        client.get(f"http://{short.authority}/")


# -- keep-alive ------------------------------------------------------------------------------


def test_connections_are_reused_per_route(proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    with ProxyClient(proxy.url, ca_file=ca_file) as client:
        for _ in range(3):
            client.get(tls_origin.url("/bytes/10"))
            client.get(origin.url("/chunked/3000"))
        assert client.pool.opened == 2 and client.pool.reused == 4
    assert tls_origin.connections == 1  # one tunnel carried all three


def test_direct_keep_alive_and_a_partly_read_stream_is_not_reused(origin: OriginServer) -> None:
    with ProxyClient() as client:
        client.get(origin.url("/bytes/100"))
        client.get(origin.url("/bytes/100"))
        assert origin.connections == 1
        with client.stream("GET", origin.url("/bytes/300000")) as resp:
            next(iter(resp))  # read a little, then leave
        client.get(origin.url("/bytes/100"))
        assert origin.connections == 2


def test_a_partly_read_body_never_leaks_into_the_next_response(scripted: Any) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def script(conn: Any, n: Any, head: Any) -> Any:
        if head.startswith(b"GET /big"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"  # the rest comes late...
        return b"67890" + ok if n == 2 else ok  # ...ahead of the next response, were the connection reused

    peer = scripted(script)
    with ProxyClient() as client:
        with client.stream("GET", peer.url + "/big") as resp:
            assert next(iter(resp)) == b"12345"
        assert client.get(peer.url + "/small").body == b"ok"
    assert peer.connections == 2


def test_server_closed_connection_is_retried_once_for_get_only(scripted: Any) -> None:
    keep = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def script(conn: Any, n: Any, head: Any) -> Any:
        return None if (conn == 1 and n == 2) else keep  # first connection dies after one answer

    peer = scripted(script)
    with ProxyClient() as client:
        client.get(peer.url + "/a")
        assert client.get(peer.url + "/b").body == b"ok"
    assert peer.connections == 2
    peer2 = scripted(script)
    with ProxyClient() as client:
        client.get(peer2.url + "/a")
        with pytest.raises(ConnectionClosed):
            client.post(peer2.url + "/b", body=b"once")
    assert peer2.connections == 1  # never sent twice


# -- environment --------------------------------------------------------------------------------


def test_env_proxy_is_used_and_no_proxy_bypasses_it(monkeypatch: pytest.MonkeyPatch, proxy: RunningProxy, origin: OriginServer) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with ProxyClient() as client:
        client.get(origin.url("/echo"))
    assert via_proxy(origin.received[-1])
    with ProxyClient(trust_env=False) as client:
        client.get(origin.url("/echo"))
    assert not via_proxy(origin.received[-1])
    monkeypatch.setenv("no_proxy", "127.0.0.0/8")
    with ProxyClient() as client:
        client.get(origin.url("/echo"))
    assert not via_proxy(origin.received[-1])


def test_env_https_proxy_for_https_targets(monkeypatch: pytest.MonkeyPatch, spy_proxy: SpyProxy, tls_origin: OriginServer, ca_file: str) -> None:
    monkeypatch.setenv("https_proxy", spy_proxy.url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # must not be used for https
    with ProxyClient(ca_file=ca_file) as client:
        client.get(tls_origin.url("/echo"))
    assert spy_proxy.dialled == [("127.0.0.1", tls_origin.port)]


# -- bodies ------------------------------------------------------------------------------------


def test_request_bodies(origin: OriginServer) -> None:
    with ProxyClient() as client:
        client.put(origin.url("/echo"), body=io.BytesIO(b"xxfile"))
        assert (origin.received[-1].body, origin.received[-1].header("Content-Length")) == (b"xxfile", "6")
        client.post(origin.url("/echo"), body=iter([b"a", b"bc"]))
        assert origin.received[-1].body == b"abc"
        assert origin.received[-1].header("Transfer-Encoding") == "chunked"
        client.post(origin.url("/echo"), json={"k": [1]})
        assert origin.received[-1].header("Content-Type") == "application/json"
        client.post(origin.url("/echo"))
        assert origin.received[-1].header("Content-Length") == "0"  # RFC 9110 section 8.6


def test_response_headers_keep_order_and_duplicates(origin: OriginServer) -> None:
    with ProxyClient() as client:
        resp = client.get(origin.url("/cookies"))
    assert resp.headers.get_all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert resp.headers["X-ORDER"] == "1" and "x-order" in resp.headers
    assert [n for n, _ in resp.headers.items()][:4] == ["Set-Cookie", "X-Order", "Set-Cookie", "X-Order"]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
def test_content_is_decoded_only_when_asked(origin: OriginServer, coding: Any) -> None:
    data = b"hello " * 1000
    packed = {"gzip": gzip.compress(data), "deflate": zlib.compress(data),
              "raw-deflate": zlib.compress(data)[2:-4]}[coding]

    def route(h: OriginConnection, r: Received) -> None:
        h.send_raw_head(200, [("Content-Encoding", coding.replace("raw-", "")),
                              ("Content-Length", str(len(packed)))])
        h.wfile.write(packed)

    origin.routes["/packed"] = route
    with ProxyClient() as client:
        assert client.get(origin.url("/packed")).body == packed
        assert origin.received[-1].header("Accept-Encoding") == "identity"
    with ProxyClient(decode_content=True) as client:
        assert client.get(origin.url("/packed")).body == data
        assert origin.received[-1].header("Accept-Encoding") == "gzip, deflate"


# -- cookies ------------------------------------------------------------------------------------


def test_cookie_jar_is_applied_on_every_hop_and_never_to_another_site(proxy: RunningProxy, origin: OriginServer) -> None:
    add_redirects(origin)
    jar = http.cookiejar.CookieJar()
    same_site = origin.url("/echo")
    with ProxyClient(proxy.url, cookies=jar) as client:
        resp = client.get(origin.url(f"/redirect?status=302&to={same_site}&cookie=sid%3D42%3B%20Path%3D%2F"))
        assert resp.json()["target"] == "/echo"
        assert origin.received[-1].header("Cookie") == "sid=42"
        other_site = f"http://localhost:{origin.port}/echo"
        client.get(origin.url(f"/redirect?status=302&to={other_site}"))
        assert origin.received[-1].header("Host") == f"localhost:{origin.port}"
        assert origin.received[-1].header("Cookie") is None
    assert [c.name for c in jar] == ["sid"]


# -- retries ----------------------------------------------------------------------------------


def flaky(origin: OriginServer, failures: Any, status: Any=503, retry_after: Any=None) -> Any:
    count = {"n": 0}

    def route(h: OriginConnection, r: Received) -> None:
        count["n"] += 1
        if count["n"] <= failures:
            extra = [("Retry-After", retry_after)] if retry_after else []
            h.send_raw_head(status, [*extra, ("Content-Length", "4")])
            h.wfile.write(b"busy")
        else:
            h.send_raw_head(200, [("Content-Length", "2")])
            h.wfile.write(b"ok")

    origin.routes["/flaky"] = route
    return count


def test_retries_statuses_with_backoff_for_idempotent_methods(origin: OriginServer) -> None:
    count = flaky(origin, failures=2, retry_after="0")
    with ProxyClient(retries=Retry(total=3, backoff=0.01)) as client:
        resp = client.get(origin.url("/flaky"))
    assert (resp.status, resp.body, count["n"]) == (200, b"ok", 3)
    assert origin.connections == 1  # the 503 bodies were read, so the connection was kept


def test_retries_give_up_after_total_and_return_the_last_response(origin: OriginServer) -> None:
    count = flaky(origin, failures=5, status=502)
    with ProxyClient(retries=Retry(total=2, backoff=0.01)) as client:
        assert client.get(origin.url("/flaky")).status == 502
    assert count["n"] == 3


def test_post_is_not_retried_unless_asked(origin: OriginServer) -> None:
    count = flaky(origin, failures=1)
    with ProxyClient(retries=Retry(backoff=0.01)) as client:
        assert client.post(origin.url("/flaky"), body=b"x").status == 503
    assert count["n"] == 1
    with ProxyClient(retries=Retry(backoff=0.01, methods=frozenset({"POST"}))) as client:
        assert client.post(origin.url("/flaky"), body=b"x").status == 200
    assert origin.received[-1].body == b"x"


def test_connection_failures_are_retried() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with ProxyClient(dead, retries=Retry(total=2, backoff=0.01), debug=True) as client:
        with pytest.raises(ConnectError):
            client.get("http://127.0.0.1:9/")


# -- debugging --------------------------------------------------------------------------------


def test_debug_logs_the_connect_exchange_requests_and_hops(caplog: pytest.LogCaptureFixture, proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    add_redirects(origin)
    caplog.set_level(logging.DEBUG, logger="fwdproxy.client")
    target = tls_origin.url("/echo")
    with ProxyClient(proxy.url.replace("//", "//u:secret@"), ca_file=ca_file, debug=True) as client:
        client.get(origin.url(f"/redirect?status=302&to={target}"), headers={"Authorization": "Bearer t0k"})
    text = caplog.text
    assert f"> GET {origin.url('/redirect')}" in text
    assert "< HTTP/1.1 302 Found" in text
    assert f"* redirect 302: GET {origin.url('/redirect')}" in text
    assert f"> CONNECT 127.0.0.1:{tls_origin.port} HTTP/1.1" in text
    assert "> Proxy-Authorization: Basic [hidden]" in text
    assert "< HTTP/1.1 200" in text and "certificate verified for 127.0.0.1" in text
    assert "secret" not in text and "t0k" not in text


def test_no_debug_no_log(caplog: pytest.LogCaptureFixture, origin: OriginServer) -> None:
    caplog.set_level(logging.DEBUG, logger="fwdproxy.client")
    with ProxyClient() as client:
        client.get(origin.url("/echo"))
    assert caplog.records == []


# -- streaming a large body with bounded memory -------------------------------------------------

BIG = 100 * 1024 * 1024
CHILD = """
import sys
from proxy.client import ProxyClient
total = 0
with ProxyClient(sys.argv[2]) as client, client.stream("GET", sys.argv[1]) as resp:
    for chunk in resp:
        total += len(chunk)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
print(total, int(hwm) * 1024)
"""


def big_route(h: OriginConnection, r: Received) -> None:
    size = int(r.target.rsplit("/", 1)[1])
    h.send_raw_head(200, [("Content-Length", str(size))])
    block = b"x" * (1 << 20)
    for _ in range(size // len(block)):
        h.wfile.write(block)
    h.wfile.write(block[:size % len(block)])


def child_peak(url: str, proxy_url: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, url, proxy_url], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    total, peak = out.stdout.split()
    return int(total), int(peak)


def test_streaming_100_mb_through_the_proxy_in_bounded_memory(proxy: RunningProxy, origin: OriginServer) -> None:
    origin.routes["/big"] = big_route
    small_total, baseline = child_peak(origin.url("/big/1000"), proxy.url)
    total, peak = child_peak(origin.url(f"/big/{BIG}"), proxy.url)
    assert (small_total, total) == (1000, BIG)
    print(f"client peak RSS: {peak / 2**20:.1f} MiB for 100 MiB, {baseline / 2**20:.1f} MiB for 1 kB")
    assert peak - baseline < 16 * 2**20

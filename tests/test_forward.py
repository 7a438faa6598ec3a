"""Plain forwarding (RFC 9112 section 3.2.2): methods, targets, headers, bodies, framing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from servers import OriginServer, Received

from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

import http.client
import socket

import requests
from wire import echoed, exchange, read_response, through

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE", "BREW"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reaches_the_origin_in_origin_form(proxy: RunningProxy, origin: OriginServer, method: Any) -> None:
    body = b"payload" if method in ("POST", "PUT", "PATCH", "BREW") else None
    resp, _ = through(proxy.address, method, origin.url("/echo?q=1"), body=body)
    assert resp.status == 200
    got = origin.received[-1]
    assert (got.method, got.target) == (method, "/echo?q=1")
    assert got.body == (body or b"")
    assert got.header("Host") == origin.authority


def test_path_and_query_pass_byte_for_byte(proxy: RunningProxy, origin: OriginServer) -> None:
    raw_path = "/echo/a%2Fb/%7Euser/%zz;p=1?x=%20y&y=a+b&&z=%E2%82%AC"
    resp, _ = through(proxy.address, "GET", origin.url(raw_path) + "#frag")
    assert resp.status == 200
    assert origin.received[-1].target == raw_path


def test_host_comes_from_the_target_not_the_client(proxy: RunningProxy, origin: OriginServer) -> None:
    request = (f"GET {origin.url('/echo')} HTTP/1.1\r\nHost: evil.example\r\n"
               "Connection: close\r\n\r\n").encode()
    response = exchange(proxy.address, request)
    assert response.startswith(b"HTTP/1.1 200")
    assert origin.received[-1].all("Host") == [origin.authority]


def test_empty_path_becomes_slash_and_star_for_options(proxy: RunningProxy, origin: OriginServer) -> None:
    for method, expected in (("GET", "/"), ("OPTIONS", "*")):
        request = f"{method} http://{origin.authority} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert exchange(proxy.address, request.encode()).startswith(b"HTTP/1.1 200")
        assert origin.received[-1].target == expected


def test_hop_by_hop_request_headers_are_removed_and_via_added(proxy: RunningProxy, origin: OriginServer) -> None:
    headers = {"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
               "Proxy-Connection": "keep-alive", "Proxy-Authorization": "Basic dTpw",
               "TE": "trailers", "Trailer": "X-T", "Upgrade": "websocket", "X-End": "kept"}
    through(proxy.address, "GET", origin.url("/echo"), headers=headers)
    got = origin.received[-1]
    names = {name.lower() for name, _ in got.headers}
    for hop in ("connection", "x-hop", "keep-alive", "proxy-connection", "proxy-authorization",
                "te", "trailer", "upgrade"):
        assert hop not in names
    assert got.header("X-End") == "kept"
    assert got.header("Via") == f"1.1 {proxy.server.via_name}"


def test_existing_via_is_kept_and_ours_appended(proxy: RunningProxy, origin: OriginServer) -> None:
    through(proxy.address, "GET", origin.url("/echo"), headers={"Via": "1.1 corp-gateway"})
    assert origin.received[-1].all("Via") == ["1.1 corp-gateway", f"1.1 {proxy.server.via_name}"]


def test_hop_by_hop_response_headers_are_removed_and_via_added(proxy: RunningProxy, origin: OriginServer) -> None:
    resp, body = through(proxy.address, "GET", origin.url("/hop"))
    assert body == b"ok"
    for hop in ("X-Secret", "Keep-Alive", "Proxy-Authenticate", "Upgrade"):
        assert resp.getheader(hop) is None
    assert resp.getheader("X-Kept") == "yes"
    assert resp.getheader("Via") == f"1.1 {proxy.server.via_name}"


def test_duplicate_headers_and_order_survive_both_ways(proxy: RunningProxy, origin: OriginServer) -> None:
    request = (f"GET {origin.url('/cookies')} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\n"
               "Connection: close\r\n\r\n").encode()
    response = exchange(proxy.address, request)
    got = origin.received[-1]
    assert [(n, v) for n, v in got.headers if n.startswith("X-")] == [("X-A", "1"), ("X-B", "2"), ("X-A", "3")]
    head = response.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [h for h in head if h.startswith((b"Set-Cookie", b"X-Order"))] == [
        b"Set-Cookie: a=1; Path=/", b"X-Order: 1", b"Set-Cookie: b=2; Path=/", b"X-Order: 2"]


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 3_000_000])
def test_request_body_with_content_length(proxy: RunningProxy, origin: OriginServer, size: Any) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    resp, _ = through(proxy.address, "POST", origin.url("/echo"), body=body)
    assert resp.status == 200
    got = origin.received[-1]
    assert got.header("Content-Length") == str(size)
    assert got.body == (body if size <= 1 << 20 else b"<%d bytes>" % size)


def test_chunked_request_body_is_streamed_upstream(proxy: RunningProxy, origin: OriginServer) -> None:
    chunks = [b"hello ", b"chunked ", b"world" * 1000]
    # http.client frames an iterable body of unknown length as chunked.
    resp, _ = through(proxy.address, "POST", origin.url("/echo"), body=iter(chunks))
    assert resp.status == 200
    got = origin.received[-1]
    assert got.header("Transfer-Encoding") == "chunked"
    assert got.body == b"".join(chunks)


@pytest.mark.parametrize("route,size", [("bytes", 10), ("bytes", 2_000_000),
                                        ("chunked", 5000), ("close", 70_000)])
def test_response_bodies_in_every_framing(proxy: RunningProxy, origin: OriginServer, route: Any, size: Any) -> None:
    resp, body = through(proxy.address, "GET", origin.url(f"/{route}/{size}"))
    assert resp.status == 200
    assert len(body) == size
    assert body == (b"0123456789abcdef" * (size // 16 + 1))[:size]


def test_close_delimited_response_becomes_chunked_for_http11_clients(proxy: RunningProxy, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        for _ in range(2):  # the client connection survives the origin's close
            sock.sendall(f"GET {origin.url('/close/5000')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            resp, body = read_response(sock)
            assert resp.getheader("Transfer-Encoding") == "chunked"
            assert len(body) == 5000


def test_close_delimited_response_stays_close_delimited_for_http10_clients(proxy: RunningProxy, origin: OriginServer) -> None:
    response = exchange(proxy.address, f"GET {origin.url('/chunked/3000')} HTTP/1.0\r\n\r\n".encode())
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert len(body) == 3000


def test_head_response_has_no_body_but_keeps_content_length(proxy: RunningProxy, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"HEAD {origin.url('/bytes/1234')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp, body = read_response(sock, "HEAD")
        assert resp.getheader("Content-Length") == "1234" and body == b""
        # The connection is still in sync: the next response parses cleanly.
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(sock)[1] == b"012"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(proxy: RunningProxy, origin: OriginServer, status: Any) -> None:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"GET {origin.url(f'/status/{status}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp, body = read_response(sock)
        assert resp.status == status and body == b""
        assert resp.getheader("Transfer-Encoding") is None
        if status == 204:
            assert resp.getheader("Content-Length") is None
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(sock)[1] == b"012"


def test_expect_100_continue(proxy: RunningProxy, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"PUT {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        # The body is withheld until the proxy says to go on.
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        resp, body = read_response(sock)
    assert resp.status == 200
    assert echoed(body)["body"] == "hello"


def test_requests_library_through_the_proxy(proxy: RunningProxy, origin: OriginServer) -> None:
    proxies = {"http": proxy.url}
    with requests.Session() as session:
        r = session.post(origin.url("/echo"), data=b"abc", proxies=proxies, timeout=10)
        assert r.status_code == 200 and r.json()["body"] == "abc"
        r = session.get(origin.url("/chunked/100000"), proxies=proxies, timeout=10)
        assert len(r.content) == 100000


def test_client_keep_alive_and_upstream_reuse(proxy: RunningProxy, origin: OriginServer) -> None:
    conn = http.client.HTTPConnection(*proxy.address, timeout=10)
    for i in range(100):
        _resp, body = through(proxy.address, "GET", origin.url(f"/bytes/{i}"), conn=conn)
        assert len(body) == i
    conn.close()
    assert origin.connections == 1
    assert {r.connection for r in origin.received} == {1}
    assert len({f.client for f in proxy.wait_flows(100)}) == 1  # one client connection, too


def test_upstream_connections_are_shared_across_clients(proxy: RunningProxy, origin: OriginServer) -> None:
    for i in range(20):
        resp, _ = through(proxy.address, "GET", origin.url(f"/bytes/{i}"))  # a new client each time
        assert resp.status == 200
    flows = proxy.wait_flows(20)
    assert len({f.client for f in flows}) == 20
    assert origin.connections == 1
    assert [f.upstream_reused for f in flows] == [False] + [True] * 19


def test_http10_without_keep_alive_is_closed(proxy: RunningProxy, origin: OriginServer) -> None:
    response = exchange(proxy.address, f"GET {origin.url('/bytes/7')} HTTP/1.0\r\n\r\n".encode())
    assert response.endswith(b"\r\n\r\n0123456")  # and exchange() returned: the proxy closed


def test_connection_close_from_client_is_honoured(proxy: RunningProxy, origin: OriginServer) -> None:
    response = exchange(proxy.address, f"GET {origin.url('/bytes/2')} HTTP/1.1\r\nHost: x\r\n"
                        "Connection: close\r\n\r\n".encode())
    assert b"Connection: close\r\n" in response and response.endswith(b"01")


def test_early_hints_are_relayed_before_the_final_response(proxy: RunningProxy, origin: OriginServer) -> None:
    def early(h: OriginConnection, r: Received) -> None:
        h.send_raw_head(103, [("Link", "</style.css>; rel=preload")])
        h.send_raw_head(200, [("Content-Length", "2")])
        h.wfile.write(b"ok")

    origin.routes["/early"] = early
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"GET {origin.url('/early')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while not data.endswith(b"ok"):
            data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    assert b"HTTP/1.1 200 OK\r\n" in data


def test_flows_record_each_exchange(proxy: RunningProxy, origin: OriginServer) -> None:
    through(proxy.address, "POST", origin.url("/bytes/10"), body=b"12345")
    (flow,) = proxy.wait_flows(1)
    assert (flow.kind, flow.method, flow.url, flow.status) == ("http", "POST", origin.url("/bytes/10"), 200)
    assert (flow.bytes_up, flow.bytes_down) == (5, 10)
    assert flow.duration_ms > 0


def test_origin_ipv6_literal(proxy: RunningProxy) -> None:
    try:
        server = OriginServer(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server:
        resp, _ = through(proxy.address, "GET", f"http://[::1]:{server.port}/echo")
        assert resp.status == 200
        assert server.received[-1].header("Host") == f"[::1]:{server.port}"

"""Upstream failures become clear statuses (502, 504) with a one-line reason, and hurt nobody else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from servers import OriginServer, RawOrigin, Received

from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

import http.client
import select
import socket
import struct
import threading
from collections.abc import Iterator

from wire import exchange, read_response, through


def one_line_reason(response: bytes) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain; charset=utf-8" in head
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    return body.decode()


def get(proxy: RunningProxy, url: str, method: str = "GET") -> bytes:
    return exchange(proxy.address, f"{method} {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


@pytest.fixture
def closed_port() -> int:
    sock = socket.create_server(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full: connecting to it times out (the SYN is dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    yield port
    filler.close()
    listener.close()


def test_refused_origin_is_502(proxy: RunningProxy, closed_port: int) -> None:
    response = get(proxy, f"http://127.0.0.1:{closed_port}/")
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert f"Proxy-Status: {proxy.server.via_name}; error=connection_refused;".encode() in response
    assert one_line_reason(response) == f"fwdproxy: connection refused by 127.0.0.1:{closed_port}\n"


def test_dns_failure_is_502(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    def connect(address: Any, timeout: Any) -> Any:
        if address[0] == "no-such-host.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return socket.create_connection(address, timeout)

    proxy = proxy_factory(connect=connect)
    response = get(proxy, "http://no-such-host.test/")
    assert response.startswith(b"HTTP/1.1 502 ")
    assert b"error=dns_error" in response
    assert "cannot resolve no-such-host.test" in one_line_reason(response)
    # The same proxy still reaches real origins.
    assert get(proxy, origin.url("/bytes/2")).endswith(b"01")


def test_connect_timeout_is_504(proxy_factory: Callable[..., RunningProxy], full_backlog: int) -> None:
    proxy = proxy_factory(connect_timeout=0.3)
    response = get(proxy, f"http://127.0.0.1:{full_backlog}/")
    assert response.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert "timed out connecting to" in one_line_reason(response)


def test_connect_timeout_on_tunnel_is_504(proxy_factory: Callable[..., RunningProxy], full_backlog: int) -> None:
    proxy = proxy_factory(connect_timeout=0.3)
    response = exchange(proxy.address, f"CONNECT 127.0.0.1:{full_backlog} HTTP/1.1\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 504 ")


def test_read_timeout_is_504(proxy_factory: Callable[..., RunningProxy], origin: OriginServer) -> None:
    proxy = proxy_factory(timeout=0.3)
    response = get(proxy, origin.url("/hang"))
    assert response.startswith(b"HTTP/1.1 504 ")
    assert b"error=http_response_timeout" in response
    assert "no response from" in one_line_reason(response)


@pytest.mark.parametrize("reply", [
    b"HELLO\r\n\r\n",                                    # not HTTP at all
    b"HTTP/1.1 abc OK\r\n\r\n",                          # non-numeric status
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",            # field without a colon
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",   # obs-fold
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"",                                                 # closes without a word
], ids=["not-http", "bad-status", "no-colon", "obs-fold", "cl-and-te", "two-cl", "negative-cl",
        "unknown-te", "unasked-101", "silent-close"])
def test_malformed_or_ambiguous_response_is_502(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin], reply: Any) -> None:
    bad = raw_origin(reply)
    response = get(proxy, f"http://{bad.authority}/")
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), response
    one_line_reason(response)


def test_truncated_body_closes_the_client_connection(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    bad = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 100000)
    conn = http.client.HTTPConnection(*proxy.address, timeout=10)
    conn.request("GET", f"http://{bad.authority}/")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()


def test_truncated_chunked_body_never_gets_a_final_chunk(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    bad = raw_origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    response = get(proxy, f"http://{bad.authority}/")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"5\r\nhello\r\n")  # and then the connection closed: no "0\r\n\r\n"


def test_head_error_has_no_body(proxy: RunningProxy, closed_port: int) -> None:
    response = get(proxy, f"http://127.0.0.1:{closed_port}/", method="HEAD")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ") and body == b""


def test_a_hanging_origin_does_not_block_other_clients(proxy: RunningProxy, origin: OriginServer) -> None:
    stuck = socket.create_connection(proxy.address, timeout=10)
    stuck.sendall(f"GET {origin.url('/hang')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    for _ in range(3):
        _resp, body = through(proxy.address, "GET", origin.url("/bytes/3"))
        assert body == b"012"
    stuck.close()


def test_error_on_one_connection_leaves_the_others_alive(proxy: RunningProxy, origin: OriginServer, closed_port: int) -> None:
    good = http.client.HTTPConnection(*proxy.address, timeout=10)
    through(proxy.address, "GET", origin.url("/bytes/1"), conn=good)
    assert get(proxy, f"http://127.0.0.1:{closed_port}/").startswith(b"HTTP/1.1 502")
    _resp, body = through(proxy.address, "GET", origin.url("/bytes/2"), conn=good)
    assert body == b"01"
    good.close()


def test_origin_that_closes_idle_connections_is_not_reused_stale(proxy: RunningProxy, origin: OriginServer) -> None:
    def once(h: OriginConnection, r: Received) -> None:
        h.send_raw_head(200, [("Content-Length", "2")])  # says keep-alive, then closes anyway
        h.wfile.write(b"ok")
        h.close_connection = True

    origin.routes["/once"] = once
    for _ in range(5):
        resp, body = through(proxy.address, "GET", origin.url("/once"))
        assert (resp.status, body) == (200, b"ok")
    assert origin.connections == 5


def test_stale_reused_connection_is_retried_for_idempotent_requests(proxy: RunningProxy) -> None:
    """The origin drops a kept-alive connection just as the second request arrives."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    accepted = []

    def serve() -> None:
        for _ in range(2):  # both requests are held until both connections exist
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.recv(65536)
        for conn in accepted:
            conn.sendall(answer)
        # Whichever pooled connection the next request comes on is dropped unanswered...
        ready, _, _ = select.select(accepted, [], [], 10)
        ready[0].recv(65536)
        ready[0].close()
        # ...and the retry must arrive on a fresh connection.
        conn, _ = listener.accept()
        accepted.append(conn)
        conn.recv(65536)
        conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    c1 = http.client.HTTPConnection(*proxy.address, timeout=10)
    c2 = http.client.HTTPConnection(*proxy.address, timeout=10)
    # Two clients at once force two upstream connections; both are pooled.
    c1.request("GET", url)
    c2.request("GET", url)
    assert c1.getresponse().read() == b"ok" and c2.getresponse().read() == b"ok"
    resp, body = through(proxy.address, "GET", url, conn=c1)
    assert (resp.status, body) == (200, b"ok")
    thread.join(10)
    assert len(accepted) == 3
    for sock in (c1, c2):
        sock.close()
    listener.close()
    for conn in accepted:
        conn.close()


def test_non_idempotent_request_is_not_retried(proxy: RunningProxy) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        seen.append(conn.recv(65536))
        conn.close()  # drops the POST unanswered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_response(sock)[0].status == 200
        sock.sendall(f"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".encode())
        resp, _ = read_response(sock)
    assert resp.status == 502
    thread.join(10)
    listener.close()
    assert len(seen) == 1 and seen[0].startswith(b"POST / HTTP/1.1")


@pytest.mark.parametrize("size", [b"+5", b" 5", b"0x5", b"5_", b"-5", b"5 5", b"fffffffffffffffff"])
def test_lenient_chunk_sizes_from_origins_are_not_relayed(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin], size: Any) -> None:
    bad = raw_origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n")
    response = get(proxy, f"http://{bad.authority}/")
    # The head may already be out; what matters is that no complete body follows.
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ") and body == b"", response


def test_client_gone_mid_download_is_not_pooled(proxy: RunningProxy, origin: OriginServer) -> None:
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"GET {origin.url('/bytes/30000000')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    sock.close()  # mid-body
    proxy.wait_flows(1)
    _resp, body = through(proxy.address, "GET", origin.url("/bytes/5"))
    assert body == b"01234"
    assert origin.connections == 2  # the half-read upstream connection was closed, not reused
    assert proxy.wait_flows(2)[1].upstream_reused is False


def test_client_gone_mid_upload_is_not_pooled(proxy: RunningProxy, origin: OriginServer) -> None:
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode()
                 + b"x" * 200000)
    sock.close()  # mid-upload
    flows = proxy.wait_flows(1)
    assert flows[0].status in (0, 400)
    _resp, body = through(proxy.address, "GET", origin.url("/bytes/5"))
    assert body == b"01234"
    assert proxy.wait_flows(2)[1].upstream_reused is False


def test_client_reset_mid_chunked_upload_is_not_blamed_on_the_origin(proxy: RunningProxy, origin: OriginServer) -> None:
    """A chunked upload cut by the client ends the exchange at once, without a 504 wait."""
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "1000\r\n".encode() + b"y" * 100)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    (flow,) = proxy.wait_flows(1, timeout=5)
    assert "request body" in flow.error or flow.status == 400

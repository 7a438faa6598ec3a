"""CONNECT tunnels (RFC 9110 section 9.3.6): real TLS through the tunnel, early bytes, half-close, errors."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from servers import OriginServer

if TYPE_CHECKING:
    from conftest import RunningProxy

import http.client
import os
import socket
import struct
import subprocess
import threading

import requests
from wire import echoed, read_response


def connect(address: Any, target: str, version: str = "HTTP/1.1", host: bool = True) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    head = f"CONNECT {target} {version}\r\n" + (f"Host: {target}\r\n" if host else "") + "\r\n"
    sock.sendall(head.encode())
    return sock


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(1)
        if not piece:
            break
        data += piece
    return data


def test_http_client_set_tunnel_with_verified_tls(proxy: RunningProxy, tls_origin: OriginServer, client_context: ssl.SSLContext) -> None:
    conn = http.client.HTTPSConnection(*proxy.address, timeout=10, context=client_context)
    conn.set_tunnel("localhost", tls_origin.port)  # Python 3.11 sends CONNECT ... HTTP/1.0, no Host
    for path in ("/echo", "/bytes/100000"):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
    assert len(body) == 100000
    conn.close()
    assert tls_origin.connections == 1
    (flow,) = proxy.wait_flows(1)
    assert (flow.kind, flow.method, flow.status) == ("tunnel", "CONNECT", 200)
    assert flow.url == f"localhost:{tls_origin.port}"
    assert flow.bytes_down > 100000 and flow.bytes_up > 0


def test_wrong_ca_fails_the_handshake(proxy: RunningProxy, tls_origin: OriginServer) -> None:
    """Negative control: the tunnel is blind, so TLS really is checked end to end."""
    conn = http.client.HTTPSConnection(*proxy.address, timeout=10, context=ssl.create_default_context())
    conn.set_tunnel("localhost", tls_origin.port)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/echo")
    conn.close()


def test_requests_https_through_the_tunnel(proxy: RunningProxy, tls_origin: OriginServer, ca_file: str) -> None:
    with requests.Session() as session:
        r = session.post(tls_origin.url("/echo"), data=b"secret", proxies={"https": proxy.url},
                         verify=ca_file, timeout=10)
        assert r.status_code == 200 and r.json()["body"] == "secret"
        assert proxy.server.status()["tunnels"] == 1  # open while the session keeps it


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_curl_through_the_proxy(proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer, ca_file: str, scheme: Any) -> None:
    server = tls_origin if scheme == "https" else origin
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--noproxy", "", "-x", proxy.url, "--cacert", ca_file,
         server.url("/bytes/5000").replace("127.0.0.1", "localhost")],
        capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == (b"0123456789abcdef" * 313)[:5000]
    assert proxy.wait_flows(1)[0].kind == ("tunnel" if scheme == "https" else "http")


def test_curl_proxytunnel_for_plain_http(proxy: RunningProxy, origin: OriginServer) -> None:
    out = subprocess.run(["curl", "-sS", "--fail", "--noproxy", "", "-p", "-x", proxy.url,
                          origin.url("/echo")], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert proxy.wait_flows(1)[0].kind == "tunnel"


def test_bytes_pipelined_behind_connect_are_not_lost(proxy: RunningProxy, origin: OriginServer) -> None:
    sock = socket.create_connection(proxy.address, timeout=10)
    # CONNECT and the first request inside the tunnel in one write, before our 200.
    sock.sendall(f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n"
                 f"GET /echo HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
    assert read_head(sock) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    resp, body = read_response(sock)
    assert resp.status == 200 and echoed(body)["target"] == "/echo"
    sock.close()


def test_http10_connect_without_host(proxy: RunningProxy, origin: OriginServer) -> None:
    sock = connect(proxy.address, origin.authority, version="HTTP/1.0", host=False)
    assert read_head(sock).startswith(b"HTTP/1.1 200 ")
    sock.sendall(f"GET /bytes/4 HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
    assert read_response(sock)[1] == b"0123"
    sock.close()


def test_half_close_lets_the_answer_through(proxy: RunningProxy) -> None:
    """The client shuts its sending side; bytes the target sends afterwards still arrive."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sock = connect(proxy.address, f"127.0.0.1:{port}")
    peer, _ = listener.accept()
    assert read_head(sock).startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"question")
    sock.shutdown(socket.SHUT_WR)
    received = b""
    peer.settimeout(10)
    while piece := peer.recv(100):
        received += piece
    assert received == b"question"  # EOF reached the target too
    peer.sendall(b"answer after half-close")
    peer.close()
    data = b""
    while piece := sock.recv(100):
        data += piece
    assert data == b"answer after half-close"
    sock.close()
    listener.close()


def test_ipv6_literal_target(proxy: RunningProxy) -> None:
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = listener.getsockname()[1]
    sock = connect(proxy.address, f"[::1]:{port}")
    peer, _ = listener.accept()
    assert read_head(sock).startswith(b"HTTP/1.1 200 ")
    peer.sendall(b"hi")
    assert sock.recv(10) == b"hi"
    for s in (sock, peer, listener):
        s.close()


@pytest.mark.parametrize("target", ["example.test", "example.test:", "example.test:99999",
                                    "http://example.test:80", "user@example.test:443", "[::1:443",
                                    "exa mple.test:443"])
def test_bad_connect_targets_get_400(proxy: RunningProxy, target: Any) -> None:
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    data = b""
    while piece := sock.recv(4096):
        data += piece
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.count(b"\n", data.index(b"\r\n\r\n") + 4) == 1  # a one-line reason
    sock.close()


def test_connect_refused_gets_502(proxy: RunningProxy) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    sock = connect(proxy.address, f"127.0.0.1:{port}")
    data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"error=connection_refused" in data
    assert data.endswith(f"fwdproxy: connection refused by 127.0.0.1:{port}\n".encode())
    sock.close()


def test_tunnel_does_not_disturb_other_clients(proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer, client_context: ssl.SSLContext) -> None:
    hold = connect(proxy.address, origin.authority)
    assert read_head(hold).startswith(b"HTTP/1.1 200 ")
    conn = http.client.HTTPConnection(*proxy.address, timeout=10)
    conn.request("GET", origin.url("/bytes/3"))
    assert conn.getresponse().read() == b"012"
    conn.close()
    hold.close()


def test_tunnel_to_ipv6_origin_server_is_verified(proxy: RunningProxy, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    try:
        server = OriginServer(server_context, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server:
        conn = http.client.HTTPSConnection(*proxy.address, timeout=10, context=client_context)
        conn.set_tunnel("::1", server.port)
        conn.request("GET", "/bytes/10")
        assert conn.getresponse().read() == b"0123456789"
        conn.close()


def test_idle_tunnel_is_closed(proxy_factory: Callable[..., RunningProxy]) -> None:
    proxy = proxy_factory(tunnel_idle_timeout=0.3)
    listener = socket.create_server(("127.0.0.1", 0))
    sock = connect(proxy.address, f"127.0.0.1:{listener.getsockname()[1]}")
    peer, _ = listener.accept()
    assert read_head(sock).startswith(b"HTTP/1.1 200 ")
    assert sock.recv(10) == b""  # the proxy closed it: nothing moved for longer than the timeout
    (flow,) = proxy.wait_flows(1)
    assert "idle" in flow.error
    for s in (sock, peer, listener):
        s.close()


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_full_duplex_bulk_both_ways(proxy: RunningProxy, splice: Any) -> None:
    """Both sides send 8 MB at once; the relay's backpressure must not deadlock or lose a byte."""
    proxy.server.relay._splice = splice and hasattr(os, "splice")  # both relay paths, where both exist
    listener = socket.create_server(("127.0.0.1", 0))
    sock = connect(proxy.address, f"127.0.0.1:{listener.getsockname()[1]}")
    peer, _ = listener.accept()
    assert read_head(sock).startswith(b"HTTP/1.1 200 ")
    size = 8 * 1024 * 1024
    up, down = bytes(range(256)) * (size // 256), bytes(reversed(range(256))) * (size // 256)
    got: dict[str, bytes] = {}

    def drain(name: str, s: socket.socket) -> None:
        chunks, total = [], 0
        while total < size:
            piece = s.recv(1 << 20)
            if not piece:
                break
            chunks.append(piece)
            total += len(piece)
        got[name] = b"".join(chunks)

    readers = [threading.Thread(target=drain, args=("at_peer", peer)),
               threading.Thread(target=drain, args=("at_client", sock))]
    writers = [threading.Thread(target=sock.sendall, args=(up,)),
               threading.Thread(target=peer.sendall, args=(down,))]
    for t in readers + writers:
        t.start()
    for t in readers + writers:
        t.join(30)
    assert got["at_peer"] == up and got["at_client"] == down
    for s in (sock, peer, listener):
        s.close()
    flow = proxy.wait_flows(1)[0]
    assert (flow.bytes_up, flow.bytes_down) == (size, size)


def test_stopping_the_server_closes_tunnels(proxy_factory: Callable[..., RunningProxy]) -> None:
    proxy = proxy_factory()
    listener = socket.create_server(("127.0.0.1", 0))
    sock = connect(proxy.address, f"127.0.0.1:{listener.getsockname()[1]}")
    peer, _ = listener.accept()
    assert read_head(sock).startswith(b"HTTP/1.1 200 ")
    proxy.server.stop(grace=0)
    assert sock.recv(10) == b""
    peer.settimeout(10)
    assert peer.recv(10) == b""
    for s in (sock, peer, listener):
        s.close()


def test_a_failed_tunnel_never_leaks_bytes_into_another(proxy: RunningProxy) -> None:
    """A client that resets while its tunnel is mid-delivery must not strand bytes in a
    buffer that another tunnel then delivers."""
    listener = socket.create_server(("127.0.0.1", 0))
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    for _ in range(20):
        victim = connect(proxy.address, target)
        victim_peer, _ = listener.accept()
        assert read_head(victim).startswith(b"HTTP/1.1 200 ")
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            victim_peer.sendall(b"X" * 2_000_000)  # more than the victim will ever read
        except OSError:
            pass
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.close()  # RST, with the relay holding undelivered bytes for it
        try:
            victim_peer.sendall(b"X" * 100_000)
        except OSError:
            pass
        sock = connect(proxy.address, target)
        peer, _ = listener.accept()
        assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        peer.sendall(b"hello")
        sock.settimeout(10)
        assert sock.recv(100) == b"hello"
        for s in (sock, peer, victim_peer):
            s.close()
    listener.close()

"""Idle keep-alive connections wait in one epoll, not in a thread each, and are served as before.

Between requests a persistent client connection is parked; its next request
is read by a worker thread as if it had never left. The idle and header
timeouts still hold, pipelined requests are read from the buffer without
parking, and stopping the server closes parked connections.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from conftest import RunningProxy
from servers import OriginServer
from waiting import wait_until
from wire import read_response

CLIENTS = 300


def ask(sock: socket.socket, url: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    resp, body = read_response(sock)
    return resp.status, body


def parked(proxy: RunningProxy) -> int:
    return int(proxy.server.status()["parked_clients"])


def workers(proxy: RunningProxy) -> int:
    """Threads serving this proxy's connections, idle ones waiting for work included."""
    name = f"fwdproxy-{proxy.server.port}-worker"
    return sum(1 for t in threading.enumerate() if t.name == name)


def test_idle_keep_alive_clients_hold_no_thread(proxy: RunningProxy, origin: OriginServer) -> None:
    url = origin.url("/bytes/10")
    socks = [socket.create_connection(proxy.address, timeout=10) for _ in range(CLIENTS)]
    try:
        for sock in socks:
            assert ask(sock, url) == (200, b"0123456789")
        wait_until(lambda: parked(proxy) == CLIENTS)
        # A thread per connection would be 300 threads; parked, there are a few, all idle.
        assert workers(proxy) < CLIENTS // 4
        assert proxy.server.status()["client_connections"] == CLIENTS
        for sock in socks:  # each is still served on its next request
            status, body = ask(sock, url)
            assert status == 200 and len(body) == 10
        wait_until(lambda: parked(proxy) == CLIENTS)
        assert workers(proxy) < CLIENTS // 4
        with socket.create_connection(proxy.address, timeout=10) as scraper:
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            metrics = read_response(scraper)[1].decode()
        assert f"fwdproxy_parked_client_connections {CLIENTS}" in metrics
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: proxy.server.status()["client_connections"] == 0)
    assert parked(proxy) == 0


def test_parked_client_is_closed_after_the_idle_timeout(proxy_factory: Callable[..., RunningProxy],
                                                        origin: OriginServer) -> None:
    proxy = proxy_factory(client_idle_timeout=0.5)
    with socket.create_connection(proxy.address, timeout=10) as sock:
        assert ask(sock, origin.url("/bytes/3"))[0] == 200
        assert sock.recv(1) == b""  # closed by the proxy, not by our 10 s timeout
    wait_until(lambda: proxy.server.status()["client_connections"] == 0)
    assert parked(proxy) == 0


def test_parked_client_keeps_its_connection_within_the_idle_timeout(proxy: RunningProxy,
                                                                    origin: OriginServer) -> None:
    """Negative control for the one above: with the default idle timeout the connection stays."""
    with socket.create_connection(proxy.address, timeout=10) as sock:
        assert ask(sock, origin.url("/bytes/3"))[0] == 200
        wait_until(lambda: parked(proxy) == 1)
        sock.settimeout(0.3)
        try:
            got = sock.recv(1)
        except TimeoutError:
            got = None
        assert got is None  # neither data nor a close
        assert ask(sock, origin.url("/bytes/3"))[0] == 200


def test_half_a_head_after_parking_gets_408(proxy_factory: Callable[..., RunningProxy],
                                            origin: OriginServer) -> None:
    proxy = proxy_factory(header_timeout=0.5)
    with socket.create_connection(proxy.address, timeout=10) as sock:
        assert ask(sock, origin.url("/bytes/3"))[0] == 200
        wait_until(lambda: parked(proxy) == 1)
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost:".encode())
        resp, body = read_response(sock)
        assert resp.status == 408
        assert b"request head not received" in body
    assert len(origin.received) == 1  # the half request never reached the origin


def test_pipelined_requests_are_read_from_the_buffer(proxy: RunningProxy, origin: OriginServer) -> None:
    one = f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(one * 3)
        for _ in range(3):
            resp, body = read_response(sock)
            assert (resp.status, len(body)) == (200, 5)
        wait_until(lambda: parked(proxy) == 1)
        status, body = ask(sock, origin.url("/bytes/7"))
        assert (status, len(body)) == (200, 7)
    assert len(origin.received) == 4


def test_stopping_closes_parked_connections(proxy_factory: Callable[..., RunningProxy],
                                            origin: OriginServer) -> None:
    proxy = proxy_factory()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        assert ask(sock, origin.url("/bytes/3"))[0] == 200
        wait_until(lambda: parked(proxy) == 1)
        proxy.server.stop(grace=30)  # nothing in flight: no wait for the grace
        assert sock.recv(1) == b""
    assert parked(proxy) == 0
    assert proxy.server.status()["client_connections"] == 0

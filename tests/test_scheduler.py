"""A few threads serve every connection: what a client of a busy proxy notices.

With one thread computing at a time (``threads=1``, the default), an exchange
that waits on its origin must not hold up the others, many waiting exchanges
must all be in flight at once, a client that pipelines must not starve one
that does not, and connections that say nothing hold no thread.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import RunningProxy
from servers import OriginServer
from waiting import wait_until
from wire import read_response

from proxy.testing.origins import OriginConnection, OriginRequest


def ask(sock: socket.socket, url: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    resp, body = read_response(sock)
    return resp.status, body


class Pipelined:
    """Responses read one after another from one buffered reader (pipelined responses share it)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def makefile(self, mode: str) -> Pipelined:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass  # http.client closes its file after each response: keep ours for the next

    def status(self) -> int:
        resp = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        resp.begin()
        resp.read()
        return resp.status


def scheduler_threads(proxy: RunningProxy) -> int:
    name = f"fwdproxy-{proxy.server.port}-worker"
    return sum(1 for t in threading.enumerate() if t.name == name)


@pytest.fixture
def gated(origin: OriginServer) -> Iterator[tuple[OriginServer, threading.Event, list[str]]]:
    """/gate answers only once the test opens the gate; /fast at once. ``arrived`` lists the gated."""
    gate, arrived = threading.Event(), []

    def held(h: OriginConnection, r: OriginRequest) -> None:
        arrived.append(r.target)
        gate.wait(20)
        h.send_raw_head(200, [("Content-Length", "4")])
        h.wfile.write(b"held")

    origin.routes["/gate"] = held
    yield origin, gate, arrived
    gate.set()


def test_an_exchange_waiting_on_its_origin_does_not_hold_up_others(
        proxy_factory: Callable[..., RunningProxy],
        gated: tuple[OriginServer, threading.Event, list[str]]) -> None:
    origin, gate, arrived = gated
    proxy = proxy_factory(threads=1)
    results: list[tuple[int, bytes]] = []
    with socket.create_connection(proxy.address, timeout=20) as slow:
        waiter = threading.Thread(target=lambda: results.append(ask(slow, origin.url("/gate"))))
        waiter.start()
        assert wait_until(lambda: arrived == ["/gate"])
        with socket.create_connection(proxy.address, timeout=10) as fast:
            for _ in range(5):  # served while the one thread's first exchange still waits
                assert ask(fast, origin.url("/bytes/5")) == (200, b"01234")
        assert results == []  # the gated exchange is still waiting
        gate.set()
        waiter.join(20)
    assert results == [(200, b"held")]


def test_many_waiting_exchanges_are_in_flight_together(
        proxy_factory: Callable[..., RunningProxy],
        gated: tuple[OriginServer, threading.Event, list[str]]) -> None:
    origin, gate, arrived = gated
    proxy = proxy_factory(threads=1)
    clients = 20
    results: list[tuple[int, bytes]] = []
    socks = [socket.create_connection(proxy.address, timeout=20) for _ in range(clients)]
    try:
        threads = [threading.Thread(target=lambda s=s: results.append(ask(s, origin.url(f"/gate/{id(s)}"))))
                   for s in socks]
        for t in threads:
            t.start()
        # Every request reaches the origin before any is answered: none waits for a thread.
        assert wait_until(lambda: len(arrived) == clients), proxy.server.scheduler.stats()
        gate.set()
        for t in threads:
            t.join(20)
        assert results == [(200, b"held")] * clients
    finally:
        for s in socks:
            s.close()


def test_a_pipelining_client_does_not_starve_another(proxy_factory: Callable[..., RunningProxy],
                                                     origin: OriginServer) -> None:
    proxy = proxy_factory(threads=1)
    burst = 400
    one = f"GET {origin.url('/bytes/5')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(proxy.address, timeout=20) as greedy, \
            socket.create_connection(proxy.address, timeout=20) as polite:
        assert ask(polite, origin.url("/bytes/1"))[0] == 200  # connected and parked
        greedy.sendall(one * burst)
        responses = Pipelined(greedy)
        assert responses.status() == 200  # the burst is being served
        assert ask(polite, origin.url("/bytes/2")) == (200, b"01")
        # The polite client was answered in its turn, not after the whole burst.
        served_before = sum(1 for r in origin.received if r.target.endswith("/bytes/5"))
        assert served_before < burst
        for _ in range(burst - 1):
            assert responses.status() == 200


def test_connections_that_send_nothing_hold_no_thread(proxy_factory: Callable[..., RunningProxy],
                                                      origin: OriginServer) -> None:
    proxy = proxy_factory(threads=1)
    socks = [socket.create_connection(proxy.address, timeout=10) for _ in range(200)]
    try:
        assert wait_until(lambda: proxy.server.status()["parked_clients"] == 200)
        assert scheduler_threads(proxy) < 20  # a thread each would be 200
        with socket.create_connection(proxy.address, timeout=10) as scraper:
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            metrics = read_response(scraper)[1].decode()
        threads = next(line for line in metrics.splitlines() if line.startswith("fwdproxy_threads "))
        assert 1 <= float(threads.split()[1]) < 20
        for sock in socks[::20]:
            assert ask(sock, origin.url("/bytes/3")) == (200, b"012")
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: proxy.server.status()["client_connections"] == 0)


def test_a_slow_request_head_does_not_hold_the_only_slot(proxy_factory: Callable[..., RunningProxy],
                                                         origin: OriginServer) -> None:
    """Reading a head that is not all here may wait on the client: it runs outside the slot at once,
    not after the monitor's 2 ms (turned off here, so holding the slot would hold everyone up)."""
    proxy = proxy_factory(threads=1)
    proxy.server.scheduler.long = 3600.0  # no rescue by the monitor: only the handler's own care
    slow = [socket.create_connection(proxy.address, timeout=10) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(f"GET {origin.url('/bytes/4')} HTTP/1.1\r\nHo".encode())
        assert wait_until(lambda: proxy.server.status()["threads"] > 20)  # each waits on its own thread
        with socket.create_connection(proxy.address, timeout=10) as fast:
            assert ask(fast, origin.url("/bytes/5")) == (200, b"01234")
        for sock in slow:  # the slow heads complete, and are answered
            sock.sendall(b"st: x\r\n\r\n")
            assert read_response(sock)[0].status == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_slow_upload_does_not_hold_the_only_slot(proxy_factory: Callable[..., RunningProxy],
                                                   origin: OriginServer) -> None:
    """Reading a body that is not all here may wait on the client, like a slow head."""
    proxy = proxy_factory(threads=1)
    proxy.server.scheduler.long = 3600.0  # no rescue by the monitor
    head = f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n".encode()
    slow = [socket.create_connection(proxy.address, timeout=10) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(head + b"01234")  # half the body
        assert wait_until(lambda: proxy.server.status()["threads"] > 20)  # each waits on its own thread
        with socket.create_connection(proxy.address, timeout=10) as fast:
            assert ask(fast, origin.url("/bytes/5")) == (200, b"01234")
        for sock in slow:  # the rest of each body comes, and each upload is answered
            sock.sendall(b"56789")
            resp, body = read_response(sock)
            assert resp.status == 200 and b'"body": "0123456789"' in body
    finally:
        for sock in slow:
            sock.close()

"""Peers that stop draining: every blocking write is bounded, and the slot, thread and upstream freed.

A client that asks for a large body and then stops reading, an origin that
stops reading an upload, and a tunnel side that stops reading while the other
keeps the tunnel busy: each is cut after its timeout, the flow says why, and
the proxy serves newcomers again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import RunningProxy
from servers import accept_forever, spawn
from waiting import wait_until
from wire import exchange

if TYPE_CHECKING:
    from servers import OriginServer, RawOrigin


TIMEOUT = 1.0


class EndlessOrigin:
    """Answers every request with a huge Content-Length and writes until the proxy stops taking bytes.

    With ``tunnel=True`` it speaks no HTTP: it reads and discards what arrives
    and sends bytes without end. Counts connections opened and ended.

    Until ``flood`` is set it only trickles a byte now and then after the head: the
    exchange stays alive (the proxy never waits on it for long) but no buffer fills,
    so no client stalls yet; a test can look at the proxy while every slot is held.
    """

    TRICKLE = 0.1  # seconds between bytes before the flood: well inside any timeout used here

    def __init__(self, *, tunnel: bool = False) -> None:
        self.tunnel = tunnel
        self.flood = threading.Event()
        self.flood.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.opened = 0
        self.ended = 0
        self.sent = 0
        self._lock = threading.Condition()
        accept_forever(self.listener, self._accepted)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _accepted(self, conn: socket.socket) -> None:
        with self._lock:
            self.opened += 1
        spawn(self._answer, conn)

    def _answer(self, conn: socket.socket) -> None:
        chunk = b"x" * 65536
        try:
            if self.tunnel:
                threading.Thread(target=self._discard, args=(conn,), daemon=True).start()
            else:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
            while not self.flood.wait(self.TRICKLE):
                conn.sendall(b"x")
            while True:
                conn.sendall(chunk)
                with self._lock:
                    self.sent += len(chunk)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.ended += 1
                self._lock.notify_all()

    def _discard(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def wait_ended(self, count: int, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.ended >= count, timeout)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def endless() -> Iterator[Callable[..., EndlessOrigin]]:
    made: list[EndlessOrigin] = []

    def make(**kwargs: bool) -> EndlessOrigin:
        made.append(EndlessOrigin(**kwargs))
        return made[-1]

    yield make
    for origin in made:
        origin.close()


def deaf_client(address: tuple[str, int], request: bytes) -> socket.socket:
    """A client that sends its request and never reads (a small receive buffer fills at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    sock.sendall(request)
    return sock


def newcomer_status(address: tuple[str, int], url: str) -> int:
    raw = exchange(address, f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return int(raw.split(b" ", 2)[1]) if raw else 0


def served_within(address: tuple[str, int], url: str, seconds: float) -> int:
    """A newcomer's status; 503s (a slot not yet handed back) are retried for up to ``seconds``."""
    seen: list[int] = []

    def answered() -> bool:
        seen.append(newcomer_status(address, url))
        return seen[-1] != 503

    wait_until(answered, seconds, interval=0.05)
    return seen[-1]


def test_clients_that_stop_reading_are_cut_after_timeout_and_free_their_slots(proxy_factory: Callable[..., RunningProxy], endless: Callable[..., EndlessOrigin], origin: OriginServer) -> None:
    proxy: RunningProxy = proxy_factory(timeout=TIMEOUT, max_clients=20)
    source = endless()
    source.flood.clear()  # trickle first: every slot held, no client stalled yet (however slow the machine)
    request = f"GET http://{source.authority}/huge HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    deaf = [deaf_client(proxy.address, request) for _ in range(20)]
    try:
        assert wait_until(lambda: proxy.server.status()["client_connections"] == 20 and source.opened == 20)
        # Negative control: while they hold every slot, a newcomer is turned away.
        assert newcomer_status(proxy.address, origin.url("/bytes/10")) == 503
        assert not proxy.flows, "a slow but reading client was cut"
        flooded = time.time()
        source.flood.set()  # now every client stops keeping up
        flows = proxy.wait_flows(20, timeout=TIMEOUT + 20)
        assert all(f.error == f"client stopped reading for {TIMEOUT:g}s" for f in flows), flows
        assert all(f.status == 200 and f.bytes_down > 0 for f in flows)
        # Cut after TIMEOUT of no progress, not much later (the margin is for a loaded machine).
        stalled_for = [f.started + f.duration_ms / 1000 - flooded for f in flows]
        assert all(TIMEOUT - 0.05 <= s < TIMEOUT + 5 for s in stalled_for), stalled_for
        # Each upstream connection was closed with its exchange, not kept streaming.
        assert source.wait_ended(20, timeout=10)
        assert served_within(proxy.address, origin.url("/bytes/10"), 10) == 200
    finally:
        for sock in deaf:
            sock.close()


def test_origin_that_stops_reading_an_upload_gets_504(proxy_factory: Callable[..., RunningProxy], raw_origin: Callable[..., RawOrigin]) -> None:
    silent = raw_origin(b"", then="hang")  # reads the head, then neither reads nor answers
    proxy: RunningProxy = proxy_factory(timeout=TIMEOUT)
    body = b"y" * (32 << 20)
    head = (f"POST http://{silent.authority}/upload HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(proxy.address, timeout=15) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, head + body), daemon=True)
        sender.start()
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 504 ")
    assert b"stopped reading the request body" in reply
    flow = proxy.wait_flows(1)[0]
    assert flow.status == 504 and "stopped reading" in flow.error


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_tunnel_side_that_stops_reading_is_cut_while_the_other_keeps_sending(proxy_factory: Callable[..., RunningProxy], endless: Callable[..., EndlessOrigin]) -> None:
    proxy: RunningProxy = proxy_factory(tunnel_idle_timeout=TIMEOUT)
    source = endless(tunnel=True)  # sends without end, swallows whatever arrives
    sock = deaf_client(proxy.address, f"CONNECT {source.authority} HTTP/1.1\r\n\r\n".encode())
    stop = threading.Event()

    def chatter() -> None:  # the upload keeps the tunnel busy, so it is never idle
        while not stop.wait(0.05):
            try:
                sock.send(b"ping")
            except OSError:
                return

    talker = threading.Thread(target=chatter, daemon=True)
    talker.start()
    try:
        flow = proxy.wait_flows(1, timeout=TIMEOUT + 8)[0]
    finally:
        stop.set()
        talker.join()
        sock.close()
    assert flow.error == f"client stopped reading for {TIMEOUT:g}s"
    assert flow.bytes_up > 0
    # Buffered bytes are capped: the origin would have sent without end.
    assert flow.bytes_down < 32 << 20
    assert (TIMEOUT + 0) * 1000 <= flow.duration_ms < (TIMEOUT + 4) * 1000


def test_quiet_tunnel_whose_client_reads_is_not_cut_for_stalling(proxy_factory: Callable[..., RunningProxy], endless: Callable[..., EndlessOrigin]) -> None:
    """Control: a client that keeps reading keeps its tunnel however long the download runs."""
    proxy: RunningProxy = proxy_factory(tunnel_idle_timeout=TIMEOUT)
    source = endless(tunnel=True)
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"CONNECT {source.authority} HTTP/1.1\r\n\r\n".encode())
        received, until = 0, time.monotonic() + TIMEOUT * 2.5
        while time.monotonic() < until:
            received += len(sock.recv(1 << 20))
        assert proxy.server.relay.count() == 1
    assert received > 1 << 20


@pytest.mark.parametrize("framing", ["Content-Length: 10\r\n\r\nabc", "Transfer-Encoding: chunked\r\n\r\n5\r\nab"])
def test_client_whose_body_stops_arriving_gets_408_and_the_origin_is_let_go(
        proxy_factory: Callable[..., RunningProxy], origin: OriginServer, framing: str) -> None:
    # Only the read side is cut when the body stalls: the client is told, not just dropped.
    proxy = proxy_factory(timeout=TIMEOUT)
    reply = exchange(proxy.address, f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\n{framing}".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"\r\nProxy-Status: " in head
    assert body == f"fwdproxy: request body not received within {TIMEOUT:g}s\n".encode()
    # Negative control: the same proxy serves a whole request at once.
    whole = exchange(proxy.address, f"POST {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                    "Connection: close\r\n\r\nabc".encode())
    assert whole.startswith(b"HTTP/1.1 200 ")

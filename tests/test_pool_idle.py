"""Idle upstream connections close on time with no further traffic; the pool is bounded in total."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import RunningProxy
from servers import accept_forever, spawn
from waiting import wait_until
from wire import exchange

if TYPE_CHECKING:
    from collections.abc import Callable


class KeepAliveOrigin:
    """Answers every request on a kept-alive connection; notes when the proxy closes one.

    ``close_after_reply`` makes the origin close its side after one response,
    as an origin with a short keep-alive timeout does.
    """

    def __init__(self, *, close_after_reply: bool = False) -> None:
        self.close_after_reply = close_after_reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.closed_by_proxy = threading.Semaphore(0)
        self.proxy_closed = 0
        accept_forever(self.listener, lambda conn: spawn(self._answer, conn))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/"

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            try:
                while piece := conn.recv(65536):
                    data += piece
                    while b"\r\n\r\n" in data:
                        _, _, data = data.partition(b"\r\n\r\n")
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        if self.close_after_reply:
                            return
            except OSError:
                pass
            self.proxy_closed += 1
            self.closed_by_proxy.release()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def keepalive_origin() -> Iterator[type[KeepAliveOrigin]]:
    made: list[KeepAliveOrigin] = []

    def make(**kwargs: bool) -> KeepAliveOrigin:
        made.append(KeepAliveOrigin(**kwargs))
        return made[-1]

    yield make  # type: ignore[misc]
    for origin in made:
        origin.close()


def get(proxy: RunningProxy, url: str) -> bytes:
    return exchange(proxy.address, f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


def test_idle_upstream_connection_closes_after_its_idle_time_with_no_more_traffic(proxy_factory: Callable[..., RunningProxy], keepalive_origin: Callable[..., KeepAliveOrigin]) -> None:
    proxy = proxy_factory(pool_idle_timeout=0.5)
    origin = keepalive_origin()
    assert get(proxy, origin.url).endswith(b"\r\n\r\nok")
    assert proxy.server.pool.idle_count() == 1
    assert origin.closed_by_proxy.acquire(timeout=3)  # closed by the sweep: nothing else happened
    assert proxy.server.pool.idle_count() == 0


def test_idle_upstream_connection_within_its_idle_time_stays_open(proxy_factory: Callable[..., RunningProxy], keepalive_origin: Callable[..., KeepAliveOrigin]) -> None:
    """Control: with a long idle time, the same connection is still pooled and reused."""
    proxy = proxy_factory(pool_idle_timeout=30)
    origin = keepalive_origin()
    get(proxy, origin.url)
    assert not origin.closed_by_proxy.acquire(timeout=1.5)
    get(proxy, origin.url)
    assert proxy.server.pool.reused == 1


def test_upstream_connection_the_origin_closed_is_not_left_in_close_wait(proxy_factory: Callable[..., RunningProxy], keepalive_origin: Callable[..., KeepAliveOrigin]) -> None:
    proxy = proxy_factory(pool_idle_timeout=30)
    origin = keepalive_origin(close_after_reply=True)
    # The origin closes right after its response, which says nothing of closing: the proxy pools it.
    get(proxy, origin.url)
    assert wait_until(lambda: proxy.server.pool.idle_count() == 0, 10), \
        "the pool kept a connection its origin had closed"


def test_pool_is_bounded_in_total_and_lets_the_oldest_go(proxy_factory: Callable[..., RunningProxy], keepalive_origin: Callable[..., KeepAliveOrigin]) -> None:
    proxy = proxy_factory(pool_max_idle_total=2)
    origins = [keepalive_origin() for _ in range(3)]
    for origin in origins:
        get(proxy, origin.url)
    assert proxy.server.pool.idle_count() == 2
    assert origins[0].closed_by_proxy.acquire(timeout=3)  # the oldest made room
    assert origins[1].proxy_closed == origins[2].proxy_closed == 0

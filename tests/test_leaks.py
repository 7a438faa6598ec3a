"""After 10,000 mixed good and bad exchanges, descriptors and threads are back to their idle level."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import OriginServer, RawOrigin
from subprocs import churn_proxy
from waiting import wait_until
from wire import exchange

EXCHANGES = 10_000
WORKERS = 8


@pytest.fixture(scope="module")
def proxy_pid_address() -> Iterator[tuple[int, tuple[str, int]]]:
    yield from churn_proxy()


def talk(address: tuple[str, int], data: bytes, *, read: bool = True, half_close: bool = False) -> bytes:
    return exchange(address, data, half_close=half_close, read=read)


def keep_alive(address: tuple[str, int], url: str) -> bytes:
    """One request on a persistent connection, which the proxy parks until the client closes it."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", url)
        return conn.getresponse().read()
    finally:
        conn.close()


def park_one(address: tuple[str, int], url: str) -> None:
    """A keep-alive connection held until the proxy has parked it, then closed."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", url)
        conn.getresponse().read()
        wait_until(lambda: health(address)["parked_clients"] >= 1)
    finally:
        conn.close()


def health(address: tuple[str, int]) -> dict[str, int]:
    raw = talk(address, b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    return json.loads(raw.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def usage(pid: int, address: tuple[str, int]) -> tuple[int, int]:
    """(descriptors not held by the upstream pool, threads not parked for reuse) of the proxy."""
    status = health(address)
    fds = len(os.listdir(f"/proc/{pid}/fd")) - status["upstream_idle"]
    threads = int(re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))  # type: ignore[union-attr]
    return fds, threads - status["idle_workers"]


def settled(pid: int, address: tuple[str, int], at_most: tuple[int, int] | None = None) -> tuple[int, int]:
    """Usage once every client has gone. A handler thread closes its socket just after it
    reports done, so this waits (up to 15 s) until the figures reach ``at_most``, or, for a
    baseline, until two readings 0.1 s apart agree."""
    seen: list[tuple[int, int]] = []

    def reached() -> bool:
        now = usage(pid, address)
        last = seen[-1] if seen else None
        seen.append(now)
        if health(address)["client_connections"] > 1:
            return False
        return now == last if at_most is None else now[0] <= at_most[0] and now[1] <= at_most[1]

    wait_until(reached, 15, interval=0.1)
    return seen[-1]


def mixed_exchanges(address: tuple[str, int], origin: OriginServer, truncating: RawOrigin,
                    closed_port: int) -> list[Callable[[], bytes]]:
    o = origin.url("")
    return [
        lambda: talk(address, f"GET {o}/bytes/100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()),
        lambda: talk(address, f"POST {o}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()),
        lambda: talk(address, f"GET {o}/chunked/5000 HTTP/1.0\r\n\r\n".encode()),
        lambda: talk(address, b"GET http://127.0.0.1:1/ HTTP/1.1\r\nBad Header\r\n\r\n"),          # 400
        lambda: talk(address, f"GET http://127.0.0.1:{closed_port}/ HTTP/1.1\r\nConnection: close\r\n\r\n".encode()),  # 502
        lambda: talk(address, f"GET http://{truncating.authority}/ HTTP/1.1\r\n\r\n".encode()),   # truncated body
        lambda: talk(address, f"CONNECT {origin.authority} HTTP/1.1\r\n\r\nGET /bytes/10 HTTP/1.1\r\n"
                              f"Host: x\r\nConnection: close\r\n\r\n".encode()),                      # tunnel
        lambda: talk(address, f"GET {o}/bytes/300000 HTTP/1.1\r\nHost: x\r\n\r\n".encode(), read=False),  # gone mid-body
        lambda: talk(address, f"POST {o}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc".encode(),
                     half_close=True),                                                                # gone mid-upload
        lambda: keep_alive(address, f"{o}/bytes/10"),                                              # parked, then gone
        lambda: talk(address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 10, half_close=True),  # TLS at a plain port
    ]


def churn(kinds: list[Callable[[], bytes]], exchanges: int, workers: int) -> list[BaseException]:
    """Run ``exchanges`` of ``kinds`` in turn, spread over ``workers`` threads; what they raised."""
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            for i in range(start, exchanges, workers):
                kinds[i % len(kinds)]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


@pytest.mark.xdist_group("stress")  # one churn at a time, beside the lighter tests
@pytest.mark.slow
def test_no_descriptor_or_thread_leaks(proxy_pid_address: tuple[int, tuple[str, int]]) -> None:
    pid, address = proxy_pid_address
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    truncating = RawOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")
    with OriginServer() as origin:
        kinds = mixed_exchanges(address, origin, truncating, closed_port)
        for kind in kinds:  # warm up: pool, watchdog, lazily created threads
            kind()
        park_one(address, f"{origin.url('')}/bytes/10")  # the parker's thread and epoll start lazily too
        fds_before, threads_before = settled(pid, address)
        errors = churn(kinds, EXCHANGES, WORKERS)
        assert not errors, errors[:3]
        fds_after, threads_after = settled(pid, address, at_most=(fds_before, threads_before))
    truncating.close()
    print(f"\nleak check after {EXCHANGES} exchanges: descriptors {fds_before} -> {fds_after}, "
          f"threads {threads_before} -> {threads_after}")
    assert fds_after <= fds_before
    assert threads_after <= threads_before

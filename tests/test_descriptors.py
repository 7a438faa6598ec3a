"""Out of file descriptors: every client gets an answer or a close, the proxy idles, then recovers.

The proxy runs as a subprocess with a small RLIMIT_NOFILE (soft and hard,
so it cannot lift it). Clients whose origin holds its answer keep every
slot busy; 400 more connect at once.
"""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import accept_forever, spawn
from subprocs import Running

LIMIT = 100
FLOOD = 400


class HeldOrigin:
    """Reads each request, then answers only once ``release`` is set."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)
        accept_forever(self.listener, lambda conn: spawn(self._answer, conn))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                self.waiting.release()
                self.release.wait(60)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@pytest.fixture
def small_proxy() -> Iterator[tuple[subprocess.Popen[str], tuple[str, int], str]]:
    r = Running("--port", "0", "--workers", "1", "--log-level", "warning", "--timeout", "30",
                preamble=True, preexec_fn=_limit_descriptors)
    yield r.proc, r.address, r.head
    r.proc.terminate()
    r.proc.communicate(timeout=10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def request(address: tuple[str, int], url: str) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    try:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    except OSError:
        sock.close()
        raise
    return sock


def outcomes(socks: list[socket.socket], timeout: float) -> dict[str, int]:
    """Read every socket to its end: how many got a 503, another answer, a bare close, or nothing."""
    got = {sock: b"" for sock in socks}
    open_ = set(socks)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_)[:500], [], [], 0.5)
        for sock in readable:
            try:
                piece = sock.recv(65536)
            except OSError:
                piece = b""
            got[sock] += piece
            if not piece:
                open_.discard(sock)
    counts = {"503": 0, "other": 0, "closed": 0, "hanging": len(open_)}
    for sock, data in got.items():
        if sock in open_:
            continue
        if data.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: " in data:
            counts["503"] += 1
        elif data:
            counts["other"] += 1
        else:
            counts["closed"] += 1
    return counts


def test_out_of_descriptors_every_client_is_answered_or_closed_then_recovers(small_proxy: tuple[subprocess.Popen[str], tuple[str, int], str]) -> None:
    proc, address, startup = small_proxy
    match = re.search(r"max-clients lowered from 2048 to (\d+): the descriptor limit \(RLIMIT_NOFILE\) "
                      rf"is {LIMIT}", startup)
    assert match, startup
    slots = int(match.group(1))
    origin = HeldOrigin()
    held = [request(address, origin.url) for _ in range(slots)]
    for _ in range(slots):
        assert origin.waiting.acquire(timeout=10)  # every slot busy, its origin holding the answer
    flood = []
    for _ in range(FLOOD):
        try:
            flood.append(request(address, origin.url))
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused outright: that is a close too
    try:
        counts = outcomes(flood, timeout=20)
        assert counts["hanging"] == 0, counts
        assert counts["503"] >= FLOOD // 2, counts  # mostly real answers, not bare closes
        assert counts["other"] == 0, counts
        # Full, with clients still waiting on their origin: the proxy must idle, not spin.
        before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(proc.pid) - before < 0.3
        origin.release.set()
        assert outcomes(held, timeout=10) == {"503": 0, "other": slots, "closed": 0, "hanging": 0}
        # Recovered: a newcomer is served.
        with request(address, origin.url) as late:
            assert outcomes([late], timeout=10)["other"] == 1
    finally:
        for sock in flood + held:
            sock.close()
        origin.listener.close()

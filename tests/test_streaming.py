"""Bodies stream both ways: 100 MB goes through with bounded proxy memory and an early first byte.

The proxy runs as its own process here, so its peak RSS (VmHWM) is a clean
measure of what it buffered.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import OriginServer, Received
from subprocs import Running

from proxy.testing.origins import OriginConnection

ROOT = Path(__file__).resolve().parent.parent
SIZE = 100 * 1024 * 1024
PIECE = 1024 * 1024
# A Python process carrying no body at all sits around 20 MiB; buffering even a
# tenth of 100 MB would blow well past this.
RSS_LIMIT_KIB = 48 * 1024


@pytest.fixture(scope="module")
def proxy_process() -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    r = Running("--port", "0", "--workers", "1", "--log-level", "warning")
    assert r.address[0] == "127.0.0.1", r.banner
    yield r.proc, r.address
    r.proc.terminate()
    r.proc.communicate(timeout=10)


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def gated_download(origin: OriginServer, chunked: bool) -> threading.Event:
    """An origin route that sends 1 MiB, then waits until the client has seen bytes, then the rest."""
    seen = threading.Event()
    piece = b"z" * PIECE

    def big(h: OriginConnection, r: Received) -> None:
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(SIZE))
        h.send_raw_head(200, [framing])
        for i in range(SIZE // PIECE):
            h.wfile.write(b"%x\r\n%s\r\n" % (PIECE, piece) if chunked else piece)
            if i == 0 and not seen.wait(20):
                return  # the proxy held the first piece back: the client will see a short body
        if chunked:
            h.wfile.write(b"0\r\n\r\n")

    origin.routes["/big"] = big
    return seen


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_100mb_download_streams_with_flat_memory(proxy_process: tuple[subprocess.Popen[str], tuple[str, int]], origin: OriginServer, chunked: Any) -> None:
    proc, address = proxy_process
    seen = gated_download(origin, chunked)
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", origin.url("/big"))
    resp = conn.getresponse()
    first = resp.read1(65536)
    assert first, "no body bytes arrived before the origin finished"
    seen.set()
    total = len(first)
    while data := resp.read1(PIECE):
        total += len(data)
    conn.close()
    assert total == SIZE
    assert peak_rss_kib(proc.pid) < RSS_LIMIT_KIB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_100mb_upload_streams_with_flat_memory(proxy_process: tuple[subprocess.Popen[str], tuple[str, int]], origin: OriginServer, chunked: Any) -> None:
    proc, address = proxy_process
    piece = b"u" * PIECE
    body = (piece for _ in range(SIZE // PIECE))
    headers = {} if chunked else {"Content-Length": str(SIZE)}
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("POST", origin.url("/echo"), body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    conn.close()
    # The origin counts large bodies instead of keeping them.
    assert origin.received[-1].body == b"<%d bytes>" % SIZE
    assert peak_rss_kib(proc.pid) < RSS_LIMIT_KIB

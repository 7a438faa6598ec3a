"""Resident memory plateaus under churn: four rounds of mixed exchanges, RSS after each.

The fourth round must end within a few MiB of the second (the first pays
for thread stacks, pools and caches warming up). See proxy/memory.py for
what made it creep before.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import OriginServer, RawOrigin
from subprocs import churn_proxy
from test_leaks import churn, mixed_exchanges

ROUNDS = 4
EXCHANGES = 2500
WORKERS = 16
SLACK_MIB = 4.0


@pytest.fixture
def churned_proxy() -> Iterator[tuple[int, tuple[str, int]]]:
    yield from churn_proxy()


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


@pytest.mark.xdist_group("stress")  # one churn at a time, beside the lighter tests
@pytest.mark.slow
def test_resident_memory_plateaus_under_churn(churned_proxy: tuple[int, tuple[str, int]]) -> None:
    pid, address = churned_proxy
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    truncating = RawOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")
    rss = []
    with OriginServer() as origin:
        kinds = mixed_exchanges(address, origin, truncating, closed_port)
        errors: list[BaseException] = []
        for _ in range(ROUNDS):
            errors += churn(kinds, EXCHANGES, WORKERS)
            rss.append(rss_mib(pid))
    truncating.close()
    print(f"\nRSS after each of {ROUNDS} rounds of {EXCHANGES} exchanges: "
          + " -> ".join(f"{r:.1f}" for r in rss) + " MiB")
    assert not errors, errors[:3]
    assert rss[3] - rss[1] < SLACK_MIB, rss

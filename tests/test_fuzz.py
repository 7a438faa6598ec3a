"""Property: whatever bytes arrive, the proxy answers with a valid status line or closes, and keeps serving."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import OriginServer, loopback_only
from wire import exchange

from proxy import Config, ProxyServer

STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")


@pytest.fixture
def origin(module_origin: OriginServer) -> OriginServer:
    return module_origin  # one origin serves the whole module's many small cases


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyServer]:
    config = Config(port=0, header_timeout=1, timeout=1, connect_timeout=1, client_idle_timeout=1)
    with ProxyServer(config, connect=loopback_only, sinks=[]) as server:
        yield server


def send(proxy: ProxyServer, raw: bytes) -> bytes:
    return exchange(("127.0.0.1", proxy.port), raw, half_close=True)


def templates(origin: OriginServer) -> list[bytes]:
    o, a = origin.url(""), origin.authority
    return [
        f"GET {o}/echo HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode(),
        f"POST {o}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode(),
        f"POST {o}/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode(),
        f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode(),
        b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    ]


@st.composite
def mutated(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.sampled_from(b"\x00\r\n \t:;,\"\\@/%#?-0fF\x7f\xff"))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


def check(proxy: ProxyServer, origin: OriginServer, raw: bytes) -> None:
    response = send(proxy, raw)
    if response and not response.startswith(b"HTTP/1.1 200 Connection Established"):
        assert STATUS_LINE.match(response), response[:200]
    canary = send(proxy, f"GET {origin.url('/canary')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert canary.startswith(b"HTTP/1.1 200 "), canary[:200]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_requests(proxy: ProxyServer, origin: OriginServer, data: Any) -> None:
    check(proxy, origin, data.draw(mutated(templates(origin))))


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_random_bytes(proxy: ProxyServer, origin: OriginServer, raw: Any) -> None:
    check(proxy, origin, raw)

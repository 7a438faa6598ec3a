"""GET /metrics: Prometheus text that a real parser reads, counters that match the traffic sent."""

from __future__ import annotations

import base64
import http.client
import re
import socket
from collections.abc import Callable

import pytest
from conftest import RunningProxy
from prometheus_client.parser import text_string_to_metric_families
from servers import OriginServer
from wire import through

from proxy import Flow, __version__
from proxy.config import parse_networks
from proxy.record.metrics import Metrics

ELSEWHERE = parse_networks("192.0.2.0/24")  # TEST-NET-1: not us, so loopback is "someone else"


def scrape(address: tuple[str, int], headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, keyed by name and labels, as the Prometheus client library parses them."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str) -> float:
    return parsed.get((metric, frozenset(labels.items())), 0.0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recv_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def open_tunnel(address: tuple[str, int], origin: OriginServer) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
    head, rest = recv_head(sock)
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    return sock


def tunnel_get(address: tuple[str, int], origin: OriginServer, path: str) -> tuple[int, int]:
    """GET through a CONNECT tunnel; the bytes sent and received inside it."""
    with open_tunnel(address, origin) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
        sock.sendall(request)
        head, body = recv_head(sock)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
    return len(request), len(head) + 4 + len(body)


def test_counters_match_the_traffic_sent(proxy_factory: Callable[..., RunningProxy],
                                         origin: OriginServer) -> None:
    proxy = proxy_factory(deny_hosts=("denied.test",))
    down = 0
    for _ in range(3):
        resp, body = through(proxy.address, "GET", origin.url("/bytes/1000"))
        assert resp.status == 200
        down += len(body)
    resp, body = through(proxy.address, "POST", origin.url("/echo"), body=b"x" * 500)
    down += len(body)
    assert through(proxy.address, "GET", f"http://127.0.0.1:{closed_port()}/")[0].status == 502
    assert through(proxy.address, "GET", "http://denied.test/")[0].status == 403
    up_tunnel, down_tunnel = tunnel_get(proxy.address, origin, "/bytes/2000")
    proxy.wait_flows(7)

    status, content_type, text = scrape(proxy.address)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    got = samples(text)
    assert value(got, "fwdproxy_exchanges_total", kind="http", status="2xx") == 4
    assert value(got, "fwdproxy_exchanges_total", kind="http", status="5xx") == 1
    assert value(got, "fwdproxy_exchanges_total", kind="http", status="4xx") == 1
    assert value(got, "fwdproxy_exchanges_total", kind="tunnel", status="2xx") == 1
    assert value(got, "fwdproxy_errors_total", type="connection_refused") == 1
    assert value(got, "fwdproxy_errors_total", type="http_request_denied") == 1
    assert value(got, "fwdproxy_bytes_total", direction="up") == 500 + up_tunnel
    assert value(got, "fwdproxy_bytes_total", direction="down") == down + down_tunnel
    assert value(got, "fwdproxy_exchange_duration_seconds_count", kind="http") == 6
    assert value(got, "fwdproxy_exchange_duration_seconds_bucket", kind="http", le="+Inf") == 6
    assert value(got, "fwdproxy_tunnels") == 0
    assert value(got, "fwdproxy_client_connections") >= 1  # the scrape (closed ones may not be counted out yet)
    flows = proxy.wait_flows(7)
    assert value(got, "fwdproxy_upstream_connections_reused_total") == sum(
        f.upstream_reused is True for f in flows) >= 2  # four GETs to one origin: pooled
    assert value(got, "fwdproxy_upstream_connections_opened_total") >= 1

    # The scrape is an exchange too, counted once it is finished.
    proxy.wait_flows(8)
    again = samples(scrape(proxy.address)[2])
    assert value(again, "fwdproxy_exchanges_total", kind="local", status="2xx") == 1
    assert value(again, "fwdproxy_exchanges_total", kind="http", status="2xx") == 4


def test_open_tunnels_and_connections_are_gauges(proxy_factory: Callable[..., RunningProxy],
                                                 origin: OriginServer) -> None:
    proxy = proxy_factory()
    kept = http.client.HTTPConnection(*proxy.address, timeout=10)  # one kept-alive client, idle
    through(proxy.address, "GET", origin.url("/bytes/1"), conn=kept)
    assert value(samples(scrape(proxy.address)[2]), "fwdproxy_client_connections") == 2  # it and the scrape
    kept.close()
    with open_tunnel(proxy.address, origin) as sock:
        # An answer through the tunnel means the relay has it (the 200 is sent just before).
        sock.sendall(f"GET /bytes/3 HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
        assert recv_head(sock)[0].startswith(b"HTTP/1.1 200")
        got = samples(scrape(proxy.address)[2])
        assert value(got, "fwdproxy_tunnels") == 1
        assert value(got, "fwdproxy_exchanges_total", kind="tunnel", status="2xx") == 0  # not finished
    proxy.wait_flows(4)  # the GET, two scrapes, then the tunnel once it closes
    got = samples(scrape(proxy.address)[2])
    assert (value(got, "fwdproxy_tunnels"), value(got, "fwdproxy_exchanges_total", kind="tunnel",
                                                  status="2xx")) == (0, 1)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_metrics_answer_loopback_and_refuse_others(proxy_factory: Callable[..., RunningProxy]) -> None:
    assert scrape(proxy_factory().address)[0] == 200  # loopback: the default
    elsewhere = proxy_factory(metrics_allow_from=ELSEWHERE)
    status, _, body = scrape(elsewhere.address)
    assert status == 403 and "/metrics answers loopback clients" in body


@pytest.mark.parametrize("header", ["Authorization", "Proxy-Authorization"])
def test_metrics_answer_authenticated_clients(proxy_factory: Callable[..., RunningProxy], header: str) -> None:
    proxy = proxy_factory(auth=(("alice", "pw"),), metrics_allow_from=ELSEWHERE)
    assert scrape(proxy.address)[0] == 403
    assert scrape(proxy.address, {header: basic("alice", "wrong")})[0] == 403
    status, _, text = scrape(proxy.address, {header: basic("alice", "pw")})
    assert status == 200 and "fwdproxy_exchanges_total" in text


def test_metrics_can_be_turned_off(proxy_factory: Callable[..., RunningProxy]) -> None:
    status, _, body = scrape(proxy_factory(metrics=False).address)
    assert status == 404 and "--no-metrics" in body


def test_dropped_flows_hook_and_worker_label() -> None:
    """A sink that drops flows feeds count_dropped; a worker's samples all carry its label."""
    metrics = Metrics(worker="2")
    metrics.count_dropped("record", 3)
    metrics.observe(Flow(kind="http", client="c", method="GET", url="u", status=200, duration_ms=2.0))
    got = samples(metrics.render({"tunnels": 0, "name": "fwdproxy-abc"}))
    assert value(got, "fwdproxy_flows_dropped_total", sink="record", worker="2") == 3
    assert value(got, "fwdproxy_exchange_duration_seconds_bucket", kind="http", le="0.0025", worker="2") == 1
    assert value(got, "fwdproxy_exchange_duration_seconds_bucket", kind="http", le="0.001", worker="2") == 0
    assert value(got, "fwdproxy_info", version=__version__, name="fwdproxy-abc", worker="2") == 1
    assert all(("worker", "2") in labels for _, labels in got)


def test_recorders_dropped_flows_come_from_the_status() -> None:
    """The recording sinks count their own drops; a scrape reads them from the server's status."""
    status = {"record": {"store": {"written": 9, "dropped_flows": 2, "dropped_bodies": 3},
                         "jsonl": {"written": 11, "dropped_flows": 0, "dropped_bodies": 0}}}
    got = samples(Metrics().render(status))
    assert value(got, "fwdproxy_flows_dropped_total", sink="store") == 2
    assert value(got, "fwdproxy_flow_bodies_dropped_total", sink="store") == 3
    assert ("fwdproxy_flows_dropped_total", frozenset({("sink", "jsonl")})) in got

"""Recording real loopback traffic: what a stored flow holds, within the caps, for every kind of flow."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from har_check import assert_valid_har
from servers import OriginServer, Received
from wire import exchange, through

from proxy.record.flows import REDACTED, Flow, log_sink
from proxy.record.recording import export_har
from proxy.record.store import Filters, Reader, StoredFlow
from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

BROKEN_GZIP = b"\x1f\x8b\x08\x00 this is not deflate data \xff\xfe"
LATIN1 = "caf\xe9 cr\xe8me".encode("latin-1")  # not UTF-8


def _raw(status: int, fields: list[tuple[str, str]], body: bytes) -> Callable[[OriginConnection, Received], None]:
    def route(h: OriginConnection, r: Received) -> None:
        h.send_raw_head(status, [*fields, ("Content-Length", str(len(body)))])
        h.wfile.write(body)
    return route


class Recorded:
    """A proxy recording to a fresh store; ``stored(n)`` waits for n flows, commits and reads them back.

    A flow is emitted just after the client has its response, so the test waits
    for it (the recorder is offered each flow before the test's own sink sees it).
    """

    def __init__(self, running: RunningProxy, path: Path) -> None:
        self.running, self.path = running, path
        self.server, self.address = running.server, running.address

    def stored(self, count: int) -> list[StoredFlow]:
        self.running.wait_flows(count)
        recorder = self.server.recording.recorder
        assert recorder is not None and recorder.flush()
        with Reader(self.path) as reader:
            return list(reader.flows())


@pytest.fixture
def recorded(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> Recorded:
    path = tmp_path / "flows.sqlite"
    origin.routes["/gz"] = _raw(200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                                gzip.compress(b'{"ok": true}'))
    origin.routes["/badgz"] = _raw(200, [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                                   BROKEN_GZIP)
    origin.routes["/latin1"] = _raw(200, [("Content-Type", "text/plain; charset=latin-1")], LATIN1)
    return Recorded(proxy_factory(record=str(path), capture_bodies=1 << 20), path)


def test_an_exchange_is_stored_in_full(recorded: Recorded, origin: OriginServer) -> None:
    conn = http.client.HTTPConnection(*recorded.address, timeout=10)
    headers = [("X-Dup", "one"), ("X-Other", "x"), ("X-Dup", "two"), ("Content-Type", "text/plain")]
    conn.putrequest("POST", origin.url("/echo/a?q=1"), skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.putheader("Content-Length", "5")
    conn.endheaders(b"hello")
    first = conn.getresponse()
    body = first.read()
    through(recorded.address, "GET", origin.url("/cookies"), conn=conn)
    conn.close()
    post, cookies = recorded.stored(2)
    f = post.flow
    assert (f.kind, f.method, f.url, f.http_version) == ("http", "POST", origin.url("/echo/a?q=1"), "HTTP/1.1")
    assert [(n, v) for n, v in f.request_headers if n.startswith("X-")] == [
        ("X-Dup", "one"), ("X-Other", "x"), ("X-Dup", "two")]
    assert f.request_body == b"hello" and f.bytes_up == 5
    assert (f.status, f.reason) == (200, "OK")
    assert f.response_body == body and f.bytes_down == len(body)
    assert ("Content-Type", "application/json") in f.response_headers
    assert f.upstream_reused is False and cookies.flow.upstream_reused is True
    for phase in (f.connect_ms, f.send_ms, f.wait_ms, f.receive_ms):
        assert 0 <= phase <= f.duration_ms
    assert f.connect_ms + f.send_ms + f.wait_ms + f.receive_ms <= f.duration_ms
    assert [v for n, v in cookies.flow.response_headers if n == "X-Order"] == ["1", "2"]
    assert cookies.flow.response_headers[0] == ("Set-Cookie", REDACTED)


def test_secrets_are_redacted_and_kept_only_when_asked(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> None:
    secret = {"Authorization": "Bearer tok-123", "Cookie": "sid=abc"}
    for keep in (False, True):
        path = tmp_path / f"keep-{keep}.sqlite"
        running = proxy_factory(record=str(path), record_secrets=keep)
        through(running.address, "GET", origin.url("/cookies"), headers=secret)
        running.server.stop()
        with Reader(path) as reader:
            stored = reader.get(1)
        assert stored is not None
        fields = dict(stored.flow.request_headers)
        assert (fields["Authorization"], fields["Cookie"]) == (
            ("Bearer tok-123", "sid=abc") if keep else (REDACTED, REDACTED))
        set_cookies = [v for n, v in stored.flow.response_headers if n == "Set-Cookie"]
        assert set_cookies == (["a=1; Path=/", "b=2; Path=/"] if keep else [REDACTED, REDACTED])
        assert (b"tok-123" in path.read_bytes()) is keep  # not in the file at all, unless asked


def test_a_large_download_is_recorded_within_the_cap(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> None:
    size, cap = 24 << 20, 1 << 20
    path = tmp_path / "big.sqlite"
    running = proxy_factory(record=str(path), capture_bodies=cap)
    resp, body = through(running.address, "GET", origin.url(f"/bytes/{size}"))
    _, small = through(running.address, "GET", origin.url("/bytes/100"))
    running.server.stop()
    assert resp.status == 200 and len(body) == size  # the client got all of it
    with Reader(path) as reader:
        big, little = reader.get(1), reader.get(2)
    assert big is not None and little is not None
    assert big.flow.bytes_down == size and big.flow.response_body == body[:cap]
    assert little.flow.response_body == small  # under the cap: whole
    assert path.stat().st_size < 4 * cap


def test_capture_bodies_zero_stores_no_bodies(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    running = proxy_factory(record=str(path), capture_bodies=0)
    through(running.address, "POST", origin.url("/echo"), body=b"payload")
    running.server.stop()
    with Reader(path) as reader:
        stored = reader.get(1)
    assert stored is not None and stored.flow.bytes_up == 7 and stored.flow.request_body == b""
    assert stored.flow.response_body == b"" and stored.flow.bytes_down > 0


def test_odd_bodies_and_huge_headers_pass_intact_and_are_stored_as_sent(recorded: Recorded, origin: OriginServer, tmp_path: Path) -> None:
    big_value = "v" * 50_000
    _, broken = through(recorded.address, "GET", origin.url("/badgz"))
    _, latin = through(recorded.address, "GET", origin.url("/latin1"))
    _, echoed = through(recorded.address, "POST", origin.url("/echo"), body=b"\x00\xff\xfe",
                        headers={"X-Huge": big_value})
    _, packed = through(recorded.address, "GET", origin.url("/gz"))
    assert broken == BROKEN_GZIP and latin == LATIN1 and gzip.decompress(packed) == b'{"ok": true}'
    assert json.loads(echoed)["body"] == "\x00\xff\xfe"
    flows = {s.flow.path: s.flow for s in recorded.stored(4)}
    assert flows["/badgz"].response_body == BROKEN_GZIP and flows["/latin1"].response_body == LATIN1
    assert flows["/echo"].request_body == b"\x00\xff\xfe"
    assert dict(flows["/echo"].request_headers)["X-Huge"] == big_value
    out = tmp_path / "odd.har"
    assert export_har(recorded.path, out, Filters()) == 4
    document = json.loads(out.read_text())
    assert_valid_har(document)
    contents = {e["request"]["url"].rsplit("/", 1)[1]: e["response"]["content"] for e in document["log"]["entries"]}
    assert contents["badgz"]["encoding"] == "base64" and "invalid gzip" in contents["badgz"]["comment"]
    assert contents["latin1"]["encoding"] == "base64"
    assert contents["gz"]["text"] == '{"ok": true}'  # decoded, as devtools expect


def test_tunnels_local_answers_and_errors_are_recorded(recorded: Recorded, origin: OriginServer) -> None:
    with socket.create_connection(recorded.address, timeout=10) as sock:
        sock.sendall(f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    exchange(recorded.address, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: 502
    resp, _ = through(recorded.address, "GET", f"http://127.0.0.1:{port}/")
    assert resp.status == 502
    recorded.running.wait_flows(3)  # recorded before the next one starts
    exchange(recorded.address, b"GET http://[bad HTTP/1.1\r\nHost: x\r\n\r\n")
    by_kind: dict[str, list[Flow]] = {}
    for s in recorded.stored(4):
        by_kind.setdefault(s.flow.kind, []).append(s.flow)
    tunnel = by_kind["tunnel"][0]
    assert (tunnel.method, tunnel.status, tunnel.host, tunnel.port) == ("CONNECT", 200, "127.0.0.1", origin.port)
    assert tunnel.bytes_up > 0 and tunnel.bytes_down > 10 and tunnel.connect_ms >= 0
    assert by_kind["local"][0].url == "/healthz" and by_kind["local"][0].status == 200
    refused, malformed = by_kind["http"]
    assert (refused.status, refused.error_kind) == (502, "connection_refused") and refused.error
    assert (malformed.status, malformed.error_kind) == (400, "http_request_error")


def test_healthz_reports_the_recorder(recorded: Recorded, origin: OriginServer) -> None:
    through(recorded.address, "GET", origin.url("/bytes/10"))
    recorded.stored(1)
    _, body = through(recorded.address, "GET", "/healthz")
    store = json.loads(body)["record"]["store"]
    assert store["path"] == str(recorded.path) and store["written"] >= 1
    assert store["dropped_flows"] == store["dropped_bodies"] == store["failed"] == 0


def test_flows_stream_as_json_lines(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> None:
    out = tmp_path / "flows.jsonl"
    running = proxy_factory(flows_jsonl=str(out), capture_bodies=100)
    for n in range(5):  # each recorded before the next starts: lines follow the order flows finish in
        through(running.address, "GET", origin.url(f"/bytes/{n}"), headers={"Cookie": "s=1"})
        running.wait_flows(n + 1)
    running.server.stop()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["url"] for line in lines] == [origin.url(f"/bytes/{n}") for n in range(5)]
    assert all(line["status"] == 200 and ["Cookie", REDACTED] in line["request_headers"] for line in lines)
    assert lines[3]["response_body"] == {"size": 3, "text": "012"} and "response_body" not in lines[0]
    assert lines[4]["timings"]["wait"] >= 0


def test_har_is_written_at_stop_from_a_temporary_store(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> None:
    out = tmp_path / "capture.har"
    running = proxy_factory(har=str(out), capture_bodies=1000)
    through(running.address, "POST", origin.url("/echo"), body=b'{"a": 1}',
            headers={"Content-Type": "application/json"})
    running.wait_flows(1)
    through(running.address, "GET", origin.url("/bytes/3"))
    running.wait_flows(2)
    assert not out.exists()  # written at stop, in one piece
    running.server.stop()
    document = json.loads(out.read_text())
    assert_valid_har(document)
    entries = document["log"]["entries"]
    assert [e["request"]["method"] for e in entries] == ["POST", "GET"]
    assert entries[0]["request"]["postData"] == {"mimeType": "application/json", "text": '{"a": 1}'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.har"]  # no temporary files left


def test_json_log_lines_never_carry_secret_values(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, caplog: pytest.LogCaptureFixture) -> None:
    """--log-format json writes whole flows: the secrets redacted in recordings are redacted there too."""
    running = proxy_factory(log_format="json")
    logged = threading.Event()
    running.server.flows.add(log_sink("json"))
    running.server.flows.add(lambda flow: logged.set())  # sinks run in order: the line is out
    with caplog.at_level("INFO", logger="fwdproxy.access"):
        through(running.address, "GET", origin.url("/cookies"),
                headers={"Authorization": "Bearer tok-9", "Cookie": "sid=s3"})
        assert logged.wait(10)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fwdproxy.access"]
    assert len(lines) == 1
    assert ["Authorization", REDACTED] in lines[0]["request_headers"]
    assert ["Set-Cookie", REDACTED] in lines[0]["response_headers"]
    assert "tok-9" not in caplog.text and "sid=s3" not in caplog.text and "a=1" not in caplog.text

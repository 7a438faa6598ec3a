"""`fwdproxy serve --record/--har/--flows-jsonl` and `fwdproxy flows ...`, as a user runs them."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from har_check import assert_valid_har
from servers import OriginServer, Received
from subprocs import Running
from wire import through

from proxy.cli import main
from proxy.record.store import Reader
from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

ROOT = Path(__file__).resolve().parent.parent


def serve_fails(*flags: str, wrap: list[str] | None = None) -> str:
    """Start `fwdproxy` expecting it to refuse; returns its stderr."""
    out = subprocess.run([*(wrap or []), sys.executable, "-m", "proxy", "--port", "0", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    return out.stderr


def flows(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["flows", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- serve: recording fails at start with a clear message ---------------------------------------


def test_bad_record_paths_fail_at_start_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "flows.sqlite"
    assert f"cannot record to {missing}: the folder {missing.parent} does not exist" in serve_fails(
        "--record", str(missing))
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"\x00garbage" * 1000)
    assert f"{corrupt} is not a fwdproxy flow store" in serve_fails("--record", str(corrupt))
    assert f"cannot write {missing.parent / 'x.har'}" in serve_fails("--har", str(missing.parent / "x.har"))
    assert "need --workers 1" in subprocess.run(
        [sys.executable, "-m", "proxy", "--record", str(tmp_path / "w.sqlite"), "--workers", "2"], cwd=ROOT,
        capture_output=True, text=True, timeout=30).stderr


def test_a_store_another_proxy_records_to_is_refused(running: Callable[..., Running], tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    first = running("--port", "0", "--record", str(path))
    assert f"cannot record to {path}: another process is recording to it" in serve_fails("--record", str(path))
    assert first.proc.poll() is None  # the first one is unaffected
    code, _ = first.stop()
    assert code == 0


_MOUNT = shutil.which("unshare") and os.geteuid() == 0
needs_mount = pytest.mark.skipif(not _MOUNT, reason="mounting a small file system needs root and unshare")


def _in_tmpfs(tmp_path: Path, setup: str, size: str) -> list[str]:
    """A wrapper running a command in its own mount namespace, with a small tmpfs on tmp_path/mnt."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f"mount -t tmpfs -o size={size} tmpfs {mnt} && {setup} && exec \"$@\""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@needs_mount
def test_a_read_only_store_fails_at_start(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    setup = (f"{sys.executable} -c 'import sys; from proxy.record.store import Recorder; "
             f"Recorder(sys.argv[1]).close()' {mnt}/flows.sqlite && mount -o remount,ro {mnt}")
    err = serve_fails("--record", f"{mnt}/flows.sqlite", wrap=_in_tmpfs(tmp_path, setup, "16m"))
    assert f"cannot record to {mnt}/flows.sqlite: it is read-only" in err


@needs_mount
def test_a_store_on_a_full_file_system_fails_at_start(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    setup = f"(dd if=/dev/zero of={mnt}/filler bs=64k 2>/dev/null || true)"
    err = serve_fails("--record", f"{mnt}/flows.sqlite", wrap=_in_tmpfs(tmp_path, setup, "1m"))
    assert f"cannot record to {mnt}/flows.sqlite: its file system is full (0 KiB free" in err


# -- serve: a crash loses nothing that was committed ---------------------------------------------


def test_kill_9_during_a_heavy_capture_keeps_every_committed_flow(running: Callable[..., Running], origin: OriginServer, tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    proxy = running("--port", "0", "--record", str(path), "--log-level", "warning")
    stop = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection(*proxy.address, timeout=10)
        try:
            while not stop.is_set():
                conn.request("POST", origin.url("/echo"), body=b"x" * 300)
                conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass  # the proxy died under us: expected
        finally:
            conn.close()

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        with Reader(path) as reader:
            assert reader.wait_for_new(2000, timeout=60, poll=0.05)  # thousands committed, still going
            committed = reader.last_id()
        proxy.proc.kill()  # SIGKILL: no chance to flush or checkpoint
        proxy.proc.communicate(timeout=10)
    finally:
        stop.set()
        for client in clients:
            client.join(15)
    with Reader(path) as reader:
        assert reader.integrity() == "ok"
        count = reader.count()
        assert count >= committed >= 2000
        assert [row.id for row in reader.list(limit=5)] == list(range(count - 4, count + 1))  # no gaps
        newest = reader.get(count)
        assert newest is not None and newest.flow.request_body == b"x" * 300
    again = running("--port", "0", "--record", str(path))  # the file is free and appendable again
    through(again.address, "GET", origin.url("/bytes/1"))
    assert again.stop()[0] == 0
    with Reader(path) as reader:
        assert reader.count() == count + 1 and reader.integrity() == "ok"


# -- serve: HAR at stop, JSON lines as they happen ------------------------------------------------


def test_har_at_stop_and_json_lines_on_stdout(tmp_path: Path, origin: OriginServer) -> None:
    har = tmp_path / "out.har"
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--port", "0", "--har", str(har),
                             "--flows-jsonl", "-", "--log-level", "warning"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", proc.stderr.readline())
        assert match
        address = ("127.0.0.1", int(match.group(1)))
        through(address, "POST", origin.url("/echo"), body=b"\xff\x01binary", headers={"Authorization": "x"})
        line = json.loads(proc.stdout.readline())  # streamed while the proxy runs
        assert line["method"] == "POST" and line["request_body"]["base64"] == "/wFiaW5hcnk="
        assert ["Authorization", "<redacted>"] in line["request_headers"]
        assert not har.exists()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    document = json.loads(har.read_text())
    assert_valid_har(document)
    post = document["log"]["entries"][0]["request"]["postData"]
    assert post["encoding"] == "base64" and post["text"] == "/wFiaW5hcnk="
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.har"]


# -- fwdproxy flows ------------------------------------------------------------------------------


@pytest.fixture
def store(proxy_factory: Callable[..., RunningProxy], origin: OriginServer, tmp_path: Path) -> Path:
    """A store of real traffic: JSON (gzip), binary, a 503, a POST with a header to grep for."""
    def raw(status: int, fields: list[tuple[str, str]], body: bytes) -> Callable[[OriginConnection, Received], None]:
        def route(h: OriginConnection, r: Received) -> None:
            h.send_raw_head(status, [*fields, ("Content-Length", str(len(body)))])
            h.wfile.write(body)
        return route

    origin.routes["/api"] = raw(200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
                                gzip.compress(b'{"user": {"id": 7, "name": "\\u00e9ve"}}'))
    origin.routes["/blob"] = raw(200, [("Content-Type", "application/octet-stream")], bytes(range(200)))
    origin.routes["/down"] = raw(503, [("Retry-After", "1")], b"down\x1b[31m")
    path = tmp_path / "flows.sqlite"
    running = proxy_factory(record=str(path), capture_bodies=1 << 20)
    # Ids follow the order flows finish in: each request waits for the one before to be recorded.
    through(running.address, "GET", origin.url("/api/users/7"))
    running.wait_flows(1)
    through(running.address, "GET", origin.url("/blob"))
    running.wait_flows(2)
    through(running.address, "GET", origin.url("/down"))
    running.wait_flows(3)
    through(running.address, "POST", origin.url("/echo/orders?x=1"), body=b"it's \"quoted\"\n",
            headers={"X-Request-Id": "req-4242", "Content-Type": "text/plain"})
    running.wait_flows(4)
    running.server.stop()
    return path


def test_flows_list_prints_a_table_and_filters(store: Path, origin: OriginServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = flows(capsys, "list", str(store))
    lines = out.splitlines()
    assert code == 0 and re.split(r"\s+", lines[0].strip()) == ["ID", "METHOD", "URL", "STATUS", "SIZE", "TIME"]
    assert [re.split(r"\s+", line.strip())[:4] for line in lines[1:]] == [
        ["1", "GET", origin.url("/api/users/7"), "200"], ["2", "GET", origin.url("/blob"), "200"],
        ["3", "GET", origin.url("/down"), "503"], ["4", "POST", origin.url("/echo/orders?x=1"), "200"]]
    assert re.split(r"\s+", lines[2].strip())[4] == "200B"
    _, out, _ = flows(capsys, "list", str(store), "--status", "5xx")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["3"]
    _, out, _ = flows(capsys, "list", str(store), "--grep", "REQ-4242", "--method", "post")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["4"]
    _, out, _ = flows(capsys, "list", str(store), "--host", "localhost", "--since", "1h")
    assert out.splitlines()[1:] == []  # negative control: the flows went to 127.0.0.1
    _, out, _ = flows(capsys, "list", str(store), "--since", "10m", "--limit", "2")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["3", "4"]
    code, _, err = flows(capsys, "list", str(store), "--status", "5x")
    assert code == 1 and "status must be a code like 404" in err


def test_flows_show_decodes_and_makes_bodies_readable(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = flows(capsys, "show", str(store), "1")
    assert code == 0 and "GET http://127.0.0.1:" in out and "HTTP/1.1 200 OK" in out
    assert "decoded from gzip" in out
    assert '{\n  "user": {\n    "id": 7,\n    "name": "\u00e9ve"\n  }\n}' in out  # pretty-printed JSON
    _, out, _ = flows(capsys, "show", str(store), "2")
    assert "200 bytes of binary data; the first 64:" in out and "0000  00 01 02 03" in out
    _, out, _ = flows(capsys, "show", str(store), "3")
    assert "down\\x1b[31m" in out and "\x1b" not in out  # no terminal escapes from recorded bytes
    _, out, _ = flows(capsys, "show", str(store), "4")
    assert "X-Request-Id: req-4242" in out and "wait" in out and "upstream reused" in out
    code, _, err = flows(capsys, "show", str(store), "99")
    assert code == 1 and f"{store} has no flow 99" in err


def test_flows_export_har_and_jsonl_with_filters(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    har = tmp_path / "all.har"
    code, _, err = flows(capsys, "export", str(store), "--har", str(har))
    assert code == 0 and "exported 4 flows" in err
    document = json.loads(har.read_text())
    assert_valid_har(document)
    assert len(document["log"]["entries"]) == 4
    code, out, _ = flows(capsys, "export", str(store), "--jsonl", "-", "--status", "2xx")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == [1, 2, 4]
    assert lines[2]["request_body"] == {"size": 14, "text": "it's \"quoted\"\n"}


@pytest.mark.skipif(not shutil.which("curl"), reason="./scripts/test installs curl")
def test_flows_curl_replays_the_request(store: Path, origin: OriginServer, proxy_factory: Callable[..., RunningProxy], capsys: pytest.CaptureFixture[str]) -> None:
    replay = proxy_factory()
    code, out, _ = flows(capsys, "curl", str(store), "4", "--proxy", replay.url)
    assert code == 0 and out.startswith("curl -x ")
    result = subprocess.run(["bash", "-c", out], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    first, again = origin.received[-2], origin.received[-1]  # the recorded request, and its replay
    assert (again.method, again.target, again.body) == (first.method, first.target, first.body)
    assert again.header("X-Request-Id") == "req-4242"
    _, out, _ = flows(capsys, "curl", str(store), "2")
    assert out.strip() == f"curl -H 'Accept-Encoding: identity' {origin.url('/blob')}"


@needs_mount
def test_a_disk_filling_up_mid_run_costs_flows_not_traffic(tmp_path: Path, origin: OriginServer) -> None:
    """The store's file system fills while the proxy runs: writes fail and are counted, traffic flows on."""
    mnt = tmp_path / "mnt"
    wrap = _in_tmpfs(tmp_path, "true", "12m")
    proc = subprocess.Popen([*wrap, sys.executable, "-m", "proxy", "--port", "0", "--record",
                             f"{mnt}/flows.sqlite", "--log-level", "warning"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    log = StderrLines(proc)
    try:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.wait_for("listening on"))
        assert match
        address = ("127.0.0.1", int(match.group(1)))
        filled = subprocess.run(["nsenter", "--target", str(proc.pid), "--mount", "dd", "if=/dev/zero",
                                 f"of={mnt}/filler", "bs=64k"], capture_output=True, timeout=30)
        assert b"No space left" in filled.stderr
        statuses = [through(address, "POST", origin.url("/echo"), body=b"z" * 65536)[0].status
                    for _ in range(20)]
        assert statuses == [200] * 20
        lost = log.wait_for("flows lost")  # the writer says so (once a minute at most)
        assert "full" in lost, log.lines
        _, body = through(address, "GET", "/healthz")
        store = json.loads(body)["record"]["store"]
        assert store["failed"] > 0 and store["dropped_flows"] == 0, store
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.reader.join(10)
    assert proc.returncode == 0, log.lines


class StderrLines:
    """A process's stderr read on a thread as it comes (its pipe never fills), waited on line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._stream = proc.stderr
        self._changed = threading.Condition()
        self._ended = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self._stream:
            for line in self._stream:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first line holding ``text``; fails, showing every line, after ``timeout`` s or at EOF."""
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._ended, timeout)
            line = found()
        assert line is not None, f"no {text!r} on stderr within {timeout}s: {self.lines}"
        return line


def test_a_tunnel_is_shown_as_bytes_relayed_unread(proxy_factory: Callable[..., RunningProxy],
                                                     origin: OriginServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tunnel.sqlite"
    running = proxy_factory(record=str(path))
    with socket.create_connection(running.address, timeout=10) as sock:
        sock.sendall(f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    running.wait_flows(1)
    running.server.stop()
    code, out, _ = flows(capsys, "show", str(path), "1")
    assert code == 0 and f"CONNECT {origin.authority} HTTP/1.1" in out and "HTTP/1.1 200 OK" in out
    assert re.search(r"\[\d+ bytes relayed through the tunnel, unread\]", out)
    _, out, _ = flows(capsys, "curl", str(path), "1")
    assert "a CONNECT tunnel" in out and "nothing to replay" in out
    _, out, _ = flows(capsys, "list", str(path), "--kind", "tunnel")
    assert out.splitlines()[1].split()[:2] == ["1", "CONNECT"]

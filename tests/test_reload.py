"""SIGHUP reloads the config file in a running proxy process, under load, without dropping anyone."""

from __future__ import annotations

import base64
import http.client
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import OriginServer
from wire import read_response

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"Proxy-Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}


class ProxyProcess:
    """``python -m proxy --config FILE``; its stderr is read line by line on a thread."""

    def __init__(self, config: Path, *flags: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPROXY_")}
        if "--workers" not in flags:
            flags = ("--workers", "1", *flags)  # one process, one log to follow (the default is one per CPU)
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "--port", "0", "--config", str(config),
                                      *flags], cwd=ROOT, env=env, text=True, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        banner = self.proc.stderr.readline()
        match = re.search(r"listening on http://([\d.]+):(\d+)", banner)
        assert match, banner
        self.address = (match.group(1), int(match.group(2)))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        """The next log line containing ``text`` (lines before it are kept in ``seen``)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no log line with {text!r} within {timeout}s") from None
            self.seen.append(line)
            if text in line:
                return line

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=15)
            self.reader.join(15)
            assert self.proc.stderr is not None
            self.proc.stderr.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fwdproxy.toml"
    path.write_text('log-level = "info"\n')
    return path


@pytest.fixture
def started(config: Path) -> Iterator[list[ProxyProcess]]:
    made: list[ProxyProcess] = []
    yield made
    for proxy in made:
        proxy.stop()


class Load:
    """A client sending requests in a loop on one kept-alive connection, recording any failure."""

    def __init__(self, address: tuple[str, int], url: str) -> None:
        self.conn = http.client.HTTPConnection(*address, timeout=10)
        self.url, self.done, self.failures = url, 0, list[str]()
        self.sockets: set[int] = set()
        self.stop = threading.Event()
        self._progress = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in range(100_000):  # bounded, and stopped by the test long before
            if self.stop.is_set():
                break
            try:
                self.conn.request("GET", self.url, headers=CREDENTIALS)
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status != 200 or len(body) != 100:
                    self.failures.append(f"{resp.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                self.conn.close()
            self.sockets.add(id(self.conn.sock))
            with self._progress:
                self.done += 1
                self._progress.notify_all()
        self.conn.close()

    def wait_for_more(self, count: int) -> None:
        with self._progress:
            target = self.done + count
            assert self._progress.wait_for(lambda: self.done >= target or not self.thread.is_alive(), 20)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(20)


def get(address: tuple[str, int], url: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", url, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def keep_alive_get(sock: socket.socket, url: str, headers: dict[str, str] | None = None) -> int:
    fields = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode())
    return read_response(sock)[0].status


def test_sighup_changes_rules_under_load_without_dropping_anyone(config: Path, started: list[ProxyProcess],
                                                                  origin: OriginServer) -> None:
    proxy = ProxyProcess(config)
    started.append(proxy)
    by_name = f"http://localhost:{origin.port}/bytes/1"
    assert get(proxy.address, by_name) == 200  # negative control: nothing denies it yet
    idle = socket.create_connection(proxy.address, timeout=10)  # kept alive, no credentials
    assert keep_alive_get(idle, origin.url("/bytes/1")) == 200
    tunnel = socket.create_connection(proxy.address, timeout=10)
    tunnel.sendall(f"CONNECT {origin.authority} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
    assert tunnel.recv(1024).startswith(b"HTTP/1.1 200")
    load = Load(proxy.address, origin.url("/bytes/100"))
    try:
        load.wait_for_more(20)

        config.write_text('log-level = "info"\n[users]\nalice = "pw"\n[hosts]\ndeny = ["localhost"]\n')
        proxy.hup()
        assert "changed allow-from, auth, deny-hosts" in proxy.wait_log("config reloaded")
        assert get(proxy.address, by_name, CREDENTIALS) == 403  # new host rule, new exchange
        assert get(proxy.address, origin.url("/bytes/1")) == 407  # new users
        assert keep_alive_get(idle, origin.url("/bytes/1")) == 407  # same connection, next exchange
        tunnel.sendall(f"GET /bytes/5 HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode())
        assert read_response(tunnel)[1] == b"01234"  # the tunnel opened before is still relaying
        load.wait_for_more(20)

        config.write_text('[hosts]\ndeny = ["bad host!"]\n')
        proxy.hup()
        refused = proxy.wait_log("config reload from")
        assert "refused, keeping the running configuration" in refused
        assert ":2: [hosts] deny: invalid host pattern 'bad host!'" in refused
        assert get(proxy.address, by_name, CREDENTIALS) == 403  # the old rules still hold
        load.wait_for_more(20)

        config.write_text('tunnel-idle-timeout = 7\n[users]\nalice = "pw"\n')
        proxy.hup()
        assert "tunnel-idle-timeout changed" in proxy.wait_log("needs a restart")
        assert "changed deny-hosts" in proxy.wait_log("config reloaded")
        assert get(proxy.address, by_name, CREDENTIALS) == 200  # the deny rule is gone
        load.wait_for_more(20)
    finally:
        load.finish()
        idle.close()
        tunnel.close()
    assert load.failures == []
    assert len(load.sockets) == 1, "the looping client's connection was dropped"
    assert load.done > 80

    # Client networks too are judged per exchange, not once per connection.
    with socket.create_connection(proxy.address, timeout=10) as kept:
        assert keep_alive_get(kept, origin.url("/bytes/1"), CREDENTIALS) == 200
        config.write_text('allow-from = ["192.0.2.0/24"]\n[users]\nalice = "pw"\n')
        proxy.hup()
        assert "changed allow-from" in proxy.wait_log("config reloaded")
        assert keep_alive_get(kept, origin.url("/bytes/1"), CREDENTIALS) == 403
    assert proxy.stop() == 0


def metric_workers(address: tuple[str, int]) -> set[str]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {s.labels.get("worker", "") for f in text_string_to_metric_families(text) for s in f.samples}


def test_workers_each_reload_and_label_their_metrics(config: Path, started: list[ProxyProcess],
                                                     origin: OriginServer) -> None:
    proxy = ProxyProcess(config, "--workers", "2")
    started.append(proxy)
    config.write_text('[hosts]\ndeny = ["localhost"]\n')
    proxy.hup()  # the parent passes it on to the other worker
    reloaded = {proxy.wait_log("config reloaded"), proxy.wait_log("config reloaded")}
    assert {re.search(r"\[worker (\d)\]", line).group(1) for line in reloaded} == {"0", "1"}  # type: ignore[union-attr]
    assert not [line for line in proxy.seen if "restart" in line]  # the port a worker bound is no change
    # Each connection lands on either worker: both now refuse the host.
    for _ in range(6):
        assert get(proxy.address, f"http://localhost:{origin.port}/") == 403
    assert metric_workers(proxy.address) <= {"0", "1"} and "" not in metric_workers(proxy.address)
    assert proxy.stop() == 0


def test_sighup_without_a_config_file_changes_nothing(started: list[ProxyProcess], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPROXY_")}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--port", "0"], cwd=ROOT, env=env, text=True,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        assert "listening on" in proc.stderr.readline()
        proc.send_signal(signal.SIGHUP)
        assert "no --config file to reload" in proc.stderr.readline()
        assert proc.poll() is None  # SIGHUP no longer ends the process
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0

"""The command line as a user runs it: flags, the startup line, logs, health, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from servers import OriginServer, Received
from subprocs import Running
from wire import through

from proxy.cli import parse_config
from proxy.config import LOOPBACK_NETWORKS, Config, parse_networks
from proxy.testing.origins import OriginConnection

ROOT = Path(__file__).resolve().parent.parent


def test_help_documents_every_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    for flag in ("--host", "--port", "--timeout", "--connect-timeout", "--client-idle-timeout",
                 "--tunnel-idle-timeout", "--log-level", "--log-format", "FWDPROXY_"):
        assert flag in out.stdout


def test_port_zero_prints_the_real_address_and_serves(running: type[Running], origin: OriginServer) -> None:
    proxy = running("--port", "0")
    assert proxy.address[1] != 0
    _resp, body = through(proxy.address, "GET", origin.url("/bytes/5"))
    assert body == b"01234"
    code, err = proxy.stop()
    assert code == 0
    line = next(entry for entry in err.splitlines() if " GET " in entry)
    assert re.search(rf"127\.0\.0\.1:\d+ GET {re.escape(origin.url('/bytes/5'))} 200 up=0 down=5 [\d.]+ms$", line)


def test_json_log_lines(running: type[Running], origin: OriginServer) -> None:
    proxy = running("--port", "0", "--log-format", "json")
    through(proxy.address, "POST", origin.url("/echo"), body=b"abc")
    _code, err = proxy.stop()
    assert "listening on" in json.loads(proxy.banner)["message"]
    every = [json.loads(entry) for entry in err.splitlines()]  # every line is JSON
    records = [r for r in every if "kind" in r]
    assert len(records) == 1 and any("shutting down" in r.get("message", "") for r in every)
    assert records[0]["method"] == "POST" and records[0]["status"] == 200 and records[0]["bytes_up"] == 3


def test_auth_without_allow_from_admits_any_network() -> None:
    from proxy.cli import parse_config

    assert parse_config(["--auth", "u:p"]).allow_from == parse_networks("0.0.0.0/0,::/0")
    assert parse_config([]).allow_from == LOOPBACK_NETWORKS
    assert parse_config(["--auth", "u:p", "--allow-from", "10.0.0.0/8"]).allow_from == parse_networks("10.0.0.0/8")


def test_environment_variables_mirror_flags(running: type[Running]) -> None:
    proxy = running(env={"FWDPROXY_PORT": "0", "FWDPROXY_LOG_LEVEL": "warning"})
    assert proxy.address[1] != 0
    code, err = proxy.stop()
    assert code == 0 and "shutting down" not in err  # warning level hides info lines


def test_health_endpoint(running: type[Running]) -> None:
    proxy = running("--port", "0")
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
        data = b""
        while not data.endswith(b"}\n"):
            data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"application/json" in head
    status = json.loads(body)
    assert status["status"] == "ok" and status["version"]
    assert status["client_connections"] == 1 and status["tunnels"] == 0
    assert status["uptime_s"] >= 0
    proxy.stop()


def test_other_origin_form_requests_get_a_hint(running: type[Running]) -> None:
    proxy = running("--port", "0")
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: proxy\r\n\r\n")
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"forward proxy" in data and b"CONNECT" in data
    proxy.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_in_flight_exchange_finish(running: type[Running], origin: OriginServer, sig: Any) -> None:
    arrived, release = threading.Event(), threading.Event()

    def slow(h: OriginConnection, r: Received) -> None:
        arrived.set()
        release.wait(10)
        h.send_raw_head(200, [("Content-Length", "4")])
        h.wfile.write(b"done")

    origin.routes["/slow"] = slow
    proxy = running("--port", "0")
    conn = socket.create_connection(proxy.address, timeout=10)
    conn.sendall(f"GET {origin.url('/slow')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert arrived.wait(10)  # the request is in flight at the origin
    proxy.proc.send_signal(sig)
    threading.Timer(0.3, release.set).start()
    data = b""
    while piece := conn.recv(4096):  # the proxy closes after the response: it is shutting down
        data += piece
    conn.close()
    # No second signal: one that lands while the interpreter exits takes the default action.
    proxy.proc.communicate(timeout=15)
    code = proxy.proc.returncode
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"done")
    assert code == 0
    # And the listening socket is gone.
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=2).close()


def test_port_in_use_is_a_clear_error() -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "proxy", "--port", str(port)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    holder.close()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_invalid_flag_values_are_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "--timeout", "-1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "timeout must be positive" in out.stderr


def test_workers_share_the_port(running: type[Running], origin: OriginServer) -> None:
    proxy = running("--port", "0", "--workers", "2")
    assert "(2 worker processes)" in proxy.banner
    pids, workers = set(), {}
    for _ in range(40):  # the kernel spreads new connections over the workers' sockets
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            data = b""
            while piece := sock.recv(4096):
                data += piece
        status = json.loads(data.partition(b"\r\n\r\n")[2])
        pids.add(status["pid"])
        workers[status["worker"]] = status["pid"]  # /healthz says which worker answered
        assert status["workers"] == 2
        if len(pids) == 2:
            break
    assert len(pids) == 2 and proxy.proc.pid in pids
    assert workers["0"] == proxy.proc.pid and set(workers) == {"0", "1"}
    _resp, body = through(proxy.address, "GET", origin.url("/bytes/3"))
    assert body == b"012"
    code, _ = proxy.stop()
    assert code == 0
    for pid in pids - {proxy.proc.pid}:  # the worker went with its parent
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_health_subcommand(running: type[Running]) -> None:
    proxy = running("--port", "0")
    ok = subprocess.run([sys.executable, "-m", "proxy", "health", "--port", str(proxy.address[1])],
                        cwd=ROOT, capture_output=True, text=True, timeout=30)
    proxy.stop()
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-m", "proxy", "health", "--port", str(proxy.address[1])],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0


def test_loading_the_pytest_plugin_does_not_import_the_client() -> None:
    """Every pytest run of a project with fwdproxy installed loads the plugin: keep it light."""
    code = "import sys, proxy.testing.pytest_plugin; from proxy import ProxyServer; print('proxy.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_workers_default_to_one_per_cpu_on_the_command_line(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert parse_config([]).workers == cpus
    assert parse_config(["--workers", "3"]).workers == 3
    # One writer per file: a recording, a flows file or the page means one process.
    for flags in (["--record", str(tmp_path / "r.sqlite")], ["--flows-jsonl", str(tmp_path / "f.jsonl")],
                  ["--ui"]):
        assert parse_config(flags).workers == 1, flags
    assert Config().workers == 1  # the in-process API (and the pytest plugin) stay single-process

"""``fwdproxy health``: exit 0 against a live proxy, 1 against anything else, never via HTTP_PROXY."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from proxy import Config, ProxyServer
from proxy.server import health

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def health_main(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fwdproxy")
    health.add_parser(parser.add_subparsers(dest="command"))
    return health.run(parser.parse_args(["health", *argv]))


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    with ProxyServer(Config(port=0)) as server:
        yield server


class Impostor:
    """An HTTP server on loopback that answers /healthz with a fixed status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Impostor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_live_proxy_is_healthy_and_its_status_is_printed(capsys: pytest.CaptureFixture[str], proxy: ProxyServer) -> None:
    assert health_main("--port", str(proxy.port)) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "ok" and status["name"] == proxy.via_name


def test_a_closed_port_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    assert health_main("--port", str(port), "--timeout", "2") == 1
    err = capsys.readouterr().err
    assert f"unhealthy: no answer from http://127.0.0.1:{port}/healthz" in err


@pytest.mark.parametrize(("status", "body", "reason"), [
    (503, b"busy\n", "answered 503"),
    (200, b"<html>not a proxy</html>", "without a JSON status"),
    (200, b'{"status": "stopping"}', "reports status 'stopping'"),
])
def test_anything_but_an_ok_status_is_unhealthy(capsys: pytest.CaptureFixture[str], status: Any, body: Any, reason: Any) -> None:
    with Impostor(status, body) as impostor:
        assert health_main("--port", str(impostor.port)) == 1
    assert reason in capsys.readouterr().err


def test_the_port_comes_from_fwdproxy_port(monkeypatch: pytest.MonkeyPatch, proxy: ProxyServer) -> None:
    monkeypatch.setenv("FWDPROXY_PORT", str(proxy.port))
    assert health_main() == 0
    monkeypatch.setenv("FWDPROXY_PORT", str(closed_port()))
    assert health_main() == 1  # negative control: the variable is what decided


def test_proxy_variables_are_ignored(monkeypatch: pytest.MonkeyPatch, proxy: ProxyServer) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    assert health_main("--port", str(proxy.port)) == 0


@pytest.mark.parametrize(("listen", "probe"), [
    ("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "::1"), ("::0", "::1"),
    ("10.1.2.3", "10.1.2.3"), ("localhost", "localhost"),
])
def test_a_wildcard_listen_address_is_probed_on_loopback(listen: Any, probe: Any) -> None:
    assert health.probe_host(listen) == probe


def test_python_m_proxy_health_runs_standalone(proxy: ProxyServer) -> None:
    env = {**os.environ, "FWDPROXY_PORT": str(proxy.port), "FWDPROXY_HOST": "0.0.0.0"}
    ok = subprocess.run([sys.executable, "-m", "proxy.server.health"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "ok"
    env["FWDPROXY_PORT"] = str(closed_port())
    bad = subprocess.run([sys.executable, "-m", "proxy.server.health"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unhealthy" in bad.stderr

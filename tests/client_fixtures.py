"""Fixtures for the client tests: redirecting routes, a dial-recording proxy, scripted peers, tinyproxy.

Import the fixtures into a test module with ``from client_fixtures import *``
(pytest finds fixtures by name in the module's namespace).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import one_worker_at_a_time
from servers import OriginServer, Received, accept_forever, spawn

from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

__all__ = ["Scripted", "SpyProxy", "TinyProxy", "add_redirects", "free_port", "scripted", "spy_proxy",
           "tinyproxy", "tinyproxy_binary"]


# -- origin routes -----------------------------------------------------------------


def add_redirects(origin: OriginServer) -> OriginServer:
    """Routes: /redirect?status=302&to=LOCATION (to omitted: no Location), /chain/N, /loop."""

    def redirect(h: OriginConnection, r: Received) -> None:
        query = parse_qs(urlsplit(r.target).query)
        status = int(query.get("status", ["302"])[0])
        fields = [("Location", query["to"][0])] if "to" in query else []
        fields += [("Set-Cookie", c) for c in query.get("cookie", [])]
        body = b"moved"
        h.send_raw_head(status, [*fields, ("Content-Length", str(len(body)))])
        if r.method != "HEAD":
            h.wfile.write(body)

    def chain(h: OriginConnection, r: Received) -> None:
        n = int(r.target.split("/")[2])
        fields = [("Location", f"/chain/{n - 1}" if n > 1 else "/echo"), ("Content-Length", "0")]
        h.send_raw_head(302, fields)

    origin.routes["/redirect"] = redirect
    origin.routes["/chain"] = chain
    return origin


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a proxy that records where it dials ------------------------------------------


@dataclass
class SpyProxy:
    url: str
    dialled: list[tuple[str, int]]


@pytest.fixture
def spy_proxy(proxy_factory: Callable[..., RunningProxy]) -> SpyProxy:
    """Our proxy, recording each upstream (host, port) it connects to before it answers the client."""
    dialled: list[tuple[str, int]] = []

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        dialled.append((address[0], int(address[1])))
        return socket.create_connection(address, timeout=timeout)

    running = proxy_factory(connect=connect)
    return SpyProxy(running.url, dialled)


# -- scripted raw peers ---------------------------------------------------------------


@dataclass
class Scripted:
    """A raw-socket peer: ``script(conn_index, request_index, head)`` returns bytes to send, or None to close.

    Records every request head it read as (connection index, head bytes).
    Request bodies are not read: scripts are for body-less requests or for
    answering before the body matters.
    """

    script: Callable[[int, int, bytes], bytes | None]
    received: list[tuple[int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._conns: list[socket.socket] = []
        accept_forever(self.listener, self._accepted)

    def _accepted(self, conn: socket.socket) -> None:
        self._conns.append(conn)
        self.connections += 1
        spawn(self._answer, conn, self.connections)

    def _answer(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(10)
        buf = b""
        try:
            for n in range(1, 100):
                while b"\r\n\r\n" not in buf:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    buf += piece
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.received.append((index, head + b"\r\n\r\n"))
                reply = self.script(index, n, head)
                if reply is None:
                    return
                conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[int, int, bytes], bytes | None]], Scripted]]:
    made: list[Scripted] = []

    def make(script: Callable[[int, int, bytes], bytes | None]) -> Scripted:
        made.append(Scripted(script))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


# -- tinyproxy --------------------------------------------------------------------------


def _install_tinyproxy() -> str | None:
    """The tinyproxy binary, installed with apt-get if missing (as root); None if that fails."""
    found = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "tinyproxy"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")


@pytest.fixture(scope="session")
def tinyproxy_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    with one_worker_at_a_time(tmp_path_factory, "apt-get"):  # dpkg takes one installer at a time
        binary = _install_tinyproxy()
    if binary is None:
        pytest.skip("tinyproxy is not installed and could not be installed with apt-get")
    return binary


@dataclass
class TinyProxy:
    url: str
    process: subprocess.Popen[str]
    log: list[str]
    reader: threading.Thread

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _start_tinyproxy(binary: str, conf: Path, port: int) -> TinyProxy | None:
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # keep reading all along, or tinyproxy blocks once the pipe fills
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if "Accepting connections" in line:
                ready.set()
        ready.set()  # it exited (a port clash, a bad config)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    running = TinyProxy(f"http://127.0.0.1:{port}", proc, log, reader)
    if not ready.wait(10):
        running.stop()
        raise RuntimeError("tinyproxy did not start: " + "".join(log))
    if proc.poll() is not None or not any("Accepting connections" in line for line in log):
        running.stop()
        return None
    return running


@pytest.fixture
def tinyproxy(tinyproxy_binary: str, tmp_path: Path) -> Iterator[Callable[..., TinyProxy]]:
    """A factory: ``tinyproxy(auth="user:pass")`` starts one on a loopback port."""
    started: list[TinyProxy] = []

    def start(auth: str | None = None) -> TinyProxy:
        for _ in range(3):
            port = free_port()
            conf = tmp_path / f"tinyproxy-{port}.conf"
            lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "MaxClients 20",
                     "Allow 127.0.0.1", "LogLevel Info"]  # no ConnectPort line: CONNECT to any port
            if auth:
                lines.append("BasicAuth " + auth.replace(":", " ", 1))
            conf.write_text("\n".join(lines) + "\n")
            running = _start_tinyproxy(tinyproxy_binary, conf, port)
            if running is not None:
                started.append(running)
                return running
        raise RuntimeError("tinyproxy could not bind a port")

    yield start
    for running in started:
        running.stop()

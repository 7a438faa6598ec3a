"""Upgrade on plain requests: a WebSocket over ws:// in absolute-form, and over CONNECT, with real clients.

The origin is a loopback WebSocket echo server (the ``websockets`` library).
Clients: Node's ``ws`` with ``http-proxy-agent`` (absolute-form handshake, the
case this feature exists for), Python's ``websockets`` (which opens a CONNECT
tunnel), and a raw socket for the exact bytes. curl could stand in for Node,
but the curl in Debian 12 is built without ws:// support.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve
from wire import exchange

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import RunningProxy
    from servers import OriginServer, RawOrigin


NODE_SCRIPT = Path(__file__).resolve().parent / "node" / "ws_through_proxy.js"


@pytest.fixture(scope="module")
def ws_origin() -> Iterator[str]:
    def echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/echo"
        server.shutdown()
    thread.join(5)


@pytest.fixture(scope="session")
def node_ws(node_packages: Path) -> Path:
    """Node, with ws and http-proxy-agent from tests/node."""
    node = shutil.which("node")
    assert node is not None, "node is installed by ./scripts/test"
    return Path(node)


def run_node(node: Path, url: str, proxy_url: str, message: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NODE_PATH=str(NODE_SCRIPT.parent / "node_modules"))
    return subprocess.run([str(node), str(NODE_SCRIPT), url, proxy_url, message], env=env,
                          capture_output=True, text=True, timeout=30)


def test_node_ws_through_an_absolute_form_upgrade(node_ws: Path, proxy: RunningProxy, ws_origin: str) -> None:
    done = run_node(node_ws, ws_origin, proxy.url, "hello over ws://")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello over ws://"
    flow = proxy.wait_flows(1)[0]  # recorded when the relay ends
    assert flow.kind == "http" and flow.method == "GET" and flow.status == 101
    assert flow.bytes_up > 0 and flow.bytes_down > 0
    assert ("Upgrade", "websocket") in flow.response_headers


def test_node_ws_fails_when_the_policy_forbids_websocket(node_ws: Path, proxy_factory: Callable[..., RunningProxy], ws_origin: str) -> None:
    """Negative control: with no protocol allowed, Upgrade is stripped and the handshake fails."""
    proxy = proxy_factory(upgrade_protocols=())
    done = run_node(node_ws, ws_origin, proxy.url, "hello")
    assert done.returncode == 3 and "handshake refused" in done.stderr, (done.stdout, done.stderr)


def test_python_websockets_through_a_connect_tunnel(proxy: RunningProxy, ws_origin: str) -> None:
    with connect(ws_origin, proxy=proxy.url, open_timeout=5) as ws:
        ws.send("over CONNECT")
        assert ws.recv(timeout=5) == "over CONNECT"
    flow = proxy.wait_flows(1)[0]
    assert flow.kind == "tunnel" and flow.status == 200


def _handshake(origin_url: str, key: bytes) -> bytes:
    authority = origin_url.split("/")[2]
    return (f"GET http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(key).decode()}\r\n\r\n").encode()


def test_raw_upgrade_relays_a_101_and_then_frames_both_ways(proxy: RunningProxy, ws_origin: str) -> None:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(_handshake(ws_origin, b"0123456789abcdef"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nUpgrade: websocket\r\n" in head and b"\r\nConnection: Upgrade\r\n" in head
        assert f"\r\nVia: 1.1 {proxy.server.via_name}\r\n".encode() in head
        # A masked text frame "hi", then the echo comes back unmasked.
        mask = b"\x01\x02\x03\x04"
        sock.sendall(b"\x81\x82" + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"hi")))
        assert sock.recv(4) == b"\x81\x02hi"


def test_upgrade_to_a_protocol_not_allowed_is_stripped(proxy: RunningProxy, origin: OriginServer) -> None:
    raw = exchange(proxy.address, f"GET {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\n"
                                  "Connection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert origin.received[-1].header("Upgrade") is None


def test_upgrade_without_connection_upgrade_is_stripped(proxy: RunningProxy, origin: OriginServer) -> None:
    exchange(proxy.address, f"GET {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            "Upgrade: websocket\r\n\r\n".encode())
    assert origin.received[-1].header("Upgrade") is None


def test_unasked_101_is_still_a_502(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    switcher = raw_origin(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    raw = exchange(proxy.address, f"GET http://{switcher.authority}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 502 ")


def test_upgrade_protocols_flag() -> None:
    from proxy.cli import parse_config

    assert parse_config([]).upgrade_protocols == ("websocket",)
    assert parse_config(["--upgrade-protocols", "WebSocket, foo"]).upgrade_protocols == ("websocket", "foo")
    assert parse_config(["--upgrade-protocols", ""]).upgrade_protocols == ()

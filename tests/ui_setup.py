"""A recording proxy, a loopback origin with a few kinds of answers, and the traffic page over the store.

Shared by test_ui.py (HTTP-level checks) and test_ui_browser.py (the page in
Chromium). Everything listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from pathlib import Path

from wire import through

from proxy.config import Config
from proxy.record.flows import Flow
from proxy.server.listener import ProxyServer
from proxy.testing.origins import Origin, OriginReply, OriginRequest
from proxy.ui.app import UiServer

ITEMS = {"items": [{"id": 1, "name": "widget", "tags": ["a", "b"]}], "total": 1}
# Each payload would run script if the page ever parsed recorded bytes as markup.
XSS_BODY = (b'<script>window.__xss = "body"; alert(1)</script>\n'
            b'"><img src=x onerror="window.__xss=\'img\'; alert(2)">\n'
            b'<a href="javascript:window.__xss=\'link\'">click</a>\n')
XSS_HEADER = '"><img src=x onerror="window.__xss=\'header\'; alert(3)">'
XSS_LINK = "<javascript:window.__xss='link-header'>"


def png(width: int = 2, height: int = 2) -> bytes:
    """A tiny valid PNG (red pixels), made here so no image file is vendored."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def route(request: OriginRequest) -> OriginReply:
    path = request.path.partition("?")[0]
    if path.startswith("/api/items"):
        return OriginReply(200, json.dumps(ITEMS, separators=(",", ":")).encode(),
                           [("Content-Type", "application/json")])
    if path == "/missing":
        return OriginReply(404, b"not here\n", [("Content-Type", "text/plain")])
    if path == "/boom":
        return OriginReply(503, b"overloaded\n", [("Content-Type", "text/plain")])
    if path == "/pixel.png":
        return OriginReply(200, png(), [("Content-Type", "image/png")])
    if path == "/blob":
        return OriginReply(200, bytes(range(256)) * 4, [("Content-Type", "application/octet-stream")])
    if path == "/xss":
        return OriginReply(200, XSS_BODY, [("Content-Type", "text/html"), ("X-Evil", XSS_HEADER),
                                           ("Link", XSS_LINK)])
    return OriginReply(200, f"{request.method} {request.path}\n".encode(), [("Content-Type", "text/plain")])


class Capture:
    """Origin -> recording proxy -> store file <- traffic page."""

    def __init__(self, folder: Path) -> None:
        self.store = folder / "flows.sqlite"
        self.origin = Origin().start()
        self.origin.handler = route
        self.proxy = ProxyServer(Config(port=0, record=str(self.store), capture_bodies=1 << 20), sinks=[])
        # Added after the recorder: once this sink has seen a flow, the recorder has it queued.
        self._seen = 0
        self._changed = threading.Condition()
        self.proxy.flows.add(self._count)
        self.proxy.__enter__()
        self.ui = UiServer(self.store, port=0).start()

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, *, url: str | None = None) -> int:
        """One request through the proxy (to the origin, or to ``url``), committed to the store
        before this returns."""
        with self._changed:
            before = self._seen
        resp, _ = through(('127.0.0.1', self.proxy.port), method, url or self.origin.url(path), body=body,
                          headers=headers)
        with self._changed:  # a flow is emitted just after the client has its response
            assert self._changed.wait_for(lambda: self._seen > before, timeout=10)
        self.flush()
        return resp.status

    def _count(self, flow: Flow) -> None:
        with self._changed:
            self._seen += 1
            self._changed.notify_all()

    def flush(self) -> None:
        recorder = self.proxy.recording.recorder
        assert recorder is not None and recorder.flush(timeout=10)

    @property
    def page(self) -> str:
        return f"http://127.0.0.1:{self.ui.port}"

    def close(self) -> None:
        self.ui.stop()
        self.proxy.__exit__(None, None, None)
        self.origin.stop()

#!/usr/bin/env python3
"""Take docs/ui.png: the traffic page over real traffic, in headless Chromium.

Everything runs on loopback: a local origin plays a small shop (several host
names, all dialled to it), a proxy records into a temporary store with a
couple of fault rules, a client sends a mix of requests, and the page is
photographed with a JSON flow open. Run it from a checkout:
``.venv/bin/python scripts/ui-screenshot.py [OUT.png]``.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ui_setup import png  # noqa: E402

from proxy.config import Config  # noqa: E402
from proxy.server.listener import ProxyServer  # noqa: E402
from proxy.server.rules import Delay, Fail, Match  # noqa: E402
from proxy.testing.origins import Origin, OriginReply, OriginRequest  # noqa: E402
from proxy.ui.app import UiServer  # noqa: E402

PRODUCTS = {"products": [{"id": 101, "name": "Trail runner", "price": {"amount": 89.0, "currency": "EUR"},
                          "tags": ["shoes", "outdoor"], "in_stock": True},
                         {"id": 102, "name": "Rain jacket", "price": {"amount": 129.5, "currency": "EUR"},
                          "tags": ["outdoor"], "in_stock": False}],
            "page": 1, "next": "/v1/products?page=2"}


def shop(request: OriginRequest) -> OriginReply:
    path = request.path.partition("?")[0]
    host = (request.header("Host") or "").partition(":")[0]
    if path.startswith("/v1/products"):
        return OriginReply(200, json.dumps(PRODUCTS).encode(), [("Content-Type", "application/json"),
                                                                ("Cache-Control", "max-age=60")])
    if path == "/v1/cart" and request.method == "POST":
        return OriginReply(201, b'{"cart":"c-7f3a","items":1}', [("Content-Type", "application/json"),
                                                                  ("Location", "/v1/cart/c-7f3a")])
    if path == "/v1/recommendations":
        return OriginReply(200, b'{"for":101,"items":[102,240,311]}', [("Content-Type", "application/json")])
    if path == "/v1/session":
        return OriginReply(401, b'{"error":"token expired"}', [("Content-Type", "application/json")])
    if path.endswith(".png"):
        return OriginReply(200, png(16, 16), [("Content-Type", "image/png")])
    if path.endswith(".css"):
        return OriginReply(200, b"body{font:14px sans-serif}\n" * 40, [("Content-Type", "text/css")])
    if path == "/":
        return OriginReply(200, f"<!doctype html><title>{host}</title><h1>Shop</h1>".encode() * 30,
                           [("Content-Type", "text/html; charset=utf-8")])
    return OriginReply(404, b"not found\n", [("Content-Type", "text/plain")])


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "ui.png"
    origin = Origin().start()
    origin.handler = shop

    def dial(address: tuple[str, int], timeout: float) -> socket.socket:
        # Every *.test name of the shop is the local origin; nothing leaves the machine.
        return socket.create_connection(origin.address if address[0].endswith(".test") else address, timeout)

    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "flows.sqlite"
        proxy = ProxyServer(Config(port=0, record=str(store), capture_bodies=1 << 20), connect=dial, sinks=[])
        proxy.faults.add(Delay(Match(host="api.shop.test", path="/v1/recommendations"), seconds=0.12))
        proxy.faults.add(Fail(Match(host="pay.shop.test"), status=503))
        with proxy, UiServer(store, port=0) as page_server:
            traffic(proxy.port)
            assert proxy.recording.recorder is not None and proxy.recording.recorder.flush()
            photograph(page_server.url, out)
    origin.stop()
    print(f"wrote {out}")
    return 0


def traffic(port: int) -> None:
    requests = [
        ("GET", "http://www.shop.test/", None), ("GET", "http://static.shop.test/app.css", None),
        ("GET", "http://static.shop.test/logo.png", None),
        ("GET", "http://api.shop.test/v1/products?page=1", None),
        ("GET", "http://api.shop.test/v1/session", None),
        ("POST", "http://api.shop.test/v1/cart", b'{"product":101,"qty":1}'),
        ("GET", "http://api.shop.test/v1/recommendations?for=101", None),
        ("GET", "http://static.shop.test/img/101.png", None),
        ("GET", "http://static.shop.test/img/102.png", None),
        ("POST", "http://pay.shop.test/v2/intents", b'{"amount":8900,"currency":"EUR"}'),
        ("GET", "http://api.shop.test/v1/products?page=2", None),
        ("GET", "http://www.shop.test/favicon.ico", None),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for method, url, body in requests:
        headers = {"User-Agent": "shop-app/2.3", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, url, body=body, headers=headers)
        conn.getresponse().read()
    conn.close()
    time.sleep(0.2)  # the last flow is emitted just after its response; this is a picture, not a test


def photograph(url: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"])
        page = browser.new_page(viewport={"width": 1440, "height": 760}, device_scale_factor=1)
        page.goto(url)
        row = page.locator("#rows tr").filter(has_text="/v1/products?page=1")
        row.click()
        expect(page.locator("#d-body pre.body.json")).to_be_visible()
        page.locator("#list").focus()
        page.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    sys.exit(main())

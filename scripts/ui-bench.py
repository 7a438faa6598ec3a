#!/usr/bin/env python3
"""How fast the traffic page's API answers over a large store (100,000 flows by default).

Builds a store with the recorder (varied hosts, methods, statuses, JSON
bodies), serves it with UiServer on loopback, and times each kind of request
the page makes: the first page, a page further back, filters by status, host
and free text, one flow in detail, and a HAR of a narrow filter. Prints the
median and worst of a few runs each, and the server's peak memory.
``.venv/bin/python scripts/ui-bench.py [FLOWS]``
"""

from __future__ import annotations

import http.client
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.record.flows import Flow  # noqa: E402
from proxy.record.store import Reader, Recorder  # noqa: E402
from proxy.ui import guard  # noqa: E402
from proxy.ui.app import UiServer  # noqa: E402

HOSTS = ["api.shop.test", "static.shop.test", "www.shop.test", "pay.shop.test", "auth.shop.test"]
STATUSES = [200] * 14 + [201, 204, 301, 304, 404, 500]


def make_store(path: Path, count: int) -> float:
    started = time.perf_counter()
    body = json.dumps({"items": list(range(20)), "note": "x" * 200}).encode()
    with Recorder(path, max_flows=count + 1) as recorder:
        for n in range(count):
            host = HOSTS[n % len(HOSTS)]
            recorder(Flow(kind="http", client="127.0.0.1:40000", method="POST" if n % 7 == 0 else "GET",
                          url=f"http://{host}/v1/items/{n}?page={n % 13}", status=STATUSES[n % len(STATUSES)],
                          reason="", bytes_down=len(body), started=1_700_000_000 + n / 10, duration_ms=3.2,
                          host=host, port=80, path=f"/v1/items/{n}?page={n % 13}",
                          request_headers=[("Host", host), ("User-Agent", f"bench/{n % 3}")],
                          response_headers=[("Content-Type", "application/json"),
                                            ("Content-Length", str(len(body)))],
                          response_body=body, connect_ms=0.4, send_ms=0.1, wait_ms=2.5, receive_ms=0.2))
            if n % 5000 == 4999:
                recorder.flush(60)
        recorder.flush(60)
    return time.perf_counter() - started


def timed(port: int, cookie: str, path: str, runs: int = 5) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(runs):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        began = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - began) * 1000)
        conn.close()
        assert resp.status == 200, (path, resp.status, body[:200])
        size = len(body)
    return statistics.median(times), max(times), size


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "flows.sqlite"
        took = make_store(store, count)
        with Reader(store) as reader:
            assert reader.count() == count, reader.count()
        print(f"store: {count} flows, {store.stat().st_size / 1e6:.0f} MB, written in {took:.1f} s")
        with UiServer(store, port=0) as ui:
            cookie = f"{guard.cookie_name(ui.port)}={ui.token}"
            middle = count // 2
            cases = [
                ("first page (200 newest + count)", "/api/flows?limit=200"),
                ("a page back from the middle", f"/api/flows?limit=200&before={middle}"),
                ("status=5xx", "/api/flows?limit=200&status=5xx"),
                ("host=pay", "/api/flows?limit=200&host=pay"),
                ("free text 'bench/2'", "/api/flows?limit=200&q=bench/2"),
                ("free text matching nothing", "/api/flows?limit=200&q=no-such-text"),
                ("one flow in detail", f"/api/flows/{middle}"),
                ("HAR of a narrow filter (q=items/4242)", "/api/har?q=items/4242"),
            ]
            print(f"{'request':40} {'median ms':>10} {'worst ms':>9} {'bytes':>9}")
            for name, path in cases:
                median, worst, size = timed(ui.port, cookie, path)
                print(f"{name:40} {median:10.1f} {worst:9.1f} {size:9}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (store writer, server and client): {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

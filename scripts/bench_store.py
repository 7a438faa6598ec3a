#!/usr/bin/env python3
"""The flow store's cost on its own: bytes per flow on disk, and memory over a long capture.

Feeds synthetic Flow records (a small GET: 7 request and 8 response header
fields, a 1 KiB response body, as in the proxy benchmark's GET /1k) straight
into ``Recorder`` -- the sink the proxy calls, its queue and its writer thread,
with no proxy and no sockets -- and reports, at each checkpoint (10k, 100k,
1M flows by default): flows written per second, the process's RSS, the store's
size on disk and its bytes per flow. Flows are handed over in bursts of
``--burst`` with a flush after each, so the queue never overflows and every
flow is written::

    python3 scripts/bench_store.py                     # 10k, 100k, 1M
    python3 scripts/bench_store.py --flows 10000,1000000 --body 0

Run it on a quiet machine for stable rates; RSS and sizes do not depend on load.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.record.flows import Flow
from proxy.record.store import Reader, Recorder


def rss_mib() -> float:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def synthetic(n: int, body: bytes) -> Flow:
    return Flow(kind="http", client=f"127.0.0.1:{40000 + n % 20000}", method="GET",
                url=f"http://127.0.0.1:8081/1k?n={n}", status=200, reason="OK", bytes_down=len(body),
                duration_ms=0.42, upstream_reused=True, host="127.0.0.1", port=8081, path=f"/1k?n={n}",
                request_headers=[("Host", "127.0.0.1:8081"), ("User-Agent", "wrk"), ("Accept", "*/*"),
                                 ("Accept-Encoding", "gzip"), ("X-Request-Id", f"req-{n:08d}"),
                                 ("Cookie", "session=abcdef0123456789"), ("Proxy-Connection", "keep-alive")],
                response_headers=[("Server", "nginx/1.22.1"), ("Date", "Wed, 02 Dec 2026 06:00:00 GMT"),
                                  ("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body))),
                                  ("Last-Modified", "Wed, 02 Dec 2026 05:00:00 GMT"),
                                  ("ETag", '"692e8e10-400"'), ("Accept-Ranges", "bytes"),
                                  ("Via", "1.1 fwdproxy-1a2b3c")],
                response_body=body, connect_ms=0.01, send_ms=0.03, wait_ms=0.3, receive_ms=0.02)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", default="10000,100000,1000000", help="checkpoints (default %(default)s)")
    p.add_argument("--body", type=int, default=1024,
                   help="response body bytes per flow (default %(default)s)")
    p.add_argument("--burst", type=int, default=5000, help="flows handed over between flushes")
    p.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temp dir)")
    args = p.parse_args()
    checkpoints = sorted(int(x) for x in args.flows.split(","))
    body = bytes(range(256)) * (args.body // 256) + bytes(args.body % 256)
    folder = Path(tempfile.mkdtemp(prefix="fwdproxy-store-bench-", dir=args.dir))
    path = folder / "bench.sqlite"
    print(f"store {path}; body {args.body} B; RSS before opening {rss_mib():.1f} MiB")
    print("| flows | writes/s (this stretch) | RSS MiB | store MiB | bytes per flow |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    recorder = Recorder(path)
    done, started = 0, time.monotonic()
    try:
        for target in checkpoints:
            stretch, stretch_start = target - done, time.monotonic()
            while done < target:
                for n in range(done, min(done + args.burst, target)):
                    recorder(synthetic(n, body))
                done = min(done + args.burst, target)
                if not recorder.flush(120):
                    raise SystemExit("writer did not keep up within 120 s")
            rate = stretch / (time.monotonic() - stretch_start)
            size = sum(f.stat().st_size for f in folder.iterdir())
            print(f"| {target:,} | {rate:,.0f} | {rss_mib():.1f} | {size / 2**20:.1f} "
                  f"| {size / target:,.0f} |", flush=True)
        stats = recorder.stats()
    finally:
        recorder.close()
    size = path.stat().st_size
    with Reader(path) as reader:
        count = reader.count()
    print(f"\nafter close (WAL checkpointed): {count:,} flows, {size / 2**20:.1f} MiB, "
          f"{size / max(count, 1):,.0f} bytes per flow; dropped {stats['dropped_flows']} flows, "
          f"{stats['dropped_bodies']} bodies; {time.monotonic() - started:.0f} s in all")
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

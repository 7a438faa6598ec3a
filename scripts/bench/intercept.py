"""Intercepted HTTPS rows for bench.py (``--intercept``): fwdproxy --intercept beside mitmdump.

Both proxies terminate the client's TLS with their own CA and open their own
TLS connection to the bench's nginx origin: fwdproxy verifying it
(``--upstream-ca``), mitmdump with ``ssl_insecure`` (as its docs advise for a
local origin) and ``stream_large_bodies`` so it streams the 100 MiB body
instead of holding it. The client is curl, HTTP/1.1 on both sides, driven in
parallel mode (``-Z``): a keep-alive run reuses one tunnel per connection, a
"new connection" run sends ``Connection: close`` so every request costs a
CONNECT and a client handshake. Also measured: CPU ms fwdproxy spends minting
a leaf (certificate and server context), and RSS per idle intercepted session.

Loaded by bench.py, which passes itself in as ``b`` for its helpers.
"""

from __future__ import annotations

import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SESSIONS_QUICK, SESSIONS_FULL = 100, 300


def start_fwdproxy(b: Any, children: Any, tmp: Path, origin: Any) -> Any:
    """fwdproxy --intercept on the bench venv's Python (the same interpreter, plus trustme)."""
    log = tmp / "fwdproxy-intercept.log"
    proc = children.start([sys.executable, "-m", "proxy", "--port", "0", "--log-level", "warning",
                           "--intercept", "--ca-dir", str(tmp / "fwdproxy-ca"),
                           "--upstream-ca", str(origin.ca_pem)], log, cwd=b.ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on http://" in text:
            port = int(text.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])
            target = b.Target("fwdproxy --intercept", port, proc, "fwdproxy")
            target.ca = tmp / "fwdproxy-ca" / "ca.pem"
            return target
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"fwdproxy --intercept did not start: {log.read_text(errors='replace')[-2000:]}")


def start_mitmdump(b: Any, children: Any, tmp: Path) -> Any:
    port = b.free_port()
    confdir = tmp / "mitmproxy"
    mitmdump = str(b.VENV / "bin" / "mitmdump")
    proc = children.start([mitmdump, "--listen-host", b.HOST, "--listen-port", str(port), "-q",
                           "--set", f"confdir={confdir}", "--set", "ssl_insecure=true",
                           "--set", "stream_large_bodies=1m", "--set", "connection_strategy=lazy"],
                          tmp / "mitmdump.log")
    b.wait_port(port, proc, "mitmdump", timeout=60)
    version = subprocess.run([mitmdump, "--version"], capture_output=True, text=True, timeout=60)
    target = b.Target("mitmdump", port, proc, version.stdout.splitlines()[0] if version.stdout else "")
    target.ca = confdir / "mitmproxy-ca-cert.pem"
    return target


def curl_many(b: Any, target: Any, origin: Any, tmp: Path, count: int, conns: int,
              close: bool) -> dict[str, Any]:
    """count GETs of /1k over conns parallel connections; requests per second and proxy CPU."""
    config = tmp / f"curl-{count}.cfg"
    url = origin.url("/1k", tls=True)
    config.write_text(f'url = "{url}"\noutput = "/dev/null"\n' * count)
    cmd = ["curl", "-sS", "--no-progress-meter", "--http1.1", "-Z", "--parallel-max", str(conns),
           "--parallel-immediate", "-x", f"http://{b.HOST}:{target.port}", "--cacert", str(target.ca),
           "-K", str(config), "-w", "%{http_code}\n"]
    if close:
        cmd += ["-H", "Connection: close"]
    cpu0, t0 = b.cpu_seconds(target.proc.pid), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed, cpu = time.monotonic() - t0, b.cpu_seconds(target.proc.pid) - cpu0
    ok = out.stdout.split().count("200")
    if ok != count:
        return {"error": f"{ok} of {count} answered 200: {out.stderr[-300:]}"}
    return {"rps": count / elapsed, "cpu_per_10k": cpu * 10000 / count}


def download(b: Any, target: Any, origin: Any) -> dict[str, Any]:
    cmd = ["curl", "-sS", "--http1.1", "-x", f"http://{b.HOST}:{target.port}", "--cacert", str(target.ca),
           "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}",
           origin.url("/100m", tls=True)]
    peak = b.PeakRss(target.proc.pid)
    with peak:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    code, size, speed = [*out.stdout.split(), "0", "0", "0"][:3]
    if code != "200" or int(size) != b.BIG_SIZE:
        return {"error": f"status {code}, {size} bytes: {out.stderr[-300:]}"}
    return {"mb": float(speed) / 1e6, "peak_rss_mib": peak.peak / 1024}


def idle_sessions(b: Any, target: Any, origin: Any, count: int) -> dict[str, Any]:
    """RSS per intercepted TLS session left idle after one request (KiB)."""
    context = ssl.create_default_context(cafile=str(target.ca))
    context.set_alpn_protocols(["http/1.1"])
    before = b.rss_kib(target.proc.pid)
    held = []
    request = f"GET /1k HTTP/1.1\r\nHost: {b.HOST}:{origin.https_port}\r\n\r\n".encode()
    try:
        for _ in range(count):
            raw = socket.create_connection((b.HOST, target.port), timeout=30)
            raw.sendall(f"CONNECT {b.HOST}:{origin.https_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += raw.recv(4096)
            tls = context.wrap_socket(raw, server_hostname=b.HOST)
            tls.sendall(request)
            got = b""
            while len(got) < b.SMALL_SIZE or b"\r\n\r\n" not in got:
                got += tls.recv(65536)
            held.append(tls)
        time.sleep(1.0)  # let the proxy settle (no traffic is what is being measured)
        after = b.rss_kib(target.proc.pid)
    finally:
        for sock in held:
            sock.close()
    return {"kib_per_session": (after - before) / count, "sessions": count}


def mint_cost(b: Any, names: int = 200) -> dict[str, Any]:
    """CPU ms fwdproxy spends per new name: the leaf certificate, and it in a server context."""
    sys.path.insert(0, str(b.ROOT))
    import trustme

    from proxy.tls.leaves import LeafMint

    mint = LeafMint(trustme.CA(), max_cached=names + 1)
    t0 = time.process_time()
    for i in range(names):
        mint.mint(f"cert{i}.bench.test")
    certificate = (time.process_time() - t0) * 1000 / names
    t0 = time.process_time()
    for i in range(names):
        mint.context(f"host{i}.bench.test")
    return {"certificate_ms": certificate, "context_ms": (time.process_time() - t0) * 1000 / names}


def run(b: Any, args: Any, children: Any, tmp: Path, origin: Any) -> str:
    """Measure and return the Markdown section."""
    targets = [start_fwdproxy(b, children, tmp, origin), start_mitmdump(b, children, tmp)]
    small = 2000 if args.quick else 6000
    fresh = 500 if args.quick else 1500
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
    for rnd in range(args.rounds):
        for target in targets:
            b.say(f"intercept round {rnd + 1}: {target.name}")
            res = runs[target.name]
            res.setdefault("ka", []).append(curl_many(b, target, origin, tmp, small, 16, close=False))
            res.setdefault("nc", []).append(curl_many(b, target, origin, tmp, fresh, 16, close=True))
            res.setdefault("dl", []).append(download(b, target, origin))
    sessions = SESSIONS_QUICK if args.quick else SESSIONS_FULL
    idle = {t.name: idle_sessions(b, t, origin, sessions) for t in targets}
    mint = mint_cost(b)
    names = [t.name for t in targets]

    def cell(name: str, key: str, field: str, fmt: str) -> str:
        values = [r[field] for r in runs[name][key] if "error" not in r]
        errors = [r["error"] for r in runs[name][key] if "error" in r]
        if not values:
            return f"error: {errors[0][:80]}" if errors else ""
        return format(statistics.median(values), fmt)

    rows = [
        ["keep-alive GET /1k, 16 connections (req/s)", *(cell(n, "ka", "rps", ".0f") for n in names)],
        ["new TLS connection per request, 16 at a time (req/s)",
         *(cell(n, "nc", "rps", ".0f") for n in names)],
        ["100 MiB download (MB/s)", *(cell(n, "dl", "mb", ".0f") for n in names)],
        ["proxy CPU s per 10k requests (keep-alive)",
         *(cell(n, "ka", "cpu_per_10k", ".2f") for n in names)],
        ["proxy CPU s per 10k requests (new connection)",
         *(cell(n, "nc", "cpu_per_10k", ".2f") for n in names)],
        ["peak RSS during the download (MiB)", *(cell(n, "dl", "peak_rss_mib", ".0f") for n in names)],
        [f"KiB per idle intercepted session ({sessions} held)",
         *(f"{idle[n]['kib_per_session']:.1f}" for n in names)],
    ]
    versions = "; ".join(f"{t.name}: {t.version}" for t in targets)
    return "\n\n".join([
        "## Intercepted HTTPS (fwdproxy --intercept, mitmdump)",
        f"curl --http1.1 -Z through each proxy to nginx over TLS, {args.rounds} round(s), medians; "
        f"{small} keep-alive requests and {fresh} with `Connection: close` per run. Versions: {versions}. "
        "mitmdump runs with ssl_insecure=true, stream_large_bodies=1m, connection_strategy=lazy.",
        b.table(["measure", *names], rows),
        f"fwdproxy mints a leaf in {mint['certificate_ms']:.2f} ms of CPU (certificate only) and "
        f"{mint['context_ms']:.2f} ms with its server context; each name is minted once and cached.",
    ])

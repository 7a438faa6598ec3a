#!/usr/bin/env python3
"""Benchmark fwdproxy side by side with direct access and with peer proxies (issue 6).

One command on a fresh Debian/Ubuntu machine::

    python3 scripts/bench.py --quick            # under 3 minutes once installed
    python3 scripts/bench.py                    # full: 3 rounds, 1/16/64/256 connections
    python3 scripts/bench.py --peers squid --rounds 5 --profile
    python3 scripts/bench.py --chain            # fwdproxy chained to a parent vs the parent alone
    python3 scripts/bench.py --record --peers '' --only ka,dl_plain   # what --record costs

What it does:

* installs what is missing: nginx, wrk, curl, squid, tinyproxy (apt-get), and a
  venv under bench-results/venv with proxy.py, matplotlib, trustme and py-spy;
  then re-runs itself inside that venv. fwdproxy itself runs on the Python
  that started this script, from the checkout, as ``python3 -m proxy``.
* starts its own origin: nginx with one worker, loopback only, keep-alive,
  /1k and /100m files, HTTP and HTTPS (a trustme certificate), stub_status.
* starts every target: direct (no proxy), fwdproxy, and the peers asked for,
  each on a loopback port with a config that does not hold it back.
* measures, alternating targets within each round: keep-alive and
  new-connection-per-request GET /1k throughput with wrk (absolute-form
  requests, see bench/wrk-absolute.lua) and p50/p99 latency; 100 MiB plain and
  CONNECT-tunnelled (HTTPS) downloads with curl and the proxy's peak RSS;
  proxy CPU seconds per 10k requests (/proc/PID/stat, whole process tree);
  upstream connections opened per request (nginx stub_status "accepts");
  idle RSS; RSS and survival of many idle CONNECT tunnels (first round only).
* reports medians over rounds, each throughput as a ratio to direct measured
  in the same round, as a Markdown table, a PNG chart and raw JSON in
  bench-results/.

Only loopback addresses are used. Every child runs in its own process group
and is killed at exit; every subprocess call has a timeout. It is a benchmark,
not a test: CI does not run it. The machine is shared and nothing is pinned,
so read small differences as noise.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "bench"
VENV = ROOT / "bench-results" / "venv"
VENV_PACKAGES = ("proxy.py", "matplotlib", "trustme", "py-spy", "mitmproxy")
APT_TOOLS = {"nginx": "nginx", "wrk": "wrk", "curl": "curl"}
PEER_TOOLS = {"squid": "squid", "tinyproxy": "tinyproxy"}
PEERS = ("squid", "tinyproxy", "proxy.py")
HOST = "127.0.0.1"
RECORDING = "fwdproxy+record"
RECORD_STORE = "bench-record.sqlite"
BIG_SIZE = 100 * 1024 * 1024
SMALL_SIZE = 1024
PROXY_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
CLEAN_ENV = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_ENV}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- command line -------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 round, 3 s runs, 16/64 keep-alive and 16 new-connection clients, "
                        "300 idle tunnels held 5 s (under 3 minutes)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma-separated peers to compare, from %(default)s; '' for none")
    p.add_argument("--rounds", type=int, help="rounds of alternating targets (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 5; quick 3)")
    p.add_argument("--connections", help="client counts, comma-separated (default 1,16,64,256)")
    p.add_argument("--tunnels", type=int, help="idle CONNECT tunnels to hold (default 1000; quick 300)")
    p.add_argument("--hold", type=float, help="seconds to hold them (default 15; quick 5)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default %(default)s)")
    p.add_argument("--fwdproxy-args", default="",
                   help="extra flags for fwdproxy, e.g. '--workers 2' (space-separated)")
    p.add_argument("--metrics-off", action="store_true",
                   help="also run fwdproxy with --no-metrics as a target (fwdproxy-nometrics), to show "
                        "what counting flows for /metrics costs (same rounds, alternating)")
    p.add_argument("--intercept", action="store_true",
                   help="also intercepted HTTPS: fwdproxy --intercept beside mitmdump "
                        "(scripts/bench/intercept.py)")
    p.add_argument("--record", action="store_true",
                   help="also run fwdproxy+record: fwdproxy with --record (a SQLite store in the temp "
                        "dir, bodies up to 1 MiB), measured in the same rounds as fwdproxy")
    p.add_argument("--only", default="",
                   help="only these measurements, comma-separated prefixes of ka, nc, dl_plain, "
                        "dl_tunnel, tunnels (e.g. 'ka,dl_plain'); default all")
    p.add_argument("--profile", action="store_true",
                   help="also profile fwdproxy with py-spy under keep-alive load (64 clients)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="results directory")
    p.add_argument("--no-install", action="store_true", help="never run apt-get or pip")
    p.add_argument("--chain", action="store_true",
                   help="only keep-alive GET /1k through fwdproxy chained to a parent (fwdproxy, "
                        "tinyproxy) against each parent alone, same run (default clients 1,16)")
    args = p.parse_args(argv)
    return _apply_defaults(args, p)


def _apply_defaults(args: argparse.Namespace, p: argparse.ArgumentParser) -> argparse.Namespace:
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (3.0 if quick else 5.0)
    args.tunnels = args.tunnels or (300 if quick else 1000)
    args.hold = args.hold or (5.0 if quick else 15.0)
    if args.connections:
        ka = nc = [int(c) for c in args.connections.split(",") if c.strip()]
    else:
        ka, nc = ([16, 64], [16]) if quick else ([1, 16, 64, 256], [1, 16, 64, 256])
    args.ka_conns, args.nc_conns = ka, nc
    args.peer_list = [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(args.peer_list) - set(PEERS)
    if unknown:
        p.error(f"unknown peers {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
    if not 1 <= args.rounds <= 50 or not 0.5 <= args.duration <= 120:
        p.error("--rounds must be 1..50 and --duration 0.5..120")
    args.out = args.out.resolve()
    return args


# -- installing what is missing -------------------------------------------------

def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run with a timeout, text output, proxy variables removed, in its own group."""
    kw.setdefault("env", CLEAN_ENV)
    kw.setdefault("capture_output", True)
    return subprocess.run(cmd, timeout=timeout, text=True, start_new_session=True, **kw)


def ensure_apt(peers: list[str], allow: bool) -> None:
    wanted = dict(APT_TOOLS)
    wanted.update({k: v for k, v in PEER_TOOLS.items() if k in peers})
    missing = sorted({pkg for binary, pkg in wanted.items() if not find_binary(binary)})
    if not missing:
        return
    if not allow:
        sys.exit(f"bench: missing {', '.join(missing)} and --no-install was given")
    apt_install(missing)


def apt_install(packages: list[str]) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    say(f"installing {' '.join(packages)} with apt-get")
    env = dict(CLEAN_ENV, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([*sudo, "apt-get", "update", "-q"],
                [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        done = run(cmd, timeout=900, env=env, capture_output=False, stdout=subprocess.DEVNULL)
        if done.returncode:
            sys.exit(f"bench: {' '.join(cmd)} failed with status {done.returncode}")


def find_binary(name: str) -> str | None:
    """A binary on PATH or in the sbin directories apt puts daemons in."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=path)


def ensure_venv(allow: bool) -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".bench-packages"
    if python.exists() and stamp.exists() and stamp.read_text() == " ".join(VENV_PACKAGES):
        return python
    if not allow:
        sys.exit(f"bench: {VENV} is missing and --no-install was given")
    say(f"creating {VENV} with {' '.join(VENV_PACKAGES)}")
    if run([sys.executable, "-m", "venv", "--clear", str(VENV)], timeout=300).returncode:
        apt_install(["python3-venv"])  # Debian splits ensurepip out of python3
        if run([sys.executable, "-m", "venv", "--clear", str(VENV)], timeout=300).returncode:
            sys.exit("bench: python3 -m venv failed")
    pip = run([str(python), "-m", "pip", "install", "-q", *VENV_PACKAGES], timeout=900,
              capture_output=False, stdout=subprocess.DEVNULL)
    if pip.returncode:
        sys.exit("bench: pip install failed")
    stamp.write_text(" ".join(VENV_PACKAGES))
    return python


def reexec_in_venv(args: argparse.Namespace) -> None:
    """Install what is missing, then continue inside the bench venv (matplotlib, trustme)."""
    if os.environ.get("BENCH_IN_VENV") == "1":
        return
    ensure_apt(args.peer_list, not args.no_install)
    python = ensure_venv(not args.no_install)
    env = dict(os.environ, BENCH_IN_VENV="1", BENCH_BASE_PYTHON=sys.executable)
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]], env)


# -- child processes ----------------------------------------------------------

class Children:
    """Long-running children, each in its own process group; stop_all() kills every group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=CLEAN_ENV, start_new_session=True, preexec_fn=_die_with_parent)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (workers, helpers)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the bench dies without cleaning up (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout:g}s")


def render(template: str, dest: Path, **values: object) -> Path:
    text = string.Template((ASSETS / template).read_text()).substitute(values)
    dest.write_text(text)
    return dest


# -- /proc readings -------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    kids, tree, todo = _children_map(), list[int](), [root]
    while todo and len(tree) < 10000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime+stime of a process and its live descendants, plus its reaped children."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if pid == root:
            total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def system_seconds(root: int) -> float:
    """stime alone (time in the kernel) of a process and its live descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            total += int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def voluntary_switches(root: int) -> int:
    """Voluntary context switches of every thread of a process tree (live threads only)."""
    total = 0
    for pid in process_tree(root):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def _cpu_reading(pid: int | None) -> tuple[float, float, int]:
    """(CPU seconds, of which system, voluntary context switches) of a target's process tree."""
    return (cpu_seconds(pid), system_seconds(pid), voluntary_switches(pid)) if pid else (0.0, 0.0, 0)


def rss_kib(root: int) -> int:
    """VmRSS summed over a process tree (shared pages counted per process)."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def tcp_active_opens() -> int:
    """System-wide count of TCP connect()s (noisy on a shared machine, but a sanity check)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("ActiveOpens")])


class PeakRss:
    """Samples a process tree's RSS every 50 ms on a thread while in a with block."""

    def __init__(self, root: int | None) -> None:
        self.root, self.peak, self.start = root, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        if self.root:
            self.start = self.peak = rss_kib(self.root)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._stop.wait(0.05) and self.root:
            self.peak = max(self.peak, rss_kib(self.root))


# -- origin: nginx ---------------------------------------------------------------

@dataclass
class Origin:
    http_port: int
    https_port: int
    ca_pem: Path
    proc: subprocess.Popen[bytes]

    def url(self, path: str, tls: bool = False) -> str:
        return f"https://{HOST}:{self.https_port}{path}" if tls else f"http://{HOST}:{self.http_port}{path}"

    def accepts(self) -> int:
        """nginx's count of accepted connections (this query's own connection included)."""
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=10)
        try:
            conn.request("GET", "/nginx_status")
            body = conn.getresponse().read().decode()
        finally:
            conn.close()
        return int(body.splitlines()[2].split()[0])


def write_certs(tmp: Path) -> Path:
    import trustme  # from the bench venv

    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    cert.private_key_pem.write_to_path(str(tmp / "origin-key.pem"))
    with open(tmp / "origin-cert.pem", "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return tmp / "ca.pem"


def write_docroot(tmp: Path) -> Path:
    docroot = tmp / "www"
    docroot.mkdir()
    (docroot / "1k").write_bytes(b"x" * (SMALL_SIZE - 1) + b"\n")
    block = os.urandom(1024 * 1024)
    with open(docroot / "100m", "wb") as f:
        for _ in range(BIG_SIZE // len(block)):
            f.write(block)
    for path in (tmp, docroot, *docroot.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return docroot


def start_origin(children: Children, tmp: Path) -> Origin:
    ca_pem = write_certs(tmp)
    docroot = write_docroot(tmp)
    http_port, https_port = free_port(), free_port()
    conf = render("nginx.conf.in", tmp / "nginx.conf", tmp=tmp, docroot=docroot,
                  http_port=http_port, https_port=https_port,
                  user_line="user root root;" if os.geteuid() == 0 else "")
    nginx = find_binary("nginx") or "nginx"
    proc = children.start([nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                           "-c", str(conf)], tmp / "nginx.out")
    wait_port(http_port, proc, "nginx")
    wait_port(https_port, proc, "nginx (TLS)")
    return Origin(http_port, https_port, ca_pem, proc)


# -- targets ----------------------------------------------------------------------

@dataclass
class Target:
    name: str
    port: int                                   # where clients connect
    proc: subprocess.Popen[bytes] | None = None  # root of the process tree (None: direct)
    version: str = ""
    idle_rss_kib: int = 0

    @property
    def proxied(self) -> bool:
        return self.proc is not None


def start_fwdproxy(children: Children, tmp: Path, extra: list[str],
                   launcher: list[str] | None = None, log_name: str = "fwdproxy.log",
                   name: str = "fwdproxy") -> Target:
    """fwdproxy on the Python that started the bench, from the checkout, on a free port."""
    python = os.environ.get("BENCH_BASE_PYTHON", sys.executable)
    log = tmp / log_name
    proc = children.start([python, *(launcher or ["-m", "proxy"]), "--port", "0",
                           "--log-level", "warning", *extra], log, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on http://" in text:
            line = next(ln for ln in text.splitlines() if "listening on http://" in ln)
            port = int(line.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1])
            return Target(name, port, proc, line.split(" listening")[0].strip())
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"fwdproxy did not start: {log.read_text(errors='replace')[-2000:]}")


def start_squid(children: Children, tmp: Path) -> Target:
    port = free_port()
    conf = render("squid.conf.in", tmp / "squid.conf", port=port, tmp=tmp)
    squid = find_binary("squid") or "squid"
    proc = children.start([squid, "-N", "-f", str(conf)], tmp / "squid.out")
    wait_port(port, proc, "squid", timeout=30)
    version = run([squid, "-v"], timeout=10).stdout.splitlines()[0]
    return Target("squid", port, proc, version.replace("Squid Cache: Version", "squid"))


def start_tinyproxy(children: Children, tmp: Path) -> Target:
    port = free_port()
    # Run as root it wants a User; the log lives in our temp dir, so stay root.
    user = "User root\nGroup root" if os.geteuid() == 0 else ""
    conf = render("tinyproxy.conf.in", tmp / "tinyproxy.conf", port=port, tmp=tmp, user_line=user)
    binary = find_binary("tinyproxy") or "tinyproxy"
    proc = children.start([binary, "-d", "-c", str(conf)], tmp / "tinyproxy.out")
    wait_port(port, proc, "tinyproxy")
    version = run([binary, "-v"], timeout=10).stdout.strip()
    return Target("tinyproxy", port, proc, version)


def start_proxypy(children: Children, tmp: Path) -> Target:
    port = free_port()
    cwd = tmp / "proxy.py"  # not the checkout: its module name "proxy" is ours too
    cwd.mkdir(exist_ok=True)
    python = str(VENV / "bin" / "python")
    workers = str(os.cpu_count() or 2)
    proc = children.start([python, "-m", "proxy", "--hostname", HOST, "--port", str(port),
                           "--num-workers", workers, "--num-acceptors", workers,
                           "--backlog", "4096", "--open-file-limit", "65536",
                           "--log-level", "ERROR", "--data-dir", str(cwd)],
                          tmp / "proxy.py.out", cwd=cwd)
    wait_port(port, proc, "proxy.py", timeout=30)
    version = run([python, "-m", "proxy", "--version"], timeout=30, cwd=cwd).stdout.strip()
    return Target("proxy.py", port, proc, f"proxy.py {version}")


def start_targets(children: Children, tmp: Path, origin: Origin,
                  args: argparse.Namespace) -> list[Target]:
    nginx = run([find_binary("nginx") or "nginx", "-v"], timeout=10).stderr.strip()
    targets = [Target("direct", origin.http_port, version=nginx.replace("nginx version: ", ""))]
    targets.append(start_fwdproxy(children, tmp, args.fwdproxy_args.split()))
    if args.record:
        targets.append(start_fwdproxy(children, tmp, [*args.fwdproxy_args.split(), "--record",
                                                      str(tmp / RECORD_STORE)],
                                      log_name="fwdproxy-record.log", name=RECORDING))
    if args.metrics_off:
        targets.append(start_fwdproxy(children, tmp, [*args.fwdproxy_args.split(), "--no-metrics"],
                                      log_name="fwdproxy-nometrics.log", name="fwdproxy-nometrics"))
    starters: dict[str, Callable[[Children, Path], Target]] = {
        "squid": start_squid, "tinyproxy": start_tinyproxy, "proxy.py": start_proxypy}
    for name in args.peer_list:
        try:
            targets.append(starters[name](children, tmp))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            say(f"skipping {name}: {exc}")
    time.sleep(1.0)  # let start-up settle before reading idle RSS
    for target in targets:
        if target.proc:
            target.idle_rss_kib = rss_kib(target.proc.pid)
        check_target(target, origin)
        say(f"target {target.name}: {target.version} on {HOST}:{target.port}")
    return targets


def check_target(target: Target, origin: Origin) -> None:
    """One GET through the target, so a misconfigured peer fails loudly, not as zeros."""
    conn = http.client.HTTPConnection(HOST, target.port, timeout=10)
    try:
        path = origin.url("/1k") if target.proxied else "/1k"
        conn.request("GET", path, headers={"Host": f"{HOST}:{origin.http_port}"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200 or len(body) != SMALL_SIZE:
        raise RuntimeError(f"{target.name}: GET /1k gave {resp.status}, {len(body)} bytes")


# -- measurements -------------------------------------------------------------------

def wrk_run(target: Target, origin: Origin, conns: int, close: bool,
            args: argparse.Namespace) -> dict[str, Any]:
    """wrk against a target: req/s, latency, errors, CPU per 10k, upstream connections per request."""
    env = dict(CLEAN_ENV, BENCH_CLOSE="1" if close else "0",
               BENCH_TARGET=origin.url("/1k") if target.proxied else "",
               BENCH_HOST=f"{HOST}:{origin.http_port}")
    threads = max(1, min(args.wrk_threads, conns))
    cmd = [find_binary("wrk") or "wrk", "-t", str(threads), "-c", str(conns),
           "-d", f"{args.duration:g}s", "--timeout", "5s", "-s", str(ASSETS / "wrk-absolute.lua"),
           f"http://{HOST}:{target.port}/1k"]
    accepts0 = origin.accepts()
    opens0 = tcp_active_opens()
    pid = target.proc.pid if target.proc else None
    cpu0, sys0, switches0 = _cpu_reading(pid)
    done = run(cmd, timeout=args.duration + 60, env=env)
    cpu1, sys1, switches1 = _cpu_reading(pid)
    opens1 = tcp_active_opens()
    accepts1 = origin.accepts() - 1  # the query itself was one accept
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), "")
    if not line:
        raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")
    res = json.loads(line.split(" ", 1)[1])
    reqs = max(res["requests"], 1)
    upstream = accepts1 - accepts0
    client_opens = opens1 - opens0 - (upstream if target.proxied else 0)
    return {"rps": res["requests"] / (res["duration_us"] / 1e6),
            "p50_ms": res["p50_us"] / 1000, "p99_ms": res["p99_us"] / 1000,
            "requests": res["requests"],
            "non2xx": res["status_errors"],
            "socket_errors": sum(res[k] for k in res if k.endswith("_errors") and k != "status_errors"),
            "cpu_per_10k": (cpu1 - cpu0) * 10000 / reqs if target.proc else None,
            # The kernel's share of that CPU, and voluntary context switches (a thread blocking,
            # or handing the GIL over) per request: threads that outlive the run only.
            "sys_share": (sys1 - sys0) / (cpu1 - cpu0) if target.proc and cpu1 > cpu0 else None,
            "switches_per_req": (switches1 - switches0) / reqs if target.proc else None,
            "upstream_per_req": upstream / reqs, "client_conns_per_req": client_opens / reqs}


def download(target: Target, origin: Origin, tls: bool, max_time: float) -> dict[str, Any]:
    """curl GET /100m, plain (absolute-form) or over HTTPS (a CONNECT tunnel): MB/s and peak RSS."""
    via = ["-x", f"http://{HOST}:{target.port}"] if target.proxied else ["--noproxy", "*"]
    cmd = ["curl", "-sS", "-o", "/dev/null", "--max-time", f"{max_time:g}", *via,
           "--cacert", str(origin.ca_pem), "-w", "%{http_code} %{size_download} %{time_total}",
           origin.url("/100m", tls)]
    with PeakRss(target.proc.pid if target.proc else None) as rss:
        done = run([find_binary("curl") or "curl", *cmd[1:]], timeout=max_time + 30)
    code, size, seconds = done.stdout.split()[-3:] if done.stdout else ("0", "0", "1")
    return {"mbps": int(size) / max(float(seconds), 1e-6) / 1e6, "status": int(code),
            "complete": int(size) == BIG_SIZE,
            "peak_rss_delta_mib": (rss.peak - rss.start) / 1024 if target.proc else None}


# -- idle CONNECT tunnels ----------------------------------------------------------------

def raise_nofile(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return max(new, soft)


def open_tunnels(port: int, authority: str, count: int, deadline: float) -> list[socket.socket]:
    """Open up to count CONNECT tunnels (at most 64 handshakes in flight); the 200s."""
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    started = 0
    replies: dict[socket.socket, bytes] = {}
    opened: list[socket.socket] = []
    while (started < count or replies) and time.monotonic() < deadline:
        while started < count and len(replies) < 64:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, port))
            sel.register(sock, selectors.EVENT_WRITE)
            replies[sock] = b""
            started += 1
        for key, events in sel.select(timeout=0.2):
            conn = cast(socket.socket, key.fileobj)
            data = b""  # a failed connect ends like a close
            if events & selectors.EVENT_WRITE:
                if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    conn.send(head)
                    sel.modify(conn, selectors.EVENT_READ)
                    continue
            else:
                got = _recv(conn)
                if got is None:
                    continue
                data = got
            replies[conn] += data
            if data and b"\r\n\r\n" not in replies[conn]:
                continue
            sel.unregister(conn)
            if replies.pop(conn).split(b" ", 2)[1:2] == [b"200"]:
                opened.append(conn)
            else:
                conn.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return opened


def _recv(sock: socket.socket) -> bytes | None:
    """Bytes read, b"" when closed or failed, None when nothing is there yet."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def hold_tunnels(socks: list[socket.socket], seconds: float) -> list[socket.socket]:
    """Wait, noticing tunnels the proxy closes; return those still open."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(timeout=min(left, 0.5)):
            conn = cast(socket.socket, key.fileobj)
            sel.unregister(conn)
            closed.add(conn)  # an idle tunnel has nothing to say: readable means closed
    sel.close()
    return [s for s in socks if s not in closed]


def probe_tunnels(socks: list[socket.socket], host_header: str, deadline: float) -> int:
    """Send GET /1k through each tunnel; count 200 responses."""
    request = f"GET /1k HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    replies: dict[socket.socket, bytes] = {}
    for sock in socks:
        try:
            sock.send(request)
        except OSError:
            continue
        sel.register(sock, selectors.EVENT_READ)
        replies[sock] = b""
    ok = 0
    while replies and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            conn = cast(socket.socket, key.fileobj)
            data = _recv(conn)
            if data is None:
                continue
            replies[conn] += data
            if data and len(replies[conn]) < 12:
                continue
            ok += replies[conn].startswith(b"HTTP/1.1 200")
            sel.unregister(conn)
            del replies[conn]
    sel.close()
    return ok


def idle_tunnels(target: Target, origin: Origin, count: int, hold: float) -> dict[str, Any]:
    """Hold count idle CONNECT tunnels to the origin's plain port; RSS per tunnel and survivors."""
    assert target.proc is not None
    pid = target.proc.pid
    authority = f"{HOST}:{origin.http_port}"
    rss0 = rss_kib(pid)
    socks = open_tunnels(target.port, authority, count, time.monotonic() + 60)
    try:
        alive = hold_tunnels(socks, hold)
        rss1 = rss_kib(pid)
        survived = probe_tunnels(alive, authority, time.monotonic() + 30)
    finally:
        for sock in socks:
            sock.close()
    return {"asked": count, "opened": len(socks), "survived": survived, "hold_s": hold,
            "rss_before_mib": rss0 / 1024, "rss_held_mib": rss1 / 1024,
            "kib_per_tunnel": (rss1 - rss0) / len(socks) if socks else None}


# -- rounds -------------------------------------------------------------------------------

Step = tuple[str, Callable[[Target], dict[str, Any]]]


def metrics_ab(targets: list[Target], origin: Origin, args: argparse.Namespace) -> dict[str, Any]:
    """Metrics on against off in many short paired runs (keep-alive, 16 connections, 1 s each).

    Which one goes first alternates, and each pair gives one ratio: on a shared machine the
    load drifts over seconds, which the medians of long rounds do not cancel but pairs do.
    """
    on = next(t for t in targets if t.name == "fwdproxy")
    off = next(t for t in targets if t.name == "fwdproxy-nometrics")
    short = argparse.Namespace(**{**vars(args), "duration": 1.0})
    ratios, cpu = [], {"fwdproxy": list[float](), "fwdproxy-nometrics": list[float]()}
    for i in range(10 if args.quick else 20):
        res = {t.name: measure(t, partial(wrk_run, origin=origin, conns=16, close=False, args=short))
               for t in ((on, off) if i % 2 == 0 else (off, on))}
        if any("error" in r or not r["rps"] for r in res.values()):
            continue
        ratios.append(res["fwdproxy"]["rps"] / res["fwdproxy-nometrics"]["rps"])
        for name, r in res.items():
            cpu[name].append(r["cpu_per_10k"])
        say(f"metrics a/b pair {i + 1}: on/off {ratios[-1]:.3f}")
    if len(ratios) < 2:
        return {"error": "too few pairs completed"}
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"pairs": len(ratios), "ratio": statistics.median(ratios), "q1": q1, "q3": q3,
            "cpu_on": statistics.median(cpu["fwdproxy"]),
            "cpu_off": statistics.median(cpu["fwdproxy-nometrics"]), "observe_us": observe_cost()}


_OBSERVE = """
import timeit
from proxy.record.flows import Flow
from proxy.record.metrics import Metrics
metrics = Metrics()
flow = Flow(kind="http", client="127.0.0.1:1", method="GET", url="http://x/", status=200,
            bytes_up=0, bytes_down=1024, duration_ms=1.5)
print(min(timeit.repeat(lambda: metrics.observe(flow), number=100_000, repeat=7)) / 100_000 * 1e6)
"""


def observe_cost() -> float | None:
    """Microseconds to count one flow (timeit, best of 7): the whole per-request cost of metrics."""
    python = os.environ.get("BENCH_BASE_PYTHON", sys.executable)
    done = run([python, "-c", _OBSERVE], timeout=120, cwd=ROOT)
    try:
        return float(done.stdout.strip())
    except ValueError:
        return None


def metrics_ab_section(ab: dict[str, Any]) -> str:
    if "error" in ab:
        return f"## Metrics on vs off (paired)\n\n{ab['error']}"
    per_request_us = ab["cpu_off"] * 100  # CPU seconds per 10k requests -> microseconds per request
    share = ab["observe_us"] / per_request_us if ab.get("observe_us") and per_request_us else None
    direct = ("" if share is None else
              f" Counting one flow costs {ab['observe_us']:.2f} µs (timeit, best of 7), "
              f"{share:.1%} of the {per_request_us:.0f} µs of proxy CPU a request takes with metrics off: "
              f"the goal (at most 3%) is {'met' if share <= 0.03 else 'NOT met'} by this direct measure.")
    return ("## Metrics on vs off (paired)\n\n"
            f"{ab['pairs']} pairs of 1 s keep-alive runs at 16 connections, alternating which goes "
            f"first. Throughput with metrics on / off: median **{ab['ratio']:.3f}** (interquartile "
            f"{ab['q1']:.3f}-{ab['q3']:.3f}; a spread wider than the 3% sought means the machine's "
            f"noise hides the difference); proxy CPU seconds per 10k requests {ab['cpu_on']:.2f} on, "
            f"{ab['cpu_off']:.2f} off (ratio {ab['cpu_on'] / ab['cpu_off']:.3f})." + direct)


def _wanted(args: argparse.Namespace, key: str) -> bool:
    return not args.only or any(key.startswith(prefix.strip()) for prefix in args.only.split(","))


def plan(args: argparse.Namespace, origin: Origin) -> list[Step]:
    """The measurements of one round, in order; each runs on every target before the next."""
    return [(key, fn) for key, fn in _plan(args, origin) if _wanted(args, key)]


def _plan(args: argparse.Namespace, origin: Origin) -> list[Step]:
    steps: list[Step] = []
    for c in args.ka_conns:
        steps.append((f"ka{c}", partial(wrk_run, origin=origin, conns=c, close=False, args=args)))
    for c in args.nc_conns:
        steps.append((f"nc{c}", partial(wrk_run, origin=origin, conns=c, close=True, args=args)))
    max_time = 10.0 if args.quick else 30.0  # proxy.py buffers whole bodies: cap it
    steps.append(("dl_plain", partial(download, origin=origin, tls=False, max_time=max_time)))
    steps.append(("dl_tunnel", partial(download, origin=origin, tls=True, max_time=max_time)))
    return steps


def measure(target: Target, fn: Callable[[Target], dict[str, Any]]) -> dict[str, Any]:
    if target.proc is not None and target.proc.poll() is not None:
        return {"error": f"exited with status {target.proc.returncode}"}
    try:
        return fn(target)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def run_rounds(args: argparse.Namespace, targets: list[Target], origin: Origin) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        # Rotate the order so no target always runs right after the same neighbour.
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        results: dict[str, dict[str, Any]] = {}
        for key, fn in plan(args, origin):
            for target in order:
                res = results.setdefault(key, {})[target.name] = measure(target, fn)
                say(f"round {r + 1}/{args.rounds} {key:9} {target.name:10} {brief(res)}")
                time.sleep(0.3)
        if r == 0 and _wanted(args, "tunnels"):
            for target in (t for t in order if t.proxied):
                res = measure(target, lambda t: idle_tunnels(t, origin, args.tunnels, args.hold))
                results.setdefault("tunnels", {})[target.name] = res
                say(f"round 1 tunnels   {target.name:10} {brief(res)}")
        rounds.append(results)
    return rounds


def brief(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']}"
    parts = []
    for k, v in res.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif v is not None:
            parts.append(f"{k}={v}")
    return " ".join(parts)


# -- summary ------------------------------------------------------------------------------

PRIMARY = {"dl_plain": "mbps", "dl_tunnel": "mbps"}


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rounds: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per measurement and target: the median of each metric and of the ratio to direct."""
    keys = list(dict.fromkeys(k for r in rounds for k in r))
    summary: dict[str, dict[str, Any]] = {}
    for key in keys:
        primary = PRIMARY.get(key, "rps")
        for name in names:
            ok = [r[key][name] for r in rounds if name in r.get(key, {}) and "error" not in r[key][name]]
            errors = [r[key][name]["error"] for r in rounds
                      if "error" in r.get(key, {}).get(name, {})]
            if not ok:
                if errors:
                    summary.setdefault(key, {})[name] = {"error": errors[0]}
                continue
            med: dict[str, Any] = {m: _median([s[m] for s in ok]) for m in ok[0]
                                   if isinstance(ok[0][m], (int, float)) or ok[0][m] is None}
            ratios = [r[key][name][primary] / r[key]["direct"][primary] for r in rounds
                      if _ok(r, key, name) and _ok(r, key, "direct") and r[key]["direct"][primary]]
            med["ratio"] = _median(ratios)
            med["rounds"], med["errors_in_rounds"] = len(ok), len(errors)
            summary.setdefault(key, {})[name] = med
    return summary


def _ok(r: dict[str, Any], key: str, name: str) -> bool:
    res = r.get(key, {}).get(name)
    return res is not None and "error" not in res and PRIMARY.get(key, "rps") in res


# -- report ----------------------------------------------------------------------------------

def _get(summary: dict[str, Any], key: str, name: str, metric: str) -> Any:
    return summary.get(key, {}).get(name, {}).get(metric)


def _cell(summary: dict[str, Any], key: str, name: str, unit: str) -> str:
    res = summary.get(key, {}).get(name)
    if res is None:
        return ""
    if "error" in res:
        return "error"
    ratio = res.get("ratio")
    if unit == "rps":
        detail = f"{res['rps']:,.0f}/s"
    else:
        rss = res.get("peak_rss_delta_mib")
        detail = f"{res['mbps']:,.0f} MB/s" + (f", +{rss:.0f} MiB" if rss is not None else "")
        detail += "" if res.get("complete", 1) >= 1 else ", cut off"
    flag = "".join(f", {res[k]:,.0f} {label}" for k, label in (("non2xx", "non-2xx"),
                   ("socket_errors", "sock err")) if res.get(k))
    return f"{ratio:.2f} ({detail}{flag})" if ratio is not None else f"({detail})"


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def main_rows(summary: dict[str, Any], args: argparse.Namespace, names: list[str]) -> list[list[str]]:
    rows = []
    for c in args.ka_conns:
        rows.append([f"keep-alive clients, {c} connections"] +
                    [_cell(summary, f"ka{c}", n, "rps") for n in names])
    for c in args.nc_conns:
        rows.append([f"new connection per request, {c}"] +
                    [_cell(summary, f"nc{c}", n, "rps") for n in names])
    rows.append(["100 MiB plain HTTP download"] + [_cell(summary, "dl_plain", n, "mb") for n in names])
    rows.append(["100 MiB through a CONNECT tunnel (HTTPS)"] +
                [_cell(summary, "dl_tunnel", n, "mb") for n in names])
    cpu_key = f"ka{64 if 64 in args.ka_conns else args.ka_conns[-1]}"
    rows.append([f"proxy CPU seconds per 10k requests (keep-alive, c{cpu_key[2:]})"] +
                [_num(_get(summary, cpu_key, n, "cpu_per_10k"), ".2f") for n in names])
    rows.append([f"of which in the kernel (keep-alive, c{cpu_key[2:]})"] +
                [_num(_get(summary, cpu_key, n, "sys_share"), ".0%") for n in names])
    rows.append([f"voluntary context switches per request (keep-alive, c{cpu_key[2:]})"] +
                [_num(_get(summary, cpu_key, n, "switches_per_req"), ".1f") for n in names])
    for key, label in ((f"ka{args.ka_conns[min(1, len(args.ka_conns) - 1)]}", "keep-alive"),
                       (f"nc{args.nc_conns[min(1, len(args.nc_conns) - 1)]}", "new connection")):
        rows.append([f"upstream connections per request ({label}, c{key[2:]})"] +
                    [_num(_get(summary, key, n, "upstream_per_req"), ".3f") for n in names])
    nc_key = f"nc{args.nc_conns[min(1, len(args.nc_conns) - 1)]}"
    rows.append([f"client connections per request (new connection, c{nc_key[2:]}; check, noisy)"] +
                [_num(_get(summary, nc_key, n, "client_conns_per_req"), ".2f") for n in names])
    return rows


def memory_rows(summary: dict[str, Any], targets: list[Target], args: argparse.Namespace) -> list[list[str]]:
    rows = [["idle RSS at start (MiB)"] +
            [f"{t.idle_rss_kib / 1024:.1f}" if t.proxied else "" for t in targets]]
    cells = []
    for t in targets:
        res = summary.get("tunnels", {}).get(t.name)
        if res is None or "error" in res:
            cells.append("error" if res else "")
            continue
        kib = _num(res.get("kib_per_tunnel"), ".1f")
        opened = "" if res["opened"] == res["asked"] else f" (only {res['opened']:.0f} opened)"
        cells.append(f"{kib} KiB, {res['survived']:.0f} of {res['asked']:.0f} kept{opened}")
    rows.append([f"memory per idle CONNECT tunnel; {args.tunnels} held {args.hold:g} s", *cells])
    return rows


def latency_rows(summary: dict[str, Any], args: argparse.Namespace, names: list[str]) -> list[list[str]]:
    rows = []
    keys = [(f"ka{c}", f"keep-alive {c}") for c in args.ka_conns]
    keys += [(f"nc{c}", f"new connection {c}") for c in args.nc_conns]
    for key, label in keys:
        cells = []
        for n in names:
            res = summary.get(key, {}).get(n)
            cells.append("" if not res or "error" in res else
                         f"{res['p50_ms']:.2f} / {res['p99_ms']:.2f}")
        rows.append([label, *cells])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def checks(summary: dict[str, Any], targets: list[Target], args: argparse.Namespace) -> list[list[str]]:
    """Issue 6's targets for fwdproxy, judged against this run's peers (blank if not measured)."""
    def ratio(key: str, name: str) -> float | None:
        value = _get(summary, key, name, "ratio")
        return None if value is None else float(value)

    rows: list[list[str]] = []

    def check(goal: str, got: float | None, need: float | None, higher: bool = True) -> None:
        if got is None or need is None:
            rows.append([goal, _num(got, ".3f"), _num(need, ".3f"), "not measured"])
            return
        ok = got >= need if higher else got <= need
        rows.append([goal, f"{got:.3f}", f"{need:.3f}", "yes" if ok else "NO"])

    for c in (c for c in args.ka_conns if c in (16, 64)):
        check(f"keep-alive {c}: ratio >= squid", ratio(f"ka{c}", "fwdproxy"), ratio(f"ka{c}", "squid"))
        pp = ratio(f"ka{c}", "proxy.py")
        check(f"keep-alive {c}: ratio >= 1.5x proxy.py", ratio(f"ka{c}", "fwdproxy"),
              None if pp is None else 1.5 * pp)
    for c in args.nc_conns:
        check(f"new connection {c}: ratio >= squid", ratio(f"nc{c}", "fwdproxy"), ratio(f"nc{c}", "squid"))
    check("100 MiB plain: ratio >= 0.5", ratio("dl_plain", "fwdproxy"), 0.5)
    check("100 MiB plain: peak RSS growth <= 16 MiB (flat)",
          _get(summary, "dl_plain", "fwdproxy", "peak_rss_delta_mib"), 16, higher=False)
    check("100 MiB CONNECT: ratio >= 0.9", ratio("dl_tunnel", "fwdproxy"), 0.9)
    cpu_key = f"ka{64 if 64 in args.ka_conns else args.ka_conns[-1]}"
    check(f"CPU per 10k (c{cpu_key[2:]}) <= squid", _get(summary, cpu_key, "fwdproxy", "cpu_per_10k"),
          _get(summary, cpu_key, "squid", "cpu_per_10k"), higher=False)
    tun = summary.get("tunnels", {}).get("fwdproxy", {})
    check(f"idle tunnels: all {tun.get('opened', args.tunnels):.0f} survive {args.hold:g} s",
          tun.get("survived"), tun.get("opened"))
    check("idle tunnels: KiB each <= 20", tun.get("kib_per_tunnel"), 20, higher=False)
    fwd = next((t for t in targets if t.name == "fwdproxy"), None)
    check("idle RSS MiB <= 30", fwd.idle_rss_kib / 1024 if fwd else None, 30, higher=False)
    for key in (f"ka{args.ka_conns[-1]}", f"nc{args.nc_conns[-1]}", f"nc{args.nc_conns[0]}"):
        check(f"upstream connections per request ({key}) <= 0.05",
              _get(summary, key, "fwdproxy", "upstream_per_req"), 0.05, higher=False)
    return list({r[0]: r for r in rows}.values())


def machine_info(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    git = run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], timeout=10).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": "python3 scripts/bench.py " + " ".join(sys.argv[1:]),
            "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "git": git,
            "load_before": Path("/proc/loadavg").read_text().split()[:3],
            "versions": {t.name: t.version for t in targets},
            "settings": {"rounds": args.rounds, "duration_s": args.duration,
                         "wrk_threads": args.wrk_threads, "keep_alive": args.ka_conns,
                         "new_connection": args.nc_conns, "tunnels": args.tunnels,
                         "hold_s": args.hold, "fwdproxy_args": args.fwdproxy_args}}


def markdown(meta: dict[str, Any], summary: dict[str, Any], targets: list[Target],
             args: argparse.Namespace, profile: str) -> str:
    names = [t.name for t in targets]
    head = ["measure (GET /1k unless said)", *names]
    versions = "; ".join(f"{n}: {v}" for n, v in meta["versions"].items())
    s = meta["settings"]
    parts = [
        f"# fwdproxy benchmark, {meta['date']}",
        f"Command: `{meta['command']}` (fwdproxy at {meta['git']}; {meta['elapsed_s']:.0f} s).",
        f"Machine: {meta['cores']} cores, Linux {meta['kernel']}, Python {meta['python']}; shared and "
        f"noisy, nothing pinned; load average {' '.join(meta['load_before'])} before, "
        f"{' '.join(meta['load_after'])} after. Everything on loopback.",
        f"Versions: {versions}.",
        f"Settings: {s['rounds']} round(s) of alternating targets, {s['duration_s']:g} s per wrk run, "
        f"wrk -t{s['wrk_threads']}, origin nginx with one worker. Cells: median ratio to direct "
        "in the same round, then the median absolute value.",
        table(head, main_rows(summary, args, names) + memory_rows(summary, targets, args)),
        "## Latency p50 / p99 (ms), medians", table(["clients", *names], latency_rows(summary, args, names)),
        "## fwdproxy against issue 6's targets", table(["target", "fwdproxy", "needed", "met"],
                                                       checks(summary, targets, args)),
        "Notes: CPU and RSS cover the proxy's whole process tree (proxy.py runs workers). "
        "Voluntary context switches count a thread blocking or handing over (the GIL, a lock), "
        "summed over the threads alive at the end of the run; an event loop that finds work "
        "waiting in each epoll_wait makes almost none. "
        "Idle tunnels are CONNECTs to the origin's plain-HTTP port, held without traffic, then "
        "probed with a GET each; they are measured in the first round only. Peers run with their "
        "defaults for timeouts (proxy.py drops connections idle for 10 s). \"sock err\" counts "
        "wrk's socket errors: a server closing a keep-alive connection after each response (as "
        "tinyproxy does) shows up there as one read error per request, with complete responses.",
    ]
    if "metrics_ab" in meta:
        parts.append(metrics_ab_section(meta["metrics_ab"]))
    if RECORDING in names:
        parts += ["## What recording costs (fwdproxy+record against fwdproxy, same rounds)",
                  table(["measure", "fwdproxy", RECORDING, "record / off"], record_rows(summary, args)),
                  f"The store: {meta.get('record_store', 'not found')}."]
    if profile:
        parts.append(profile)
    return "\n\n".join(parts) + "\n"


def record_rows(summary: dict[str, Any], args: argparse.Namespace) -> list[list[str]]:
    """Median throughput with and without --record, and their ratio (each median over rounds)."""
    rows = []
    keys = [(f"ka{c}", f"keep-alive GET /1k, {c} connections", "rps", ",.0f") for c in args.ka_conns]
    keys += [("dl_plain", "100 MiB plain download (MB/s)", "mbps", ".0f")]
    for key, label, metric, fmt in keys:
        off, on = _get(summary, key, "fwdproxy", metric), _get(summary, key, RECORDING, metric)
        if off is None and on is None:
            continue
        ratio = f"{on / off:.2f}" if off and on else ""
        rows.append([label, _num(off, fmt), _num(on, fmt), ratio])
    return rows


def store_size(tmp: Path) -> str:
    """The recording's size and flow count, read after the run (the proxy has stopped)."""
    path = tmp / RECORD_STORE
    if not path.exists():
        return "not found"
    sys.path.insert(0, str(ROOT))
    from proxy.record.store import Reader  # the checkout's, as the proxy ran it
    size = sum(p.stat().st_size for p in tmp.glob(RECORD_STORE + "*"))
    with Reader(path) as reader:
        count = reader.count()
    return f"{count:,} flows in {size / 2**20:.1f} MiB, {size / max(count, 1):,.0f} bytes per flow"


def chart(summary: dict[str, Any], targets: list[Target], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.name for t in targets]
    panels = [("keep-alive: ratio to direct", [(f"ka{c}", str(c)) for c in args.ka_conns], "ratio", names),
              ("new connection per request: ratio", [(f"nc{c}", str(c)) for c in args.nc_conns],
               "ratio", names),
              ("100 MiB download: ratio", [("dl_plain", "plain"), ("dl_tunnel", "CONNECT")], "ratio", names),
              ("CPU s per 10k requests (keep-alive)", [(f"ka{c}", str(c)) for c in args.ka_conns],
               "cpu_per_10k", names[1:]),
              ("KiB per idle tunnel", [("tunnels", f"{args.tunnels} held {args.hold:g} s")],
               "kib_per_tunnel", names[1:]),
              ("p99 latency ms (keep-alive)", [(f"ka{c}", str(c)) for c in args.ka_conns], "p99_ms", names)]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    colours = {n: f"C{i}" for i, n in enumerate(names)}  # one colour per target in every panel
    for ax, (title, groups, metric, who) in zip(axes.flat, panels, strict=False):
        _bars(ax, summary, groups, metric, who, colours)
        ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in names]
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9)
    fig.suptitle(f"fwdproxy benchmark {time.strftime('%Y-%m-%d')} ({args.rounds} round(s), medians; "
                 f"shared {os.cpu_count()}-core machine)", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax: Any, summary: dict[str, Any], groups: list[tuple[str, str]], metric: str,
          who: list[str], colours: dict[str, str]) -> None:
    width = 0.8 / max(len(who), 1)
    for i, name in enumerate(who):
        values = [_get(summary, key, name, metric) or 0 for key, _ in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width, color=colours[name])
    ax.set_xticks([g + width * (len(who) - 1) / 2 for g in range(len(groups))],
                  [label for _, label in groups])
    if metric == "ratio":
        ax.axhline(1.0, color="grey", linewidth=0.8)


# -- profile -------------------------------------------------------------------------------

PROFILE_MODES: tuple[tuple[str, list[str], str], ...] = (
    # py-spy's --gil mode was tried too: on this setup it credited the GIL to the
    # accept loop sleeping in select(), so CPU shares come from cProfile instead.
    ("active", ["--nonblocking"], "every thread not idle in I/O, sampled without pausing: "
     "lock and GIL waits included"),)


def profile_fwdproxy(target: Target, origin: Origin, args: argparse.Namespace,
                     children: Children) -> str:
    """py-spy on fwdproxy under keep-alive load (64 clients), once per mode; Markdown hot spots."""
    parts = []
    for mode, flags, meaning in PROFILE_MODES:
        raw = args.out / f"profile-fwdproxy-{mode}.txt"
        load = profile_once(target, origin, args, children, flags, raw)
        if not raw.exists():
            log = (args.out / "profile-fwdproxy.log").read_text(errors="replace")[-500:]
            parts.append(f"## Profile ({mode})\n\npy-spy failed: {log}")
            continue
        parts.append(hot_spots(raw.read_text(), load, f"{mode}: {meaning}"))
    return "\n\n".join(parts)


def profile_once(target: Target, origin: Origin, args: argparse.Namespace, children: Children,
                 flags: list[str], raw: Path) -> dict[str, Any]:
    """One py-spy record (raw collapsed stacks to ``raw``) during one wrk run; the wrk result."""
    assert target.proc is not None
    seconds = max(args.duration, 10.0)
    raw.unlink(missing_ok=True)
    spy = children.start([str(VENV / "bin" / "py-spy"), "record", "-p", str(target.proc.pid),
                          "-d", f"{seconds:g}", "-r", "200", "-f", "raw", "-o", str(raw),
                          *flags],
                         args.out / "profile-fwdproxy.log")
    time.sleep(0.5)
    load = argparse.Namespace(**{**vars(args), "duration": seconds + 1})
    res = measure(target, lambda t: wrk_run(t, origin, 64, False, load))
    try:
        spy.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        Children.stop(spy)
    return res


def profile_cprofile(origin: Origin, args: argparse.Namespace, children: Children, tmp: Path,
                     clock: str) -> str:
    """A second fwdproxy under cProfile in every thread (bench/cprofile_proxy.py), same load."""
    stats_path = args.out / f"profile-fwdproxy-{clock}.pstats"
    stats_path.unlink(missing_ok=True)
    launcher = [str(ASSETS / "cprofile_proxy.py"), str(stats_path), clock]
    target = start_fwdproxy(children, tmp, args.fwdproxy_args.split(), launcher,
                            f"fwdproxy-cprofile-{clock}.log")
    seconds = max(args.duration, 10.0)
    load = argparse.Namespace(**{**vars(args), "duration": seconds})
    res = measure(target, lambda t: wrk_run(t, origin, 64, False, load))
    assert target.proc is not None
    os.killpg(target.proc.pid, signal.SIGTERM)  # fwdproxy shuts down; the wrapper writes stats
    try:
        target.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        Children.stop(target.proc)
    if not stats_path.exists():
        return f"## cProfile ({clock})\n\nno stats written; see logs/fwdproxy-cprofile-{clock}.log"
    return cprofile_tables(stats_path, res, clock)


CLOCKS = {"cpu": "each thread's CPU time (time.thread_time): where the CPU goes",
          "wall": "wall-clock time: where threads wait (a lock taken in a with statement counts "
                  "as the enclosing function's own time)"}


def cprofile_tables(path: Path, load: dict[str, Any], clock: str) -> str:
    import pstats

    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values()) or 1.0

    def name(func: tuple[str, int, str]) -> str:
        return _frame(f"{func[2]} ({func[0]}:{func[1]})")

    def top(index: int, k: int) -> str:
        rows = sorted(raw.items(), key=lambda kv: -kv[1][index])[:k]
        return table(["function", "calls", "self s", "self %", "incl. %"],
                     [[f"`{name(f)}`", f"{v[1]:,}", f"{v[2]:.2f}", f"{100 * v[2] / total:.1f}%",
                       f"{100 * v[3] / total:.1f}%"] for f, v in rows])

    rps = f"{load['rps']:,.0f} req/s under cProfile" if "rps" in load else "load failed"
    return "\n\n".join([
        f"## cProfile ({clock}) of fwdproxy: keep-alive GET /1k, 64 clients ({rps})",
        f"Every thread profiled, clock: {CLOCKS[clock]}; {total:.1f} s in all. "
        f"Stats: profile-fwdproxy-{clock}.pstats.",
        "By self time:", top(2, 25), "By inclusive time:", top(3, 20)])


def _frame(frame: str, line: bool = False) -> str:
    """'send (/usr/lib/python3.11/socket.py:123)' -> 'send (socket.py)', or with ':123'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")") if line else where.rstrip(")").rsplit(":", 1)[0]
    where = where.replace(str(ROOT) + "/", "")
    if "/lib/python3" in where:
        where = "stdlib/" + where.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return f"{name} ({where})" if where else name


def count_stacks(raw: str) -> tuple[int, dict[str, dict[str, int]]]:
    """Samples in py-spy's raw (collapsed) output, and counts by function, line, file, inclusive."""
    tables: dict[str, dict[str, int]] = {"function": {}, "line": {}, "file": {}, "inclusive": {}}
    total = 0
    for row in raw.splitlines():
        stack, _, count = row.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf_file = frames[-1].rpartition(" (")[2].rstrip(")")
        keys = {"function": [frames[-1]], "file": [leaf_file], "inclusive": set(frames),
                "line": [_frame(stack.rsplit(";", 1)[-1], line=True)]}
        for name, found in keys.items():
            for key in found:
                tables[name][key] = tables[name].get(key, 0) + n
    return total, tables


def hot_spots(raw: str, load: dict[str, Any], mode: str) -> str:
    total, tables = count_stacks(raw)

    def top(name: str, k: int) -> str:
        rows = [[f"`{f}`", f"{100 * n / max(total, 1):.1f}%"]
                for f, n in sorted(tables[name].items(), key=lambda kv: -kv[1])[:k]]
        return table([name, "share of samples"], rows)

    rps = f"{load['rps']:,.0f} req/s under py-spy" if "rps" in load else "load failed"
    return "\n\n".join([
        f"## Profile of fwdproxy: keep-alive GET /1k, 64 clients ({rps}; {total} samples)",
        f"py-spy mode {mode}. Raw collapsed stacks are in the profile-fwdproxy-*.txt files.",
        "Self time (the frame on top of the stack), by function:", top("function", 20),
        "Self time by line:", top("line", 12), "Self time by file:", top("file", 12),
        "Inclusive time (anywhere on the stack):", top("inclusive", 25)])


# -- main --------------------------------------------------------------------------------------

def write_report(args: argparse.Namespace, meta: dict[str, Any], targets: list[Target],
                 rounds: list[dict[str, Any]], profile: str) -> Path:
    summary = summarize(rounds, [t.name for t in targets])
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    md_path: Path = args.out / f"bench-{stamp}.md"
    md_path.write_text(markdown(meta, summary, targets, args, profile))
    (args.out / f"bench-{stamp}.json").write_text(
        json.dumps({"meta": meta, "rounds": rounds, "summary": summary}, indent=1))
    try:
        chart(summary, targets, args, args.out / f"bench-{stamp}.png")
    except Exception as exc:  # a chart is a nice-to-have; the table is the result
        say(f"chart failed: {exc}")
    for name in ("latest.md", "latest.png"):
        src = args.out / f"bench-{stamp}{Path(name).suffix}"
        if src.exists():
            shutil.copyfile(src, args.out / name)
    return md_path


def keep_logs(tmp: Path, out: Path) -> None:
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for path in tmp.iterdir():
        if path.suffix in (".log", ".out") and path.stat().st_size < 4 * 1024 * 1024:
            shutil.copyfile(path, logs / path.name)


def chain_targets(children: Children, tmp: Path, origin: Origin,
                  args: argparse.Namespace) -> list[tuple[Target, Target | None]]:
    """(target, its parent) pairs: each parent alone, then fwdproxy in front of it."""
    extra = args.fwdproxy_args.split()
    pairs: list[tuple[Target, Target | None]] = [(Target("direct", origin.http_port), None)]
    parents = [start_fwdproxy(children, tmp, extra, log_name="fwdproxy-parent.log")]
    if "tinyproxy" in args.peer_list:
        try:
            parents.append(start_tinyproxy(children, tmp))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            say(f"skipping tinyproxy: {exc}")
    for parent in parents:
        front = start_fwdproxy(children, tmp, [*extra, "--upstream-proxy", f"http://{HOST}:{parent.port}"],
                               log_name=f"fwdproxy-front-{parent.name}.log")
        front.name = f"fwdproxy>{parent.name}"
        pairs += [(parent, None), (front, parent)]
    for target, _ in pairs:
        check_target(target, origin)
        say(f"target {target.name} on {HOST}:{target.port}")
    return pairs


def _rps(name: str, r: dict[str, Any], key: str) -> float:
    return float(r[key][name]["rps"])


def chain_bench(args: argparse.Namespace, children: Children, tmp: Path) -> Path:
    """Keep-alive GET /1k: the cost of the extra hop through fwdproxy in front of a parent.

    Each chained throughput is divided by its parent's alone (same round), and set
    beside fwdproxy's own throughput divided by direct: the extra hop should cost
    no more than a plain fwdproxy hop does.
    """
    origin = start_origin(children, tmp)
    pairs = chain_targets(children, tmp, origin, args)
    conns = [int(c) for c in args.connections.split(",")] if args.connections else [1, 16]
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        results: dict[str, dict[str, Any]] = {}
        order = pairs[r % len(pairs):] + pairs[:r % len(pairs)]
        for c in conns:
            for target, _ in order:
                fn = partial(wrk_run, origin=origin, conns=c, close=False, args=args)
                res = results.setdefault(f"ka{c}", {})[target.name] = measure(target, fn)
                say(f"round {r + 1}/{args.rounds} ka{c:<5} {target.name:20} {brief(res)}")
                time.sleep(0.3)
        rounds.append(results)
    rows = []
    for c in conns:
        for target, parent in pairs:
            if parent is None:
                continue
            rps = partial(_rps, key=f"ka{c}")
            ok = [r for r in rounds if all(_ok(r, f"ka{c}", n) for n in
                                           (target.name, parent.name, "fwdproxy", "direct"))]
            if not ok:
                rows.append([f"{c}", target.name, "error", "", ""])
                continue
            chained = statistics.median(rps(target.name, r) for r in ok)
            alone = statistics.median(rps(parent.name, r) for r in ok)
            hop = statistics.median(rps(target.name, r) / rps(parent.name, r) for r in ok)
            plain = statistics.median(rps("fwdproxy", r) / rps("direct", r) for r in ok)
            rows.append([f"{c}", f"{target.name} vs {parent.name}", f"{chained:,.0f}/s vs {alone:,.0f}/s",
                         f"{hop:.2f}", f"{plain:.2f}"])
    text = "\n".join([
        f"# fwdproxy chained to a parent: keep-alive GET /1k ({args.rounds} rounds of "
        f"{args.duration:g} s, medians)", "",
        "`hop` is chained throughput over the parent alone; `fwdproxy hop` is fwdproxy alone over "
        "direct access to nginx, same rounds. The extra hop should cost no more than a plain "
        "fwdproxy hop does: `hop` >= `fwdproxy hop`.", "",
        table(["clients", "chain", "throughput", "hop", "fwdproxy hop"], rows), ""])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path: Path = args.out / f"chain-{stamp}.md"
    path.write_text(text)
    (args.out / f"chain-{stamp}.json").write_text(json.dumps(rounds, indent=1))
    return path


def bench(args: argparse.Namespace, children: Children, tmp: Path) -> Path:
    if args.chain:
        return chain_bench(args, children, tmp)
    started = time.monotonic()
    origin = start_origin(children, tmp)
    targets = start_targets(children, tmp, origin, args)
    meta = machine_info(args, targets)
    rounds = run_rounds(args, targets, origin)
    if args.metrics_off:
        meta["metrics_ab"] = metrics_ab(targets, origin, args)
    fwd = next(t for t in targets if t.name == "fwdproxy")
    profile = ""
    if args.profile:
        profile = "\n\n".join([profile_cprofile(origin, args, children, tmp, "cpu"),
                                profile_cprofile(origin, args, children, tmp, "wall"),
                                profile_fwdproxy(fwd, origin, args, children)])
    if args.intercept:
        spec = importlib.util.spec_from_file_location("bench_intercept", ASSETS / "intercept.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        section = module.run(sys.modules[__name__], args, children, tmp, origin)
        profile = "\n\n".join(part for part in (section, profile) if part)
    meta["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    if args.record:
        meta["record_store"] = store_size(tmp)
    meta["elapsed_s"] = time.monotonic() - started
    return write_report(args, meta, targets, rounds, profile)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reexec_in_venv(args)
    raise_nofile()  # before starting children, which inherit it
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="fwdproxy-bench-"))
    try:
        md = bench(args, children, tmp)
    finally:
        children.stop_all()
        keep_logs(tmp, args.out)
        shutil.rmtree(tmp, ignore_errors=True)
    print(md.read_text())
    say(f"wrote {md} (+ .json, .png; latest.md/latest.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

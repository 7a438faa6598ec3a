#!/usr/bin/env python3
"""What ``--record`` costs in CPU per request, thread by thread, under keep-alive load.

Starts the benchmark's origin (nginx) and two fwdproxy instances from this
checkout, both with ``--workers 1`` (a recording runs in one process, so the
plain one must too for a like-for-like figure), one with ``--record``, then runs wrk (GET /1k,
``--connections`` keep-alive clients) against each in alternating rounds and
reads each process's CPU from /proc, per thread. It prints per round and as
medians: requests per second, proxy CPU microseconds per request, and the CPU
of the recording process's busiest thread (the store's writer: the request
threads each take a small share), so the writer's cost is seen apart from
what recording adds on the request threads::

    python3 scripts/bench_record.py                  # 5 rounds of 5 s, 64 connections
    python3 scripts/bench_record.py --rounds 3 --connections 16
    python3 scripts/bench_record.py --checkout ../other-worktree   # that checkout's proxy

Needs what ``scripts/bench.py`` needs (nginx, wrk). CPU figures move less with
machine load than throughput does, but on a busy machine read them as rough.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402  (the benchmark's origin, targets and wrk runner)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process (user + system)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended
        out[task.name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def measure(target: bench.Target, origin: bench.Origin, args: argparse.Namespace) -> dict[str, float]:
    assert target.proc is not None
    before = thread_cpu(target.proc.pid)
    result = bench.wrk_run(target, origin, args.connections, False, args)
    after = thread_cpu(target.proc.pid)
    spent = [after[tid] - before.get(tid, 0.0) for tid in after]
    requests = max(result["requests"], 1)
    return {"rps": result["rps"], "cpu_us": sum(spent) / requests * 1e6,
            "busiest_us": max(spent) / requests * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--checkout", type=Path, default=ROOT,
                   help="run the fwdproxy of another checkout (to compare before and after a change)")
    args = p.parse_args()
    args.workers_flag = "--workers" in (args.checkout.resolve() / "proxy" / "cli.py").read_text()
    bench.ROOT = args.checkout.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="fwdproxy-bench-record-"))
    children = bench.Children()
    try:
        origin = bench.start_origin(children, tmp)
        one = ["--workers", "1"] if args.workers_flag else []  # a recording runs in one process
        targets = [bench.start_fwdproxy(children, tmp, one),
                   bench.start_fwdproxy(children, tmp, [*one, "--record", str(tmp / "bench.sqlite")],
                                        log_name="fwdproxy-record.log", name="fwdproxy+record")]
        for target in targets:
            bench.wrk_run(target, origin, args.connections, False, args)  # warm up: pools, caches
        rows: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
        for n in range(args.rounds):
            for target in targets if n % 2 == 0 else targets[::-1]:
                got = measure(target, origin, args)
                rows[target.name].append(got)
                print(f"round {n + 1} {target.name:16} {got['rps']:8,.0f} req/s  "
                      f"{got['cpu_us']:6.1f} us CPU/req  busiest thread {got['busiest_us']:5.1f} us/req",
                      flush=True)
        med = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in rows.items()}
        off, on = med["fwdproxy"], med["fwdproxy+record"]
        print(f"\nmedians over {args.rounds} rounds, keep-alive GET /1k, {args.connections} connections:")
        print("| | req/s | proxy CPU us/req | busiest thread us/req |\n| --- | ---: | ---: | ---: |")
        for name, m in med.items():
            print(f"| {name} | {m['rps']:,.0f} | {m['cpu_us']:.1f} | {m['busiest_us']:.1f} |")
        print(f"\nrecord/off: throughput {on['rps'] / off['rps']:.2f}, CPU per request "
              f"{on['cpu_us'] / off['cpu_us']:.2f} (+{on['cpu_us'] - off['cpu_us']:.1f} us)")
    finally:
        children.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

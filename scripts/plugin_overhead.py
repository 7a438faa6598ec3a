#!/usr/bin/env python3
"""What the fwdproxy fixture costs each test: clearing rules, flows and mappings, and the teardown checks.

    .venv/bin/python scripts/plugin_overhead.py [--rounds 20000]

Prints the median and 90th percentile in microseconds of (a) clear() on a
proxy a test left empty, (b) clear() after a test that added six rules,
a host mapping and ten flows, and (c) the teardown checks of a passing test
(unplanned requests, unused rules). Loopback only; nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.record.flows import Flow
from proxy.testing.pytest_plugin import FwdProxy, start_proxy


def measure(rounds: int, setup: Callable[[], None], action: Callable[[], None]) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        setup()
        start = time.perf_counter_ns()
        action()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


def busy_test(proxy: FwdProxy) -> Callable[[], None]:
    def setup() -> None:
        proxy.fail(503, path="/api/*", times=2)
        proxy.respond(200, b"ok", path="/health")
        proxy.delay(0.1, host="slow.test")
        proxy.throttle(1000, path="/big")
        proxy.chaos(seed=1, error_rate=0.1, path="/chaos")
        proxy.truncate(10, path="/cut")
        proxy.map_host("api.test", ("127.0.0.1", 9))
        for i in range(10):
            proxy.flows.record(Flow(kind="http", client="127.0.0.1:1", method="GET", url=f"http://a.test/{i}"))
    return setup


def teardown_checks(proxy: FwdProxy) -> None:
    if proxy.unplanned:
        raise AssertionError
    proxy.faults.unused()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    rounds = parser.parse_args().rounds
    proxy = start_proxy("overhead")
    try:
        rows = [
            ("clear() after an empty test", measure(rounds, lambda: None, proxy.clear)),
            ("clear() after 6 rules, 1 mapping, 10 flows", measure(rounds, busy_test(proxy), proxy.clear)),
            ("teardown checks (unplanned, unused rules)", measure(rounds, lambda: None,
                                                                  lambda: teardown_checks(proxy))),
        ]
    finally:
        proxy.stop()
    print(f"{'per test':45} {'median µs':>10} {'p90 µs':>8}   ({rounds} rounds)")
    for name, (median, p90) in rows:
        print(f"{name:45} {median:10.1f} {p90:8.1f}")


if __name__ == "__main__":
    main()

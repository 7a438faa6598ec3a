"""Seeded chaos: the same seed gives the same faults, so a failure found by chance can be replayed.

Leave out ``seed=`` to get a fresh one per run; a failing test's report then prints
"chaos seed N: replay with --fwdproxy-seed N".
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_client_rides_out_a_flaky_api(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    chaos = fwdproxy.chaos(seed=1234, error_rate=0.3, statuses=[502, 503], path="/api/*")
    with requests.Session() as session:
        retry = Retry(total=5, status_forcelist=[502, 503], backoff_factor=0)
        session.mount("http://", HTTPAdapter(max_retries=retry))
        for _ in range(10):
            assert session.get(origin_http.url("/api/items"), proxies={"http": fwdproxy.url}).ok
    failures = [c for c in chaos.choices if c.faulty]                # or: c.outcome, c.status, c.latency
    assert failures and len(chaos.choices) == 10 + len(failures)   # each failure cost one retry

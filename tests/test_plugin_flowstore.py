"""FlowStore: queries over recorded flows, waiting for late ones, and failure messages that list them."""

from __future__ import annotations

import re
import threading
import time

import pytest

from proxy.record.flows import Flow
from proxy.testing.flowstore import FlowStore


def flow(path: str = "/", *, kind: str = "http", host: str = "api.test", status: int = 200,
         method: str = "GET", port: int = 80) -> Flow:
    url = f"{host}:{port}" if kind == "tunnel" else f"http://{host}{path}"
    # A store keeps only flows begun after it was made (or cleared): these begin a minute from now.
    return Flow(kind=kind, client="127.0.0.1:1", method=method, url=url, status=status, host=host, port=port,
                path="" if kind == "tunnel" else path, started=time.time() + 60)


def store_with(*flows: Flow) -> FlowStore:
    store = FlowStore("proxy under test")
    for f in flows:
        store.record(f)
    return store


def test_filter_by_each_keyword() -> None:
    a, b = flow("/items?page=2"), flow("/users/7", method="POST", status=201, host="other.test", port=8080)
    t = flow(kind="tunnel", method="CONNECT", host="api.test", port=443)
    store = store_with(a, b, t)
    assert store.filter(path="/items") == [a]
    assert store.filter(path="/users/*") == [b]
    assert store.filter(path=re.compile(r"^/users/\d+$")) == [b]
    assert store.filter(method="post") == [b]
    assert store.filter(host="*.test", status=200) == [a, t]
    assert store.filter(port=443) == [t] and store.filter(kind="tunnel") == [t]
    assert store.filter(path="*") == [a, b]  # a path matcher never selects a tunnel
    assert store.filter(url="http://other.test/*") == [b]
    assert store.all() == [a, b, t] and len(store) == 3 and list(store) == [a, b, t]


def test_one_returns_the_single_match() -> None:
    a = flow("/a")
    assert store_with(a, flow("/b")).one(path="/a") is a


def test_one_fails_listing_what_was_seen() -> None:
    store = store_with(flow("/a", status=503), flow("/a"))
    with pytest.raises(AssertionError) as err:
        store.one(path="/a")
    lines = str(err.value).splitlines()
    assert lines[0] == "expected exactly one flow matching path='/a', found 2; proxy under test saw 2 in this test:"
    assert lines[1].split() == ["kind", "method", "url", "or", "target", "status", "up", "down", "ms", "upstream",
                                "notes"]
    assert lines[2].split()[:4] == ["http", "GET", "http://api.test/a", "503"]


def test_one_with_nothing_seen_says_so() -> None:
    with pytest.raises(AssertionError, match=r"^expected exactly one flow matching host='x', found 0 within 0.01s; "
                                             r"proxy under test saw no flows in this test$"):
        FlowStore("proxy under test").one(host="x", timeout=0.01)


def test_wait_for_a_flow_recorded_later() -> None:
    store = FlowStore()
    late = flow("/late")
    timer = threading.Timer(0.05, store.record, [late])
    timer.start()
    assert store.wait_for(path="/late", timeout=5) is late
    timer.join()
    with pytest.raises(AssertionError, match=r"no flow matching path='/never' within 0\.01s"):
        store.wait_for(path="/never", timeout=0.01)


def test_wait_for_count() -> None:
    store = store_with(flow("/1"), flow("/2"))
    assert len(store.wait_for_count(2, timeout=0.01)) == 2
    with pytest.raises(AssertionError, match=r"expected 3 flows matching anything within 0\.01s, found 2"):
        store.wait_for_count(3, timeout=0.01)


def test_tunnels_are_seen_open_then_finished_once() -> None:
    store = FlowStore()
    tunnel = flow(kind="tunnel", method="CONNECT", port=443)
    store.opened(tunnel)
    assert store.one(kind="tunnel") is tunnel and store.is_open(tunnel)
    assert store.filter(finished=False) == [tunnel] and store.filter(finished=True) == []
    assert "open" in store.table()
    store.record(tunnel)
    assert store.all() == [tunnel] and not store.is_open(tunnel)
    assert store.filter(finished=True) == [tunnel]


def test_clear_forgets_flows_and_ignores_those_begun_before() -> None:
    store = FlowStore()
    store.record(Flow(kind="http", client="", method="GET", url="/recent"))
    straggler = Flow(kind="http", client="", method="GET", url="/straggler", started=time.time() - 1)
    assert len(store) == 1
    store.clear()
    store.record(straggler)
    store.opened(straggler)
    assert store.all() == []


def test_queries_wait_for_exchanges_in_progress() -> None:
    busy = threading.Event()
    busy.set()
    store = FlowStore(busy=busy.is_set)
    done = flow("/done")

    def finish() -> None:
        busy.clear()
        store.record(done)

    timer = threading.Timer(0.05, finish)
    timer.start()
    assert store.all() == [done]
    timer.join()


def test_upstream_counts() -> None:
    new, reused, local = flow("/1"), flow("/2"), flow("/3")
    new.upstream_reused, reused.upstream_reused = False, True
    store = store_with(new, reused, local)
    assert (store.upstream_opened, store.upstream_reused) == (1, 1)

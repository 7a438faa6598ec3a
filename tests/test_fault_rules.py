"""Fault rules as plain values: order, budgets, shadowing, chaos seeds, thread-safe counting."""

from __future__ import annotations

import re
import threading

import pytest

from proxy.server.chaos import Chaos
from proxy.server.faults import Faults
from proxy.server.faults import Request as FaultRequest
from proxy.server.replay import Recorded, Replay
from proxy.server.rules import Delay, Exchange, Fail, Match, Respond, Throttle


def get(path: str = "/api/items", host: str = "api.test", method: str = "GET",
        body: bytes | None = None) -> FaultRequest:
    return FaultRequest(Exchange.HTTP, method, host, path, f"http://{host}{path}", body)


def statuses(faults: Faults, n: int, path: str = "/api/items") -> list[int | None]:
    out: list[int | None] = []
    for _ in range(n):
        plan = faults.plan(get(path))
        out.append(plan.error.status if plan.error else plan.answer.status if plan.answer else None)
    return out


def test_a_counted_rule_fires_n_times_then_steps_aside() -> None:
    faults = Faults()
    rule = faults.add(Fail(Match(path="/api/*"), times=2, status=503))
    assert statuses(faults, 4) == [503, 503, None, None]
    assert rule.hits == 2 and rule.used


def test_rules_are_tried_in_the_order_added() -> None:
    faults = Faults()
    first = faults.add(Respond(Match(path="/api/items"), times=1, status=500))
    second = faults.add(Respond(Match(path="/api/items"), status=200))
    assert statuses(faults, 3) == [500, 200, 200]
    assert (first.hits, second.hits) == (1, 2)


def test_modifiers_before_an_answer_apply_and_after_it_do_not() -> None:
    faults = Faults()
    delay = faults.add(Delay(seconds=0.5))
    faults.add(Fail(Match(path="/down")))
    late = faults.add(Delay(Match(path="/other"), seconds=1.0))
    plan = faults.plan(get("/down"))
    assert (plan.delay, plan.fired, plan.error and plan.error.status) == (0.5, ["delay", "fail"], 502)
    assert (delay.hits, late.hits) == (1, 0)


@pytest.mark.parametrize("times", [0, -1, True])
def test_times_below_one_is_an_error_naming_the_rule(times: int) -> None:
    with pytest.raises(ValueError, match=rf"fail: times={times!r}; a rule fires at least once"):
        Fail(Match(), times=times)


def test_a_rule_an_earlier_unlimited_one_hides_is_refused_when_added() -> None:
    faults = Faults()
    faults.add(Fail(Match(path="/api/*"), status=503))
    with pytest.raises(ValueError, match=r"fault rule #2 respond\(200, 0 bytes\) on path='/api/items' can "
                                         r"never fire: rule #1 fail\(503\) on path='/api/\*' comes first"):
        faults.add(Respond(Match(path="/api/items")))
    faults.add(Respond(Match(path="/other")))  # a path the first rule does not cover is fine
    faults.add(Respond(Match(method="POST", path=re.compile("^/v1"))))


def test_an_earlier_counted_rule_hides_nothing() -> None:
    faults = Faults()
    faults.add(Fail(Match(), times=2, status=503))
    faults.add(Respond(Match(path="/x")))
    assert statuses(faults, 3, "/x") == [503, 503, 200]


def test_same_kind_modifiers_shadow_but_different_kinds_stack() -> None:
    faults = Faults()
    faults.add(Throttle(Match(host="*.test"), bytes_per_second=100))
    faults.add(Delay(Match(host="api.test"), seconds=1))
    with pytest.raises(ValueError, match="can never fire"):
        faults.add(Throttle(Match(host="api.test"), bytes_per_second=5))


def test_match_covers_is_conservative() -> None:
    assert Match().covers(Match(path="/x"))
    assert Match(host="*.test").covers(Match(host="API.test"))
    assert not Match(path="/x").covers(Match())
    assert not Match(path=re.compile("x")).covers(Match(path="/x"))
    assert not Match(method="GET").covers(Match(method="POST"))


def test_counting_is_exact_under_concurrent_requests() -> None:
    faults = Faults()
    rule = faults.add(Fail(Match(), times=50, status=503))
    failed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            plan = faults.plan(get())
            if plan.error:
                with lock:
                    failed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(failed), rule.hits) == (50, 50)


def test_unused_rules_are_those_below_their_budget() -> None:
    faults = Faults()
    once = faults.add(Fail(Match(path="/a")))
    twice = faults.add(Fail(Match(path="/b"), times=2))
    faults.plan(get("/a"))
    faults.plan(get("/b"))
    assert faults.unused() == [twice] and once.used


def test_strict_refuses_what_no_rule_answers() -> None:
    faults = Faults()
    faults.strict = True
    faults.add(Respond(Match(path="/planned")))
    faults.add(Delay(Match(path="/delayed")))
    assert faults.plan(get("/planned")).answer is not None
    plan = faults.plan(get("/delayed"))
    assert plan.fired == ["delay", "unplanned"] and plan.error and plan.error.status == 502
    assert "strict mode: no rule answers GET http://api.test/delayed" in plan.error.reason


def chaos_outcomes(seed: int, routes: list[str]) -> list[str]:
    faults = Faults()
    rule = faults.add(Chaos(seed=seed, error_rate=0.3, reset_rate=0.2, truncate_rate=0.1, latency=(0, 0.01)))
    for path in routes:
        faults.plan(get(path))
    return [str(choice) for choice in rule.choices]


def test_chaos_choices_depend_only_on_seed_and_per_route_order() -> None:
    routes = ["/a", "/b"] * 20
    first = chaos_outcomes(7, routes)
    assert chaos_outcomes(7, routes) == first
    assert chaos_outcomes(8, routes) != first
    # Interleaving other routes differently changes nothing for a route's own sequence.
    only_a = [c.split(": ", 1)[1] for c in chaos_outcomes(7, ["/a"] * 20)]
    assert only_a == [c.split(": ", 1)[1] for c in first if c.startswith("GET api.test/a ")]
    outcomes = {c.split(": ", 1)[1].split(" +")[0] for c in first}
    assert {"pass", "reset", "truncate"} <= outcomes and any(o.startswith("error") for o in outcomes)


def test_chaos_latency_delays_the_request() -> None:
    faults = Faults()
    rule = faults.add(Chaos(seed=3, latency=(0.2, 0.4)))
    plans = [faults.plan(get()) for _ in range(5)]
    assert [plan.delay for plan in plans] == [choice.latency for choice in rule.choices]
    assert all(0.2 <= plan.delay <= 0.4 for plan in plans) and len({plan.delay for plan in plans}) == 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"error_rate": 1.5}, "error_rate=1.5 is not between 0 and 1"),
    ({"error_rate": 0.6, "reset_rate": 0.6}, "add up to 1.2"),
    ({"error_rate": 0.5, "statuses": ()}, "needs at least one status"),
    ({"latency": (2.0, 1.0)}, "latency=.* must be"),
])
def test_chaos_refuses_impossible_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Chaos(**kwargs)  # type: ignore[arg-type]


def test_replay_plays_each_recording_once_in_order_matching_the_body() -> None:
    def entry(status: int, sent: bytes = b"") -> Recorded:
        return Recorded("POST", "http://api.test/api/items", sent, status, [], b"", f"entry {status}")

    faults = Faults()
    faults.add(Replay(entries=[entry(503), entry(201, b'{"a": 1}'), entry(200)], source="api.har"))
    assert faults.plan(get(method="POST", body=b"")).answer.status == 503  # type: ignore[union-attr]
    assert faults.plan(get(method="POST", body=b"")).answer.status == 200  # type: ignore[union-attr]
    assert faults.plan(get(method="POST", body=b'{"a": 1}')).answer.status == 201  # type: ignore[union-attr]
    plan = faults.plan(get(method="POST", body=b""))
    assert plan.fired == ["unplanned"] and plan.error and "is not in the cassette api.har" in plan.error.reason

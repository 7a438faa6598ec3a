"""Counted rules and the second round of faults, each seen by a real client through the fwdproxy fixture."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
import urllib.request

import httpx
import pytest
import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def get(proxy: FwdProxy, url: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.get(url, proxies={"http": proxy.url, "https": proxy.url}, **kwargs)  # type: ignore[arg-type]


def opener(proxy: FwdProxy) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))


def test_a_counted_fail_steps_aside_after_n_requests(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    rule = fwdproxy.fail(503, path="/api/*", times=2)
    codes = [get(fwdproxy, origin_http.url("/api/items")).status_code for _ in range(3)]
    assert codes == [503, 503, 200] and rule.hits == 2
    assert len(origin_http.requests) == 1  # only the third reached the origin
    assert [f.faults for f in fwdproxy.flows.filter(path="/api/items")] == [["fail"], ["fail"], []]


def test_counted_responds_are_tried_in_order(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.respond(500, b"first", times=1, path="/v")
    fwdproxy.respond(200, json={"then": True}, path="/v")
    with httpx.Client(proxy=fwdproxy.url, timeout=10) as client:
        replies = [client.get(origin_http.url("/v")) for _ in range(3)]
    assert [r.content for r in replies] == [b"first", b'{"then": true}', b'{"then": true}']
    assert replies[1].headers["Content-Type"] == "application/json" and origin_http.requests == []


def test_times_zero_and_hidden_rules_fail_at_the_call(fwdproxy: FwdProxy) -> None:
    with pytest.raises(ValueError, match="fail: times=0; a rule fires at least once"):
        fwdproxy.fail(503, times=0)
    fwdproxy.fail(503, path="/api/*")
    with pytest.raises(ValueError, match=r"respond\(200, 0 bytes\) on path='/api/x' can never fire: "
                                         r"rule #\d+ fail\(503\) on path='/api/\*' comes first"):
        fwdproxy.respond(path="/api/x")


def test_truncate_promises_more_than_it_sends(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(200, b"x" * 1000)
    fwdproxy.truncate(after_bytes=100, path="/cut", times=1)
    conn = http.client.HTTPConnection(fwdproxy.host, fwdproxy.port, timeout=10)
    conn.request("GET", origin_http.url("/cut"))
    resp = conn.getresponse()
    assert resp.getheader("Content-Length") == "1000"
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    assert len(cut.value.partial) == 100  # a clean close (FIN) after 100 body bytes, not a reset
    conn.close()
    assert get(fwdproxy, origin_http.url("/cut")).content == b"x" * 1000  # times=1: whole again


def test_truncate_of_a_chunked_response_leaves_out_the_last_chunk(fwdproxy: FwdProxy,
                                                                  origin_http: Origin) -> None:
    origin_http.respond(200, b"a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
                        {"Transfer-Encoding": "chunked"})
    fwdproxy.truncate(after_bytes=5)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(fwdproxy, origin_http.url("/chunked"))


def test_stall_sends_the_head_then_nothing_until_the_client_gives_up(fwdproxy: FwdProxy,
                                                                    origin_http: Origin) -> None:
    fwdproxy.stall(path="/hang")
    with requests.get(origin_http.url("/hang"), proxies={"http": fwdproxy.url}, stream=True, timeout=0.5) as resp:
        assert resp.status_code == 200  # the head arrived
        with pytest.raises(requests.exceptions.ConnectionError, match="Read timed out"):
            resp.content  # noqa: B018
    # The client hung up; the proxy's thread lets go at once rather than waiting out its timeout.
    assert fwdproxy.flows.wait_for(path="/hang", timeout=5).error == "stalled by a fault rule until the client closed"
    assert get(fwdproxy, origin_http.url("/fine")).status_code == 200


def test_stall_with_seconds_is_bounded_by_the_proxy(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(200, b"never seen")
    fwdproxy.stall(seconds=0.2)
    conn = http.client.HTTPConnection(fwdproxy.host, fwdproxy.port, timeout=10)
    conn.request("GET", origin_http.url("/"))
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    assert fwdproxy.flows.one().error == "stalled by a fault rule for 0.2s"


def test_close_ends_the_connection_without_a_response(fwdproxy: FwdProxy, origin_http: Origin,
                                                      origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.close(times=2)
    with pytest.raises(http.client.RemoteDisconnected, match="Remote end closed connection without response"):
        opener(fwdproxy).open(origin_http.url("/gone"), timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):  # a CONNECT closed the same way
        get(fwdproxy, "https://api.test/", verify=origin_https.ca_file)
    assert origin_http.requests == [] and origin_https.requests == []
    assert opener(fwdproxy).open(origin_http.url("/back"), timeout=10).status == 200


def test_first_byte_delay_holds_the_response_not_the_request(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.first_byte_delay(1.0, path="/late")
    with httpx.Client(proxy=fwdproxy.url, timeout=httpx.Timeout(10, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get(origin_http.url("/late"))
        assert [r.path for r in origin_http.requests] == ["/late"]  # unlike delay(), the origin was asked
    fwdproxy.clear()
    fwdproxy.delay(1.0, path="/early")
    with httpx.Client(proxy=fwdproxy.url, timeout=httpx.Timeout(10, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get(origin_http.url("/early"))
        assert [r.path for r in origin_http.requests] == ["/late"]  # delay() holds the request back


def test_throttle_up_reads_the_request_body_slowly(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.throttle(2000, "up", path="/upload")
    start = time.monotonic()
    resp = requests.post(origin_http.url("/upload"), data=b"u" * 4000, proxies={"http": fwdproxy.url}, timeout=10)
    assert resp.status_code == 200 and time.monotonic() - start >= 1.5  # 4000 bytes at 2000 B/s: about 2 s
    assert origin_http.requests[0].body == b"u" * 4000
    start = time.monotonic()
    requests.post(origin_http.url("/other"), data=b"u" * 4000, proxies={"http": fwdproxy.url}, timeout=10)
    assert time.monotonic() - start < 1.0  # unthrottled: far below, with room for a loaded machine


@needs_curl
def test_fragment_delivers_the_same_bytes_in_tiny_writes(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    body = bytes(range(256)) * 4
    origin_http.respond(200, body, {"Content-Type": "application/octet-stream"})
    fwdproxy.fragment(size=1, path="/bits")
    out = subprocess.run(["curl", "-sS", "-x", fwdproxy.url, origin_http.url("/bits")],
                         capture_output=True, check=True, timeout=30)
    assert out.stdout == body
    assert fwdproxy.flows.one(path="/bits").faults == ["fragment"]


def test_corrupt_chunk_breaks_chunked_framing(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(200, b"5\r\nhello\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"})
    assert get(fwdproxy, origin_http.url("/")).content == b"hello"  # negative control
    fwdproxy.corrupt_chunk()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(fwdproxy, origin_http.url("/"))


def test_corrupt_chunk_flips_a_byte_of_a_sized_body(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(200, b"hello")
    fwdproxy.corrupt_chunk(times=1)
    assert get(fwdproxy, origin_http.url("/")).content == bytes([ord("h") ^ 0xFF]) + b"ello"
    assert get(fwdproxy, origin_http.url("/")).content == b"hello"


@needs_curl
def test_dns_error_answers_as_an_unresolvable_name(fwdproxy: FwdProxy, origin_http: Origin,
                                                   origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_http)
    fwdproxy.map_host("tls.test", origin_https)
    fwdproxy.dns_error("*.test")
    plain = subprocess.run(["curl", "-sS", "-i", "-x", fwdproxy.url, "http://api.test/"],
                           capture_output=True, text=True, timeout=30)
    assert plain.stdout.startswith("HTTP/1.1 502")
    assert "error=dns_error" in plain.stdout and "cannot resolve api.test" in plain.stdout
    tunnel = subprocess.run(["curl", "-sS", "-x", fwdproxy.url, "--cacert", origin_https.ca_file,
                             "https://tls.test/"], capture_output=True, text=True, timeout=30)
    assert tunnel.returncode == 56 and "502" in tunnel.stderr  # CONNECT refused the same way
    assert origin_http.requests == [] and origin_https.requests == []


def test_assert_all_rules_used_names_the_rules_that_fell_short(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.fail(503, path="/flaky", times=2)
    fwdproxy.respond(204, path="/never")
    get(fwdproxy, origin_http.url("/flaky"))
    with pytest.raises(AssertionError) as failure:
        fwdproxy.assert_all_rules_used()
    assert str(failure.value).splitlines() == [
        "2 fault rules not used as planned:",
        "  #1 fail(503) on path='/flaky', times=2: fired 1 time",
        "  #2 respond(204, 0 bytes) on path='/never': fired 0 times"]
    get(fwdproxy, origin_http.url("/flaky"))
    get(fwdproxy, origin_http.url("/never"))
    fwdproxy.assert_all_rules_used()


def test_assert_called_lists_the_near_misses(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    with requests.Session() as session:
        session.post(origin_http.url("/api/item"), json={"name": "a"}, proxies={"http": fwdproxy.url})
        session.get(origin_http.url("/api/items"), headers={"X-Trace": "1"}, proxies={"http": fwdproxy.url})
    with pytest.raises(AssertionError) as failure:
        fwdproxy.flows.assert_called(method="POST", path="/api/items", json={"name": "a"})
    lines = str(failure.value).splitlines()
    assert lines[0].startswith("expected a call with method='POST', path='/api/items', json={'name': 'a'} "
                               "at least once, found 0; closest of the 2 flows fwdproxy")
    assert lines[1:] == ["  POST /api/item: path differs from /api/items",
                         "  GET /api/items: method differs from POST; body b'' is not JSON"]
    [flow] = fwdproxy.flows.assert_called(method="POST", path="/api/item", json={"name": "a"}, times=1)
    assert flow.method == "POST"
    fwdproxy.flows.assert_called(url=origin_http.url("/api/items"), headers={"X-Trace": "1"})
    with pytest.raises(AssertionError, match=r"header X-Trace is '1', not '2'"):
        fwdproxy.flows.assert_called(path="/api/items", headers={"X-Trace": "2"})
    with pytest.raises(AssertionError, match=r"expected a call with path='/api/\*' 0 times, found 2"):
        fwdproxy.flows.assert_not_called(path="/api/*")


def test_strict_refuses_unplanned_requests_and_keeps_them(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.strict()
    fwdproxy.respond(200, b"planned", path="/planned")
    assert get(fwdproxy, origin_http.url("/planned")).content == b"planned"
    resp = get(fwdproxy, origin_http.url("/surprise"))
    assert resp.status_code == 502 and "strict mode: no rule answers GET" in resp.text
    assert "http_request_denied" in resp.headers["Proxy-Status"]
    assert [flow.path for flow in fwdproxy.unplanned] == ["/surprise"]
    assert origin_http.requests == []
    fwdproxy.unplanned.clear()  # seen and accepted: the test passes


def test_clearing_between_tests_takes_microseconds(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    """Not a speed assertion: a sanity check that clear() leaves nothing behind (speed: scripts/bench_plugin.py)."""
    fwdproxy.fail(503, times=1)
    fwdproxy.strict()
    fwdproxy.clear()
    assert fwdproxy.server.faults.rules() == [] and not fwdproxy.server.faults
    assert get(fwdproxy, origin_http.url("/")).status_code == 200
    assert os.environ.get("HTTP_PROXY") is None


def test_counts_hold_under_concurrent_clients(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rule = fwdproxy.fail(503, times=5)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: get(fwdproxy, origin_http.url(f"/{i}")).status_code, range(24)))
    assert sorted(codes) == [200] * 19 + [503] * 5 and rule.hits == 5
    assert len(origin_http.requests) == 19


@needs_curl
def test_tls_failure_refuses_the_clients_handshake(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.map_host("ok.test", origin_https)
    rule = fwdproxy.tls_failure("api.test", times=2)
    with pytest.raises(requests.exceptions.SSLError, match="handshake failure"):
        get(fwdproxy, "https://api.test/", verify=origin_https.ca_file)
    curl = subprocess.run(["curl", "-sS", "-x", fwdproxy.url, "--cacert", origin_https.ca_file,
                           "https://api.test/"], capture_output=True, text=True, timeout=30)
    assert curl.returncode == 35 and "handshake failure" in curl.stderr  # 35: a TLS error, as curl says
    assert origin_https.connections == 0 and rule.hits == 2
    assert get(fwdproxy, "https://ok.test/", verify=origin_https.ca_file).status_code == 200
    assert get(fwdproxy, "https://api.test/", verify=origin_https.ca_file).status_code == 200  # times=2 spent
    assert [f.error for f in fwdproxy.flows.filter(host="api.test")][:2] == ["TLS handshake failed by a fault rule"] * 2


def test_passthrough_plans_requests_and_tunnels_in_strict_mode(fwdproxy: FwdProxy, origin_http: Origin,
                                                                origin_https: Origin) -> None:
    fwdproxy.strict()
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.passthrough(path="/open/*")
    fwdproxy.passthrough(method="CONNECT", host="api.test")
    assert get(fwdproxy, origin_http.url("/open/door")).text == "GET /open/door\n"
    assert get(fwdproxy, "https://api.test/x", verify=origin_https.ca_file).status_code == 200
    assert get(fwdproxy, origin_http.url("/closed")).status_code == 502  # negative control
    assert [flow.path for flow in fwdproxy.unplanned] == ["/closed"]
    fwdproxy.unplanned.clear()


def test_assert_called_waits_for_a_client_still_running(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    import threading

    go = threading.Event()

    def client() -> None:
        go.wait(5)
        for _ in range(2):
            get(fwdproxy, origin_http.url("/later"))

    worker = threading.Thread(target=client)
    worker.start()
    with pytest.raises(AssertionError, match=r"found 0; .* saw no flows"):
        fwdproxy.flows.assert_called(path="/later")  # no timeout: what has happened so far
    go.set()
    assert len(fwdproxy.flows.assert_called(path="/later", times=2, timeout=5)) == 2
    worker.join()

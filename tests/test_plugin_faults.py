"""Every fault rule, observed by a real client (requests or http.client) through the fwdproxy fixture."""

from __future__ import annotations

import http.client
import re
import time

import pytest
import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin


def get(proxy: FwdProxy, url: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.get(url, proxies={"http": proxy.url, "https": proxy.url}, **kwargs)  # type: ignore[arg-type]


def test_respond_answers_without_contacting_the_origin(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fault = fwdproxy.respond(418, b"short and stout", {"X-Teapot": "yes"}, path="/brew")
    resp = get(fwdproxy, origin_http.url("/brew"))
    assert (resp.status_code, resp.content, resp.headers["X-Teapot"]) == (418, b"short and stout", "yes")
    assert origin_http.requests == [] and fault.hits == 1
    assert get(fwdproxy, origin_http.url("/other")).status_code == 200  # negative control
    assert fwdproxy.flows.one(path="/brew").faults == ["respond"]


def test_fail_is_a_proxy_error_page(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.fail(status=503, path="/broken")
    resp = get(fwdproxy, origin_http.url("/broken"))
    assert resp.status_code == 503 and resp.text.startswith("fwdproxy: failure injected")
    assert "proxy_internal_response" in resp.headers["Proxy-Status"]
    assert origin_http.requests == []
    assert get(fwdproxy, origin_http.url("/fine")).status_code == 200


def test_fail_defaults_to_502_for_every_request(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.fail()
    conn = http.client.HTTPConnection(fwdproxy.host, fwdproxy.port, timeout=10)
    conn.request("POST", origin_http.url("/any"), body=b"x")
    assert conn.getresponse().status == 502
    conn.close()


def test_delay_holds_the_request_before_forwarding(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.delay(0.3, path="/slow")
    start = time.monotonic()
    assert get(fwdproxy, origin_http.url("/slow")).status_code == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(fwdproxy, origin_http.url("/slow"), timeout=0.1)  # a client with a short timeout gives up


def test_delay_applies_to_tunnels_too(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.delay(0.3, host="api.test")
    start = time.monotonic()
    assert get(fwdproxy, "https://api.test/", verify=origin_https.ca_file).status_code == 200
    assert time.monotonic() - start >= 0.3
    assert fwdproxy.flows.one(kind="tunnel").faults == ["delay"]


def test_reset_at_once_is_a_connection_error(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.reset(path="/reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        get(fwdproxy, origin_http.url("/reset"))
    assert fwdproxy.flows.one(path="/reset").error == "connection reset by a fault rule"


def test_reset_mid_response_truncates_the_body(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(200, b"x" * 10000)
    fwdproxy.reset(after_bytes=1000)
    conn = http.client.HTTPConnection(fwdproxy.host, fwdproxy.port, timeout=10)
    conn.request("GET", origin_http.url("/big"))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == "10000"
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        resp.read()
    conn.close()


def test_refuse_connect_answers_the_tunnel_with_an_error(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.map_host("ok.test", origin_https)
    fwdproxy.refuse_connect("api.test", status=403)
    conn = http.client.HTTPSConnection(fwdproxy.host, fwdproxy.port, context=origin_https.ssl_context, timeout=10)
    conn.set_tunnel("api.test", 443)
    with pytest.raises(OSError, match="Tunnel connection failed: 403"):
        conn.request("GET", "/")
    conn.close()
    with pytest.raises(requests.exceptions.ProxyError):
        get(fwdproxy, "https://api.test/", verify=origin_https.ca_file)
    assert get(fwdproxy, "https://ok.test/", verify=origin_https.ca_file).status_code == 200
    assert [f.status for f in fwdproxy.flows.filter(kind="tunnel", host="api.test")] == [403, 403]


def test_throttle_slows_the_response_down(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(200, b"z" * 2000)
    fwdproxy.throttle(1000, path="/slow")
    start = time.monotonic()
    assert get(fwdproxy, origin_http.url("/slow")).content == b"z" * 2000
    assert time.monotonic() - start >= 1.5  # 2000 bytes at 1000 B/s: about 2 s
    start = time.monotonic()
    get(fwdproxy, origin_http.url("/fast"))
    assert time.monotonic() - start < 1.0  # unthrottled: far below, with room for a loaded machine


def test_require_auth_wants_the_right_credentials(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.require_auth("alice", "s3cret")
    url = origin_http.url("/private")
    assert get(fwdproxy, url).status_code == 407
    wrong = fwdproxy.url.replace("http://", "http://alice:wrong@")
    assert requests.get(url, proxies={"http": wrong}, timeout=10).status_code == 407
    right = fwdproxy.url.replace("http://", "http://alice:s3cret@")
    assert requests.get(url, proxies={"http": right}, timeout=10).status_code == 200
    assert len(origin_http.requests) == 1
    assert origin_http.requests[0].header("Proxy-Authorization") is None  # never forwarded


@pytest.mark.parametrize(("matcher", "hit", "miss"), [
    ({"path": "/items"}, "/items?page=2", "/items/1"),
    ({"path": "/items/*"}, "/items/1", "/items"),
    ({"path": re.compile(r"^/v\d+/")}, "/v2/users", "/users/v2/"),
    ({"method": "POST"}, "POST /any", "/any"),
])
def test_matchers_choose_the_requests_a_fault_applies_to(fwdproxy: FwdProxy, origin_http: Origin,
                                                         matcher: dict[str, object], hit: str, miss: str) -> None:
    fwdproxy.fail(status=599, **matcher)  # type: ignore[arg-type]

    def status(target: str) -> int:
        method, _, path = target.rpartition(" ")
        return requests.request(method or "GET", origin_http.url(path), proxies={"http": fwdproxy.url},
                                timeout=10).status_code

    assert (status(hit), status(miss)) == (599, 200)


def test_host_globs_choose_origins(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.map_host("a.api.test", origin_http)
    fwdproxy.map_host("web.test", origin_http)
    fwdproxy.fail(status=503, host="*.api.test")
    assert get(fwdproxy, "http://a.api.test/").status_code == 503
    assert get(fwdproxy, "http://web.test/").status_code == 200

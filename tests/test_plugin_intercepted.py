"""Counted faults, shaping, strict mode and cassettes on HTTPS the proxy intercepts (fwdproxy.intercept())."""

from __future__ import annotations

import http.client
import json

import pytest
import requests
from requests.adapters import HTTPAdapter
from test_plugin import run
from urllib3.util.retry import Retry

from proxy.testing.pytest_plugin import FwdProxy, Origin

pytest_plugins = ["pytester"]


@pytest.fixture
def api(fwdproxy: FwdProxy, origin_https: Origin) -> FwdProxy:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.intercept("api.test")
    return fwdproxy


def get(proxy: FwdProxy, path: str, **kwargs: object) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.get(f"https://api.test{path}", proxies={"https": proxy.url}, verify=proxy.ca_file,
                        **kwargs)  # type: ignore[arg-type]


def test_fail_twice_then_succeed_over_https(api: FwdProxy, origin_https: Origin) -> None:
    rule = api.fail(503, host="api.test", path="/items", times=2)
    with requests.Session() as session:
        session.mount("https://", HTTPAdapter(max_retries=Retry(total=3, status_forcelist=[503], backoff_factor=0)))
        resp = session.get("https://api.test/items", proxies={"https": api.url}, verify=api.ca_file, timeout=10)
    assert resp.status_code == 200 and rule.hits == 2 and len(origin_https.requests) == 1
    api.flows.assert_called(method="GET", url="https://api.test/items", times=3)


def test_truncate_and_stall_inside_the_tls_session(api: FwdProxy, origin_https: Origin) -> None:
    origin_https.respond(200, b"x" * 1000)
    api.truncate(after_bytes=10, path="/cut")
    api.stall(path="/hang")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(api, "/cut")
    with get(api, "/hang", stream=True, timeout=(10, 1.0)) as resp:  # reads give up after 1 s
        assert resp.status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError, match="Read timed out"):
            resp.content  # noqa: B018
    assert get(api, "/fine").content == b"x" * 1000


def test_strict_mode_plans_each_request_inside_an_intercepted_tunnel(api: FwdProxy) -> None:
    api.strict()
    api.respond(200, json={"items": []}, host="api.test", path="/items")
    assert get(api, "/items").json() == {"items": []}  # the CONNECT itself is not refused
    resp = get(api, "/other")
    assert resp.status_code == 502 and "strict mode: no rule answers GET https://api.test/other" in resp.text
    assert [flow.url for flow in api.unplanned] == ["https://api.test/other"]
    api.unplanned.clear()


def test_strict_mode_refuses_a_blind_tunnel(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("blind.test", origin_https)
    fwdproxy.strict()
    conn = http.client.HTTPSConnection(fwdproxy.host, fwdproxy.port, context=origin_https.ssl_context, timeout=10)
    conn.set_tunnel("blind.test", 443)
    with pytest.raises(OSError, match="Tunnel connection failed: 502"):
        conn.request("GET", "/")
    conn.close()
    assert [flow.method for flow in fwdproxy.unplanned] == ["CONNECT"]
    fwdproxy.unplanned.clear()


RECORD_HTTPS = """
    import pytest, requests

    @pytest.mark.fwdproxy_cassette("https.har")
    def test_api(fwdproxy, origin_https):
        origin_https.respond(200, b'{"secure": true}', {"Content-Type": "application/json"})
        fwdproxy.map_host("api.test", origin_https)
        fwdproxy.intercept()
        resp = requests.get("https://api.test/me", proxies={"https": fwdproxy.url}, verify=fwdproxy.ca_file,
                            timeout=10)
        assert resp.json() == {"secure": True} and len(origin_https.requests) == 1
"""

REPLAY_HTTPS = """
    import pytest, requests

    @pytest.mark.fwdproxy_cassette("https.har")
    def test_api(fwdproxy):
        INTERCEPT
        resp = requests.get("https://api.test/me", proxies={"https": fwdproxy.url}, verify=fwdproxy.ca_file,
                            timeout=10)
        assert resp.json() == {"secure": True}
"""


def test_an_intercepted_https_cassette_replays_with_no_origin(pytester: pytest.Pytester,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_api=RECORD_HTTPS)
    run(pytester, "--fwdproxy-record=once", "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)
    urls = [e["request"]["url"] for e in json.loads((pytester.path / "https.har").read_text())["log"]["entries"]]
    assert urls == ["https://api.test/me"]  # the request inside; the tunnel itself is not an entry
    pytester.makepyfile(test_api=REPLAY_HTTPS.replace("INTERCEPT", "fwdproxy.intercept()"))
    run(pytester, "-o", "fwdproxy_offline=true").assert_outcomes(passed=1)
    # Without interception the tunnel is blind: refused, with a reason that says what to do.
    pytester.makepyfile(test_api=REPLAY_HTTPS.replace("INTERCEPT", "").replace(
        "verify=fwdproxy.ca_file", "verify=False"))
    result = run(pytester, "-o", "fwdproxy_offline=true")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*CONNECT api.test is a blind tunnel, so the cassette *https.har cannot answer "
                                 "what goes through it; call fwdproxy.intercept()*"])


def test_tls_failure_before_interception(api: FwdProxy, origin_https: Origin) -> None:
    api.tls_failure("api.test", times=1)
    with pytest.raises(requests.exceptions.SSLError, match="handshake failure"):
        get(api, "/items")
    assert get(api, "/items").status_code == 200  # the next handshake is intercepted as usual
    assert len(origin_https.requests) == 1

"""TLS interception end to end: real clients through --intercept to loopback TLS origins.

Each client trusts the proxy's CA and the proxy trusts the origins' CA (the
plugin's per-session CAs; ``--upstream-ca`` in the CLI), so every check is a
real verification on both sides. Each test asserts what the proxy saw
inside the TLS session (path, headers, body in the flow) and has a negative
control: a client that does not trust the proxy's CA gets nothing through.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import subprocess
import urllib.error
import urllib.request

import httpx
import pytest
import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin, OriginReply, OriginRequest


def echo(request: OriginRequest) -> OriginReply:
    token = request.header("X-Token") or "-"
    return OriginReply(201, b"seen " + request.body, [("X-Seen-Token", token), ("Content-Type", "text/plain")])


@pytest.fixture
def api(fwdproxy: FwdProxy, origin_https: Origin) -> Origin:
    """An HTTPS origin reached as api.test, intercepted by the proxy."""
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.intercept()
    origin_https.handler = echo
    return origin_https


def assert_decrypted(fwdproxy: FwdProxy, api: Origin, path: str = "/items?q=1") -> None:
    flow = fwdproxy.flows.one(kind="http", path=path)
    assert flow.url == f"https://api.test{path}" and flow.intercepted and flow.upstream_tls == "verified"
    assert (flow.method, flow.status) == ("POST", 201)
    assert ("X-Token", "abc") in flow.request_headers
    assert flow.request_body == b"ping" and flow.response_body == b"seen ping"
    assert ("X-Seen-Token", "abc") in flow.response_headers
    assert [(r.method, r.path, r.body) for r in api.requests] == [("POST", path, b"ping")]


def test_curl(fwdproxy: FwdProxy, api: Origin) -> None:
    out = subprocess.run(["curl", "-sS", "--cacert", fwdproxy.ca_file, "-x", fwdproxy.url,
                          "-H", "X-Token: abc", "-d", "ping", "https://api.test/items?q=1"],
                         capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, "seen ping")
    assert_decrypted(fwdproxy, api)
    tunnel = fwdproxy.flows.one(kind="tunnel")
    assert tunnel.intercepted and tunnel.target == ("api.test", 443) and not tunnel.error


def test_curl_without_the_ca_gets_nothing_through(fwdproxy: FwdProxy, api: Origin,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fwdproxy")
    for _ in range(2):
        out = subprocess.run(["curl", "-sS", "--cacert", api.ca_file, "-x", fwdproxy.url,
                              "https://api.test/secret"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 60  # curl: peer certificate cannot be authenticated
    assert api.requests == []
    failed = fwdproxy.flows.wait_for_count(2, kind="tunnel")
    assert all("UNKNOWN_CA" in flow.error.upper() for flow in failed)
    hints = [r.getMessage() for r in caplog.records if "rejected fwdproxy's certificate" in r.getMessage()]
    assert len(hints) == 1 and "api.test" in hints[0] and "fwdproxy ca env" in hints[0]  # once per host


def test_requests(fwdproxy: FwdProxy, api: Origin) -> None:
    with requests.Session() as session:
        resp = session.post("https://api.test/items?q=1", data=b"ping", headers={"X-Token": "abc"},
                            proxies={"https": fwdproxy.url}, verify=fwdproxy.ca_file, timeout=10)
    assert (resp.status_code, resp.content) == (201, b"seen ping")
    assert_decrypted(fwdproxy, api)


def test_requests_trusting_only_the_origin_fails(fwdproxy: FwdProxy, api: Origin) -> None:
    with requests.Session() as session, pytest.raises(requests.exceptions.SSLError):
        session.get("https://api.test/", proxies={"https": fwdproxy.url}, verify=api.ca_file, timeout=10)
    assert api.requests == []


def test_requests_with_apply_env(fwdproxy: FwdProxy, api: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    fwdproxy.apply_env(monkeypatch)  # HTTPS_PROXY and REQUESTS_CA_BUNDLE, among others
    with requests.Session() as session:
        resp = session.post("https://api.test/items?q=1", data=b"ping", headers={"X-Token": "abc"}, timeout=10)
    assert resp.status_code == 201
    assert_decrypted(fwdproxy, api)


def test_httpx(fwdproxy: FwdProxy, api: Origin) -> None:
    context = ssl.create_default_context(cafile=fwdproxy.ca_file)
    with httpx.Client(proxy=fwdproxy.url, verify=context, timeout=10) as client:
        resp = client.post("https://api.test/items?q=1", content=b"ping", headers={"X-Token": "abc"})
    assert (resp.status_code, resp.content, resp.http_version) == (201, b"seen ping", "HTTP/1.1")
    assert_decrypted(fwdproxy, api)
    with httpx.Client(proxy=fwdproxy.url, verify=api.ssl_context, timeout=10) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get("https://api.test/")
    assert len(api.requests) == 1


def test_urllib(fwdproxy: FwdProxy, api: Origin) -> None:
    def opener(cafile: str) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": fwdproxy.url}),
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile)))

    request = urllib.request.Request("https://api.test/items?q=1", data=b"ping", headers={"X-Token": "abc"})
    with opener(fwdproxy.ca_file).open(request, timeout=10) as resp:
        assert (resp.status, resp.read()) == (201, b"seen ping")
    assert_decrypted(fwdproxy, api)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        opener(api.ca_file).open("https://api.test/", timeout=10)


def test_keep_alive_inside_the_tunnel_and_pooled_upstream(fwdproxy: FwdProxy, api: Origin) -> None:
    with requests.Session() as session:
        for i in range(3):
            resp = session.post(f"https://api.test/n/{i}", data=b"x", proxies={"https": fwdproxy.url},
                                verify=fwdproxy.ca_file, timeout=10)
            assert resp.status_code == 201
    assert len(fwdproxy.flows.filter(kind="tunnel")) == 1  # one CONNECT, three requests in it
    assert [f.path for f in fwdproxy.flows.filter(kind="http")] == ["/n/0", "/n/1", "/n/2"]
    assert (fwdproxy.flows.upstream_opened, fwdproxy.flows.upstream_reused) == (1, 2)
    assert api.connections == 1


def test_an_ip_target_gets_a_certificate_for_the_address(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.intercept()
    fwdproxy.server.origin_tls.trust(origin_https.ca_file)
    out = subprocess.run(["curl", "-sS", "--cacert", fwdproxy.ca_file, "-x", fwdproxy.url,
                          origin_https.url("/by-ip")], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, "GET /by-ip\n")
    assert fwdproxy.flows.one(kind="http").url == f"https://127.0.0.1:{origin_https.port}/by-ip"


def test_only_intercept_hosts_are_decrypted_and_no_intercept_wins(fwdproxy: FwdProxy,
                                                                   origin_https: Origin) -> None:
    for name in ("api.test", "pinned.api.test", "other.test"):
        fwdproxy.map_host(name, origin_https)
    fwdproxy.intercept("*.test", "api.test", no_intercept=("pinned.*",))
    bundle = fwdproxy.env()["SSL_CERT_FILE"]  # our CA and the origins': either certificate verifies
    for name in ("api.test", "pinned.api.test", "other.test"):
        out = subprocess.run(["curl", "-sS", "--cacert", bundle, "-x", fwdproxy.url, f"https://{name}/"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    tunnels = {flow.host: flow.intercepted for flow in fwdproxy.flows.wait_for_count(3, kind="tunnel")}
    assert tunnels == {"api.test": True, "pinned.api.test": False, "other.test": True}
    assert sorted(flow.host for flow in fwdproxy.flows.filter(kind="http")) == ["api.test", "other.test"]


def test_faults_apply_inside_the_tunnel(fwdproxy: FwdProxy, api: Origin) -> None:
    unavailable = fwdproxy.respond(503, b"try later", {"Retry-After": "1"}, host="api.test", path="/flaky")
    broken = fwdproxy.fail(502, path="/broken")
    # verify= on each call: a REQUESTS_CA_BUNDLE in the environment overrides Session.verify.
    tls = {"proxies": {"https": fwdproxy.url}, "verify": fwdproxy.ca_file, "timeout": 10}
    with requests.Session() as session:
        flaky = session.get("https://api.test/flaky", **tls)  # type: ignore[arg-type]
        assert (flaky.status_code, flaky.text, flaky.headers["Retry-After"]) == (503, "try later", "1")
        resp = session.get("https://api.test/broken", **tls)  # type: ignore[arg-type]
        assert resp.status_code == 502 and "proxy_internal_response" in resp.headers["Proxy-Status"]
        fwdproxy.reset(path="/reset")
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get("https://api.test/reset", **tls)  # type: ignore[arg-type]
        assert session.post("https://api.test/fine", data=b"ok", **tls).status_code == 201  # type: ignore[arg-type]
    assert (unavailable.hits, broken.hits) == (1, 1)
    assert [r.path for r in api.requests] == ["/reset", "/fine"]  # reset cuts the response
    assert fwdproxy.flows.one(path="/flaky").faults == ["respond"]


def test_delay_fires_once_per_request_not_for_the_connect_too(fwdproxy: FwdProxy, api: Origin) -> None:
    delay = fwdproxy.delay(0.01, host="api.test")
    with requests.Session() as session:
        session.get("https://api.test/a", proxies={"https": fwdproxy.url}, verify=fwdproxy.ca_file, timeout=10)
    assert delay.hits == 2  # matched the CONNECT and the GET (it waits before the GET only)
    assert fwdproxy.flows.one(path="/a").faults == ["delay"]


def test_require_auth_uses_the_connect_credentials(fwdproxy: FwdProxy, api: Origin) -> None:
    fwdproxy.require_auth("u", "p")
    url = fwdproxy.url.replace("http://", "http://u:p@")
    with requests.Session() as session:
        resp = session.post("https://api.test/items", data=b"x", proxies={"https": url},
                            verify=fwdproxy.ca_file, timeout=10)
        assert resp.status_code == 201
        with pytest.raises(requests.exceptions.ProxyError, match="407"):
            session.get("https://api.test/", proxies={"https": fwdproxy.url}, verify=fwdproxy.ca_file,
                        timeout=10)


def test_absolute_form_https_is_forwarded_over_verified_tls(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    conn = http.client.HTTPConnection(fwdproxy.host, fwdproxy.port, timeout=10)
    conn.request("GET", "https://api.test/abs?x=1")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"GET /abs?x=1\n")
    flow = fwdproxy.flows.one(kind="http")
    assert (flow.url, flow.upstream_tls, flow.intercepted) == ("https://api.test/abs?x=1", "verified", False)
    # The same origin under a name its certificate does not carry: refused, not forwarded.
    fwdproxy.hosts.add("elsewhere.test", origin_https.host, origin_https.port)
    conn.request("GET", "https://elsewhere.test/")
    resp = conn.getresponse()
    assert resp.status == 502 and "error=tls_certificate_error" in resp.headers["Proxy-Status"]
    assert [r.path for r in origin_https.requests] == ["/abs?x=1"]
    conn.close()

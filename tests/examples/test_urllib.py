"""urllib.request through the fwdproxy fixture, configured by the environment."""

import urllib.request


def test_urllib_uses_the_environment(fwdproxy, origin_http, origin_https, monkeypatch):
    fwdproxy.apply_env(monkeypatch)                     # urllib reads *_proxy when the opener is built
    fwdproxy.map_host("api.test", origin_https)
    with urllib.request.urlopen(origin_http.url("/plain")) as resp:
        assert resp.status == 200
    with urllib.request.urlopen("https://api.test/secure", context=origin_https.ssl_context) as resp:
        assert resp.read() == b"GET /secure\n"
    assert fwdproxy.flows.one(kind="http").path == "/plain"
    assert fwdproxy.flows.one(kind="tunnel").host == "api.test"

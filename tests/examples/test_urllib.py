"""urllib.request through the fwdproxy fixture, configured by the environment."""

from __future__ import annotations

import urllib.request

import pytest

from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_urllib_uses_the_environment(fwdproxy: FwdProxy, origin_http: Origin, origin_https: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    fwdproxy.apply_env(monkeypatch)
    fwdproxy.map_host("api.test", origin_https)
    # build_opener() reads *_proxy now; urlopen() reuses the opener (and proxies) of its first call.
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=origin_https.ssl_context))
    with opener.open(origin_http.url("/plain")) as resp:
        assert resp.status == 200
    with opener.open("https://api.test/secure") as resp:
        assert resp.read() == b"GET /secure\n"
    assert fwdproxy.flows.one(kind="http").path == "/plain"
    assert fwdproxy.flows.one(kind="tunnel").host == "api.test"

"""httpx through the fwdproxy fixture, given the proxy explicitly or through the environment."""

from __future__ import annotations

import pytest

from proxy.testing.pytest_plugin import FwdProxy, Origin

httpx = pytest.importorskip("httpx")


def test_httpx_tunnels_https(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    with httpx.Client(proxy=fwdproxy.url, verify=origin_https.ssl_context) as client:
        assert client.get("https://api.test/items").text == "GET /items\n"
    assert fwdproxy.flows.one(kind="tunnel").target == ("api.test", 443)


def test_httpx_reads_the_environment(fwdproxy: FwdProxy, origin_http: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    fwdproxy.apply_env(monkeypatch)
    with httpx.Client() as client:                      # trust_env=True by default
        assert client.get(origin_http.url("/from-env")).status_code == 200
    assert fwdproxy.flows.one().url == origin_http.url("/from-env")

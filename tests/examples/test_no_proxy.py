"""Asserting that a client honours NO_PROXY: the excluded host is reached directly, the rest via the proxy."""

from __future__ import annotations

import pytest
import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_no_proxy_is_honoured(fwdproxy: FwdProxy, origin_http: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    fwdproxy.apply_env(monkeypatch)
    fwdproxy.map_host("api.test", origin_http)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    requests.get(origin_http.url("/direct"))            # excluded: straight to the origin
    requests.get("http://api.test/proxied")             # not excluded: through the proxy
    direct, proxied = origin_http.requests
    assert direct.header("Via") is None                 # what the origin saw is the evidence
    assert proxied.header("Via") is not None
    assert [f.path for f in fwdproxy.flows.all()] == ["/proxied"]

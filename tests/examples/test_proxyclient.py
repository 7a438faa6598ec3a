"""fwdproxy's own ProxyClient through the fixture: plain HTTP, HTTPS, and a typed error for a refused tunnel."""

from __future__ import annotations

import pytest

from proxy import ClientError, ProxyClient
from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_proxyclient(fwdproxy: FwdProxy, origin_http: Origin, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    with ProxyClient(fwdproxy.url, ca_file=origin_https.ca_file) as client:
        assert client.get(origin_http.url("/a")).status == 200
        assert client.get("https://api.test/b").body == b"GET /b\n"
    assert [f.kind for f in fwdproxy.flows.all()] == ["http", "tunnel"]


def test_proxyclient_reports_a_refused_connect(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.refuse_connect("api.test", status=403)
    with ProxyClient(fwdproxy.url, ca_file=origin_https.ca_file) as client, pytest.raises(ClientError) as err:
        client.get("https://api.test/")
    assert err.value.status == 403  # type: ignore[attr-defined]  # a ProxyError, which has one

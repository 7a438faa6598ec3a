"""requests through the fwdproxy fixture: HTTPS to a named host (served locally), plain HTTP with bodies."""

from __future__ import annotations

import pytest
import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_client_uses_proxy(fwdproxy: FwdProxy, origin_https: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    fwdproxy.map_host("api.test", origin_https)        # api.test is the local origin: no DNS
    monkeypatch.setenv("HTTPS_PROXY", fwdproxy.url)    # or: fwdproxy.apply_env(monkeypatch)
    resp = requests.get("https://api.test/items", verify=origin_https.ca_file)
    assert resp.status_code == 200
    flow = fwdproxy.flows.one(host="api.test")         # exactly one; a helpful error otherwise
    assert flow.kind == "tunnel" and flow.target == ("api.test", 443)


def test_plain_http_records_headers_and_bodies(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    origin_http.respond(201, b'{"id": 7}', {"Content-Type": "application/json"})
    resp = requests.post(origin_http.url("/items"), json={"name": "x"}, proxies={"http": fwdproxy.url})
    assert resp.json() == {"id": 7}
    flow = fwdproxy.flows.one(method="POST", path="/items")
    assert flow.status == 201 and flow.request_body == b'{"name": "x"}'
    assert ("Content-Type", "application/json") in flow.response_headers
    assert flow.response_body == b'{"id": 7}' and flow.bytes_down == 9

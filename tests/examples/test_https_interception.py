"""HTTPS seen from inside: intercept for one test, answer an API call with a 503, read what was sent."""

from collections.abc import Callable

import pytest
import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin


def fetch_items(session: requests.Session) -> list[str] | None:
    """The code under test: None when the API is unavailable."""
    resp = session.get("https://api.test/items", timeout=10)
    return None if resp.status_code == 503 else list(resp.json())


def test_an_https_api_answering_503(fwdproxy: FwdProxy, origin_https: Origin,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.intercept("api.test")                     # this test only, a throwaway CA
    fwdproxy.apply_env(monkeypatch)                    # HTTPS_PROXY and REQUESTS_CA_BUNDLE, among others
    fwdproxy.respond(503, b"down for maintenance", host="api.test", path="/items")
    with requests.Session() as session:
        assert fetch_items(session) is None
    flow = fwdproxy.flows.one(path="/items")
    assert flow.url == "https://api.test/items" and flow.status == 503 and origin_https.requests == []


def test_what_the_client_sent_over_https(fwdproxy: FwdProxy, origin_https: Origin) -> None:
    fwdproxy.map_host("api.test", origin_https)
    fwdproxy.intercept()
    requests.post("https://api.test/login", json={"user": "ann"}, proxies={"https": fwdproxy.url},
                  verify=fwdproxy.ca_file, timeout=10)
    flow = fwdproxy.flows.one(method="POST", path="/login")
    assert flow.request_body == b'{"user": "ann"}' and flow.intercepted


def test_a_factory_proxy_intercepting_from_the_start(fwdproxy_factory: Callable[..., FwdProxy],
                                                      origin_https: Origin) -> None:
    proxy = fwdproxy_factory(intercept=True, intercept_hosts=("api.test",))
    proxy.map_host("api.test", origin_https)
    resp = requests.get("https://api.test/x", proxies={"https": proxy.url}, verify=proxy.ca_file, timeout=10)
    assert resp.status_code == 200 and proxy.flows.one(path="/x").intercepted

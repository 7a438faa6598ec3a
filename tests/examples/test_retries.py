"""A client's retry behaviour under fwdproxy.fail(): every attempt is a flow, and the rule counts its hits."""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_retries_on_503(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fault = fwdproxy.fail(status=503, path="/flaky")
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=Retry(total=2, status_forcelist=[503], backoff_factor=0)))
        with pytest.raises(requests.exceptions.RetryError):
            session.get(origin_http.url("/flaky"), proxies={"http": fwdproxy.url})
    assert fault.hits == 3                              # the first try and two retries
    assert [f.status for f in fwdproxy.flows.filter(path="/flaky")] == [503, 503, 503]
    assert origin_http.requests == []


def test_no_retry_for_a_post(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.fail(status=503)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=Retry(total=2, status_forcelist=[503])))
        resp = session.post(origin_http.url("/orders"), data=b"{}", proxies={"http": fwdproxy.url})
    assert resp.status_code == 503                      # urllib3 retries only idempotent methods
    assert len(fwdproxy.flows.all()) == 1


def test_fail_twice_then_succeed(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    rule = fwdproxy.fail(503, path="/api/*", times=2)   # the first two requests fail, then it steps aside
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=Retry(total=3, status_forcelist=[503], backoff_factor=0)))
        resp = session.get(origin_http.url("/api/items"), proxies={"http": fwdproxy.url})
    assert resp.status_code == 200 and rule.hits == 2
    fwdproxy.flows.assert_called(method="GET", path="/api/items", times=3)
    fwdproxy.assert_all_rules_used()                    # or: @pytest.mark.fwdproxy_all_rules_used

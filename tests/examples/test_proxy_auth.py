"""Proxy authentication: a proxy of its own with credentials, or require_auth on the shared one."""

from __future__ import annotations

from collections.abc import Callable

import requests

from proxy.testing.pytest_plugin import FwdProxy, Origin


def test_client_sends_proxy_credentials(fwdproxy_factory: Callable[..., FwdProxy], origin_http: Origin) -> None:
    proxy = fwdproxy_factory(auth=(("alice", "s3cret"),))
    with_creds = proxy.url.replace("http://", "http://alice:s3cret@")
    assert requests.get(origin_http.url("/"), proxies={"http": with_creds}).status_code == 200
    assert requests.get(origin_http.url("/"), proxies={"http": proxy.url}).status_code == 407  # control
    sent = proxy.flows.one(status=200)
    assert ("Proxy-Authorization", "Basic [redacted]") in sent.request_headers


def test_require_auth_on_the_shared_proxy(fwdproxy: FwdProxy, origin_http: Origin) -> None:
    fwdproxy.require_auth("bob", "pw")
    resp = requests.get(origin_http.url("/"), proxies={"http": fwdproxy.url})
    assert resp.status_code == 407 and resp.headers["Proxy-Authenticate"].startswith("Basic")

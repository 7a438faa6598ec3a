"""ProxyClient through a third-party proxy, tinyproxy, installed with apt-get when missing."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from client_fixtures import *  # noqa: F403
from client_fixtures import add_redirects
from servers import OriginServer

from proxy.client import ProxyClient, ProxyError


def test_http_and_https_through_tinyproxy(tinyproxy: Any, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    tp = tinyproxy()
    with ProxyClient(tp.url, ca_file=ca_file) as client:
        plain = client.post(origin.url("/echo?x=1"), body=b"hello")
        secure = client.get(tls_origin.url("/echo"))
    assert plain.json()["target"] == "/echo?x=1" and plain.json()["body"] == "hello"
    assert origin.received[-1].header("Via") is not None  # tinyproxy forwarded it
    assert secure.json()["target"] == "/echo" and tls_origin.received[-1].header("Via") is None


def test_redirect_from_http_to_https_through_tinyproxy(tinyproxy: Any, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    tp = tinyproxy()
    add_redirects(origin)
    start = origin.url(f"/redirect?status=302&to={quote(tls_origin.url('/echo'), safe='')}")
    with ProxyClient(tp.url, ca_file=ca_file) as client:
        resp = client.post(start, body=b"form")
    assert resp.url == tls_origin.url("/echo") and resp.json()["method"] == "GET"
    assert [h.status for h in resp.history] == [302]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_tinyproxy_basic_auth(tinyproxy: Any, origin: OriginServer, tls_origin: OriginServer, ca_file: str, scheme: Any) -> None:
    tp = tinyproxy(auth="user:pass")
    target = (origin if scheme == "http" else tls_origin).url("/echo")
    with ProxyClient(tp.url, ca_file=ca_file) as client, pytest.raises(ProxyError) as info:
        client.get(target)
    assert info.value.status == 407
    assert "basic" in (info.value.header("Proxy-Authenticate") or "").lower()
    with ProxyClient(tp.url.replace("//", "//user:pass@"), ca_file=ca_file) as client:
        assert client.get(target).status == 200
    # Wrong credentials: tinyproxy 1.11 answers 401 rather than 407. To a CONNECT that is
    # still a refusal by the proxy; to a forwarded request it is just a response.
    with ProxyClient(tp.url.replace("//", "//user:wrong@"), ca_file=ca_file) as client:
        if scheme == "https":
            with pytest.raises(ProxyError) as info:
                client.get(target)
            assert info.value.status in (401, 407)
        else:
            assert client.get(target).status in (401, 407)
    assert all(r.header("Proxy-Authorization") is None for r in (origin.received + tls_origin.received))

"""Redirects end to end (RFC 9110 section 15.4) through our proxy: a test per rule, failing if it breaks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from servers import OriginServer, Received

from proxy.testing.origins import OriginConnection

if TYPE_CHECKING:
    from conftest import RunningProxy

import http.cookiejar
import io
from urllib.parse import quote

from client_fixtures import *  # noqa: F403
from client_fixtures import SpyProxy, add_redirects

from proxy.client import ProxyClient, RedirectError, TooManyRedirects


def redirect(origin: OriginServer, location: str | None, status: int = 302) -> str:
    add_redirects(origin)
    to = f"&to={quote(location, safe='')}" if location is not None else ""
    return origin.url(f"/redirect?status={status}{to}")


def via_proxy(received: Any) -> bool:
    return any("fwdproxy" in v for v in received.all("Via"))


# -- method and body, for every status -------------------------------------------------------


def expected(status: int, method: str) -> tuple[str, bool]:
    """The rules as the issue states them, independent of the implementation."""
    if status in (301, 302):
        return ("GET", False) if method == "POST" else (method, True)
    if status == 303:
        return ("HEAD", False) if method == "HEAD" else ("GET", False)
    return method, True


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE"])
def test_every_status_and_method(proxy: RunningProxy, origin: OriginServer, status: Any, method: Any) -> None:
    body = b"payload" if method in ("POST", "PUT") else None
    headers = {"Content-Type": "text/plain", "Content-Language": "en"} if body else {}
    with ProxyClient(proxy.url) as client:
        resp = client.request(method, redirect(origin, "/echo", status), body=body, headers=headers)
    first, second = origin.received
    want_method, keep = expected(status, method)
    assert (first.method, first.body) == (method, body or b"")
    assert (second.method, second.target) == (want_method, "/echo")
    if body and keep:
        assert second.body == body
        assert second.header("Content-Length") == str(len(body))
        assert second.header("Content-Type") == "text/plain"
    else:
        assert second.body == b""
        for name in ("Content-Length", "Content-Type", "Content-Language", "Transfer-Encoding"):
            assert second.header(name) is None, name
    assert resp.status == 200 and [h.status for h in resp.history] == [status]
    assert resp.history[0].method == method and resp.method == want_method


def test_seekable_file_body_is_rewound_for_307(proxy: RunningProxy, origin: OriginServer) -> None:
    data = io.BytesIO(b"skipTHE BODY")
    data.seek(4)  # the body starts where the caller's file position was
    with ProxyClient(proxy.url) as client:
        client.post(redirect(origin, "/echo", 307), body=data)
    assert [r.body for r in origin.received] == [b"THE BODY", b"THE BODY"]


def test_unreplayable_body_on_308_is_an_error_not_an_empty_body(proxy: RunningProxy, origin: OriginServer) -> None:
    with ProxyClient(proxy.url) as client, pytest.raises(RedirectError, match="cannot repeat") as info:
        client.post(redirect(origin, "/echo", 308), body=iter([b"one ", b"shot"]))
    assert [r.body for r in origin.received] == [b"one shot"]  # and nothing was sent again
    assert info.value.response is not None and info.value.response.status == 308


def test_unreplayable_body_is_fine_when_the_redirect_drops_it(proxy: RunningProxy, origin: OriginServer) -> None:
    with ProxyClient(proxy.url) as client:
        resp = client.post(redirect(origin, "/echo", 303), body=iter([b"x"]))
    assert resp.status == 200 and origin.received[-1].method == "GET"


# -- Location -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "location"), [
    ("relative", "echo?r=1"),
    ("absolute-path", "/echo?a=1"),
    ("absolute", "http://127.0.0.1:{port}/echo?u=1"),
    ("scheme-relative", "//127.0.0.1:{port}/echo?s=1"),
])
def test_location_forms(proxy: RunningProxy, origin: OriginServer, form: Any, location: Any) -> None:
    with ProxyClient(proxy.url) as client:
        resp = client.get(redirect(origin, location.format(port=origin.port)))
    query = location.split("?")[1]
    assert origin.received[-1].target == f"/echo?{query}"
    assert resp.url == origin.url(f"/echo?{query}")


def test_fragment_is_inherited_unless_location_has_its_own(proxy: RunningProxy, origin: OriginServer) -> None:
    with ProxyClient(proxy.url) as client:
        inherited = client.get(redirect(origin, "/echo") + "#section")
        own = client.get(redirect(origin, "/echo#other") + "#section")
    assert inherited.url == origin.url("/echo#section")  # RFC 9110 section 10.2.2
    assert own.url == origin.url("/echo#other")
    assert all("#" not in r.target for r in origin.received)  # fragments never go on the wire


@pytest.mark.parametrize("location", [None, "http://[::1", "http://127.0.0.1:99999/"])
def test_missing_or_unparsable_location_returns_the_3xx(proxy: RunningProxy, origin: OriginServer, location: Any) -> None:
    with ProxyClient(proxy.url) as client:
        resp = client.get(redirect(origin, location, 301))
    assert (resp.status, resp.body, resp.history) == (301, b"moved", [])
    assert len(origin.received) == 1


def test_follow_redirects_false_returns_the_3xx(proxy: RunningProxy, origin: OriginServer) -> None:
    with ProxyClient(proxy.url, follow_redirects=False) as client:
        assert client.get(redirect(origin, "/echo")).status == 302
    with ProxyClient(proxy.url) as client:
        assert client.get(redirect(origin, "/echo"), follow_redirects=False).status == 302
    assert len(origin.received) == 2


# -- crossing origins ------------------------------------------------------------------------------

SECRETS = {"Authorization": "Bearer t0k", "Cookie": "session=s3cret", "X-Custom": "kept"}


def test_cross_origin_redirect_strips_credentials(proxy: RunningProxy, origin: OriginServer) -> None:
    with OriginServer() as other, ProxyClient(proxy.url) as client:
        client.get(redirect(origin, other.url("/echo")), headers=SECRETS)
        got = other.received[-1]
    assert origin.received[-1].header("Authorization") == "Bearer t0k"  # sent to the first origin
    assert got.header("Authorization") is None and got.header("Cookie") is None
    assert got.header("X-Custom") == "kept"


@pytest.mark.parametrize("target", ["http://localhost:{port}/echo", "/echo"])
def test_same_port_other_host_strips_but_same_origin_keeps(proxy: RunningProxy, origin: OriginServer, target: Any) -> None:
    with ProxyClient(proxy.url) as client:
        client.get(redirect(origin, target.format(port=origin.port)), headers=SECRETS)
    got = origin.received[-1]
    same_origin = target == "/echo"
    assert (got.header("Authorization") == "Bearer t0k") is same_origin
    assert (got.header("Cookie") == "session=s3cret") is same_origin


def test_cross_origin_redirect_strips_proxy_authorization(origin: OriginServer) -> None:
    # A fake forward proxy (an origin answering absolute-form requests) shows what reaches a proxy.
    def as_proxy(h: OriginConnection, r: Received) -> None:
        location = "http://b.test/end" if r.target == "http://a.test/cross" else "http://a.test/end"
        if r.target.endswith("/end"):
            h.send_raw_head(200, [("Content-Length", "0")])
        else:
            h.send_raw_head(302, [("Location", location), ("Content-Length", "0")])

    origin.routes["/http:"] = as_proxy
    headers = {"Proxy-Authorization": "Basic cHJveHk=", "Authorization": "Bearer t0k"}
    with ProxyClient(f"http://{origin.authority}") as client:
        client.get("http://a.test/same", headers=headers)
        client.get("http://a.test/cross", headers=headers)
    _, same_end, cross, cross_end = origin.received
    assert same_end.header("Proxy-Authorization") == "Basic cHJveHk="
    assert same_end.header("Authorization") == "Bearer t0k"
    assert cross.header("Proxy-Authorization") == "Basic cHJveHk="
    assert cross_end.target == "http://b.test/end"
    assert cross_end.header("Proxy-Authorization") is None and cross_end.header("Authorization") is None


def test_https_to_http_is_refused_unless_allowed(proxy: RunningProxy, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    add_redirects(tls_origin)
    start = tls_origin.url(f"/redirect?status=302&to={quote(origin.url('/echo'), safe='')}")
    with ProxyClient(proxy.url, ca_file=ca_file) as client, pytest.raises(RedirectError) as info:
        client.get(start)
    assert info.value.response is not None
    assert "https to http" in str(info.value) and info.value.response.status == 302
    assert origin.received == []
    with ProxyClient(proxy.url, ca_file=ca_file, allow_downgrade=True) as client:
        assert client.get(start).status == 200
    assert origin.received[-1].target == "/echo"


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/file", "file:///etc/passwd", "javascript:alert(1)"])
def test_redirect_to_a_non_http_scheme_is_refused(proxy: RunningProxy, origin: OriginServer, location: Any) -> None:
    with ProxyClient(proxy.url) as client, pytest.raises(RedirectError, match="non-HTTP"):
        client.get(redirect(origin, location))


# -- each hop takes its own route ------------------------------------------------------------------


def test_http_to_https_redirect_opens_a_tunnel(spy_proxy: SpyProxy, origin: OriginServer, tls_origin: OriginServer, ca_file: str) -> None:
    with ProxyClient(spy_proxy.url, ca_file=ca_file) as client:
        resp = client.post(redirect(origin, tls_origin.url("/echo"), 303), body=b"x")
    assert resp.url == tls_origin.url("/echo") and resp.history[0].status == 303
    assert spy_proxy.dialled == [("127.0.0.1", origin.port), ("127.0.0.1", tls_origin.port)]
    assert via_proxy(origin.received[-1]) and not via_proxy(tls_origin.received[-1])


def test_redirect_to_a_no_proxy_host_goes_direct(proxy: RunningProxy, origin: OriginServer) -> None:
    with OriginServer() as other, ProxyClient(proxy.url, no_proxy="localhost") as client:
        client.get(redirect(origin, f"http://localhost:{other.port}/echo"))
        assert via_proxy(origin.received[-1])
        assert not via_proxy(other.received[-1])


# -- loops and limits -------------------------------------------------------------------------------


def test_redirect_to_itself_is_a_loop(proxy: RunningProxy, origin: OriginServer) -> None:
    def to_self(h: OriginConnection, r: Received) -> None:
        h.send_raw_head(302, [("Location", "/self"), ("Content-Length", "0")])

    origin.routes["/self"] = to_self
    with ProxyClient(proxy.url) as client, pytest.raises(TooManyRedirects, match="loop") as info:
        client.get(origin.url("/self"))
    assert [h.url for h in info.value.history] == [origin.url("/self")]
    assert len(origin.received) == 1


def test_a_to_b_to_a_is_a_loop(proxy: RunningProxy, origin: OriginServer) -> None:
    for here, there in (("/ping", "/pong"), ("/pong", "/ping")):
        def bounce(h: OriginConnection, r: Received, there: str = there) -> None:
            h.send_raw_head(302, [("Location", there), ("Content-Length", "0")])
        origin.routes[here] = bounce
    with ProxyClient(proxy.url) as client, pytest.raises(TooManyRedirects, match="loop") as info:
        client.get(origin.url("/ping"))
    assert len(info.value.history) == 2


def test_same_url_after_a_new_cookie_is_not_a_loop(proxy: RunningProxy, origin: OriginServer) -> None:
    def login(h: OriginConnection, r: Received) -> None:
        if "auth=1" in (r.header("Cookie") or ""):
            h.send_raw_head(302, [("Location", "/echo"), ("Content-Length", "0")])
        else:
            h.send_raw_head(302, [("Location", "/login"), ("Set-Cookie", "auth=1; Path=/"),
                                  ("Content-Length", "0")])

    origin.routes["/login"] = login
    with ProxyClient(proxy.url, cookies=http.cookiejar.CookieJar()) as client:
        resp = client.get(origin.url("/login"))
    assert resp.status == 200 and len(resp.history) == 2
    with ProxyClient(proxy.url) as client, pytest.raises(TooManyRedirects, match="loop"):
        client.get(origin.url("/login"))  # without a jar nothing changes: a loop


@pytest.mark.parametrize(("hops", "limit", "ok"), [(3, 3, True), (4, 3, False), (1, 0, False)])
def test_max_redirects(proxy: RunningProxy, origin: OriginServer, hops: Any, limit: Any, ok: Any) -> None:
    add_redirects(origin)
    with ProxyClient(proxy.url, max_redirects=limit) as client:
        if ok:
            resp = client.get(origin.url(f"/chain/{hops}"))
            assert resp.status == 200 and len(resp.history) == hops
        else:
            with pytest.raises(TooManyRedirects, match=f"more than {limit}") as info:
                client.get(origin.url(f"/chain/{hops}"))
            assert len(info.value.history) == limit + 1
            assert info.value.history[0].url == origin.url(f"/chain/{hops}")

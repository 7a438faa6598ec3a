"""The client's pure rules, with plain values: URLs, proxy selection, NO_PROXY, redirects, retries."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest

from proxy.client.errors import (
    InvalidURL,
    ProxyError,
    RedirectError,
)
from proxy.client.rules import (
    URL,
    Mode,
    Retry,
    Router,
    bypasses_proxy,
    check_redirect,
    parse_proxy,
    parse_retry_after,
    parse_url,
    proxies_from_env,
    redirect_headers,
    redirect_method,
    resolve_location,
)

# -- URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("http://Example.COM/a?b=1#f", ("http", "example.com", 80, "/a?b=1", "f")),
    ("https://h:8443", ("https", "h", 8443, "/", "")),
    ("http://[::1]:81/x", ("http", "::1", 81, "/x", "")),
    ("http://u:p%40ss@h/", ("http", "h", 80, "/", "")),
])
def test_parse_url(url: Any, expected: Any) -> None:
    u = parse_url(url)
    assert (u.scheme, u.host, u.port, u.target, u.fragment) == expected


def test_url_forms() -> None:
    u = parse_url("http://u:p%40ss@[::1]:80/a?q#frag")
    assert u.authority == "[::1]"
    assert u.host_port == "[::1]:80"
    assert u.absolute == "http://[::1]/a?q"  # no userinfo, no fragment on the wire
    assert u.basic_auth() == "Basic dTpwQHNz"  # u:p@ss
    assert str(u) == "http://[::1]/a?q#frag"


@pytest.mark.parametrize("url", ["ftp://h/", "h/path", "http:///x", "http://h:99999/", "http://[::1/",
                                 "http://h/a b", "http://h/\r\nX-Injected: 1"])
def test_bad_urls_are_refused(url: Any) -> None:
    with pytest.raises(InvalidURL):
        parse_url(url)


def test_parse_proxy() -> None:
    assert parse_proxy("127.0.0.1:3128") == parse_proxy("http://127.0.0.1:3128")
    assert parse_proxy("http://proxy").port == 1080  # curl's default
    p = parse_proxy("http://user:p%3Ass@[::1]:8080")
    assert str(p) == "http://[::1]:8080" and "p%3Ass" not in repr(p)
    assert p.authorization == "Basic dXNlcjpwOnNz"  # user:p:ss
    for bad in ("https://p:1", "socks5://p:1", "http://:1"):
        with pytest.raises(InvalidURL):
            parse_proxy(bad)


# -- proxy selection from the environment (urllib's rules) --------------------------


def test_env_lowercase_wins_and_empty_lowercase_unsets() -> None:
    env = {"HTTP_PROXY": "http://upper:1", "http_proxy": "http://lower:1",
           "HTTPS_PROXY": "http://upper:2", "https_proxy": "", "NO_PROXY": "x"}
    assert proxies_from_env(env) == {"http": "http://lower:1", "no": "x"}


def test_env_http_proxy_ignored_under_cgi() -> None:
    # CVE-2016-1000110 (httpoxy): under CGI, HTTP_PROXY comes from a request header.
    assert "http" not in proxies_from_env({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"})
    assert proxies_from_env({"http_proxy": "http://ok:1", "REQUEST_METHOD": "GET"})["http"] == "http://ok:1"


def test_router_picks_by_scheme_and_all_proxy() -> None:
    env = {"http_proxy": "http://p1:1", "all_proxy": "http://p2:2"}
    router = Router.from_settings(None, environ=env)
    http_route = router.route(parse_url("http://t/"))
    https_route = router.route(parse_url("https://t/"))
    assert (http_route.mode, str(http_route.proxy)) == (Mode.FORWARD, "http://p1:1")
    assert (https_route.mode, str(https_route.proxy)) == (Mode.TUNNEL, "http://p2:2")
    assert Router.from_settings(None, environ=None).route(parse_url("http://t/")).mode is Mode.DIRECT
    assert Router.from_settings(None, environ={}).route(parse_url("http://t/")).mode is Mode.DIRECT


def test_router_explicit_proxy_beats_env_and_tunnel_http() -> None:
    env = {"http_proxy": "http://envproxy:1"}
    router = Router.from_settings("http://mine:3", environ=env, tunnel_http=True)
    route = router.route(parse_url("http://t/"))
    assert (route.mode, str(route.proxy)) == (Mode.TUNNEL, "http://mine:3")
    assert Router.from_settings("", environ=env).route(parse_url("http://t/")).mode is Mode.DIRECT


def test_router_no_proxy_from_env_applies_to_an_explicit_proxy_too() -> None:
    router = Router.from_settings("http://mine:3", environ={"no_proxy": "internal"})
    assert router.route(parse_url("http://api.internal/")).mode is Mode.DIRECT
    assert router.route(parse_url("http://external/")).mode is Mode.FORWARD
    # An explicit no_proxy argument replaces the environment's.
    router = Router.from_settings("http://mine:3", environ={"no_proxy": "internal"}, no_proxy="other")
    assert router.route(parse_url("http://api.internal/")).mode is Mode.FORWARD


# -- NO_PROXY (curl's rules) ----------------------------------------------------------


@pytest.mark.parametrize(("host", "port", "no_proxy", "bypass"), [
    ("example.com", 80, "example.com", True),
    ("www.example.com", 80, "example.com", True),
    ("www.example.com", 80, ".example.com", True),
    ("example.com", 80, ".example.com", True),
    ("notexample.com", 80, "example.com", False),
    ("example.com.", 80, "EXAMPLE.com", True),
    ("example.org", 80, "example.com, example.org", True),
    ("example.org", 80, "example.com example.org", True),
    ("anything", 1, "*", True),
    ("anything", 1, "*.anything.else", False),
    ("example.com", 8080, "example.com:8080", True),
    ("example.com", 80, "example.com:8080", False),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("192.168.1.1", 80, "192.168.1.1", True),
    ("192.168.1.1", 443, "192.168.1.1:80", False),
    ("::1", 80, "::1", True),
    ("::1", 80, "[::1]:80", True),
    ("::1", 81, "[::1]:80", False),
    ("fe80::1", 80, "fe80::/10", True),
    ("127.0.0.1", 80, "localhost", False),  # no DNS: a name never matches an address
    ("localhost", 80, "127.0.0.1", False),
    ("localhost", 80, "", False),
])
def test_no_proxy(host: Any, port: Any, no_proxy: Any, bypass: Any) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


# -- redirects --------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "method", "expected"), [
    (301, "POST", ("GET", False)), (302, "POST", ("GET", False)),
    (301, "PUT", ("PUT", True)), (302, "DELETE", ("DELETE", True)), (301, "GET", ("GET", True)),
    (303, "POST", ("GET", False)), (303, "PUT", ("GET", False)), (303, "DELETE", ("GET", False)),
    (303, "HEAD", ("HEAD", False)),
    (307, "POST", ("POST", True)), (308, "POST", ("POST", True)), (307, "PUT", ("PUT", True)),
    (308, "PATCH", ("PATCH", True)),
])
def test_redirect_method(status: Any, method: Any, expected: Any) -> None:
    assert redirect_method(status, method) == expected


BASE = parse_url("http://a.test:8080/dir/page?q=1#top")


@pytest.mark.parametrize(("location", "expected"), [
    ("other", "http://a.test:8080/dir/other#top"),
    ("/abs", "http://a.test:8080/abs#top"),
    ("?x=2", "http://a.test:8080/dir/page?x=2#top"),
    ("//b.test/p", "http://b.test/p#top"),
    ("https://b.test/p#own", "https://b.test/p#own"),
    ("https://b.test/p#", "https://b.test/p"),  # an empty fragment of its own is still its own
    ("/caf\u00e9 x", "http://a.test:8080/caf%E9%20x#top"),
])
def test_resolve_location(location: Any, expected: Any) -> None:
    resolved = resolve_location(BASE, location)
    assert resolved is not None and str(resolved) == expected


@pytest.mark.parametrize("location", [None, "", "  ", "http://[::1/", "http://h:99999/"])
def test_unusable_location_means_no_redirect(location: Any) -> None:
    assert resolve_location(BASE, location) is None


@pytest.mark.parametrize("location", ["ftp://h/file", "javascript:alert(1)", "file:///etc/passwd"])
def test_non_http_location_is_refused(location: Any) -> None:
    with pytest.raises(RedirectError, match="non-HTTP"):
        resolve_location(BASE, location)


def test_downgrade_check() -> None:
    https, http = parse_url("https://h/"), parse_url("http://h/")
    with pytest.raises(RedirectError, match="allow_downgrade"):
        check_redirect(https, http, allow_downgrade=False)
    check_redirect(https, http, allow_downgrade=True)
    check_redirect(http, https, allow_downgrade=False)


FIELDS = [("Authorization", "Basic x"), ("Cookie", "a=1"), ("Proxy-Authorization", "Basic y"),
          ("Host", "h"), ("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("X-Keep", "1")]


def names(fields: Any) -> Any:
    return [n for n, _ in fields]


def test_redirect_headers_same_origin_keeps_credentials() -> None:
    same = parse_url("http://a.test:8080/elsewhere")
    assert redirect_headers(FIELDS, BASE, same, keep_body=True) == FIELDS
    assert names(redirect_headers(FIELDS, BASE, same, keep_body=False)) == [
        "Authorization", "Cookie", "Proxy-Authorization", "Host", "X-Keep"]


@pytest.mark.parametrize("other", ["http://b.test:8080/", "http://a.test:8081/", "https://a.test:8080/"])
def test_redirect_headers_cross_origin_drops_credentials(other: Any) -> None:
    kept = redirect_headers(FIELDS, BASE, parse_url(other), keep_body=True)
    assert names(kept) == ["Content-Type", "Content-Encoding", "X-Keep"]


def test_proxy_error_reads_proxy_status() -> None:
    exc = ProxyError("x", status=502, reason="Bad Gateway",
                     headers=[("Proxy-Status", 'fwdproxy; error=connection_refused; details="x"')])
    assert exc.kind == "connection_refused" and exc.header("proxy-status")


def test_url_equality_is_by_value() -> None:
    assert parse_url("http://h/") == URL("http", "h", 80, "/")


# -- retries ----------------------------------------------------------------------------


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    retry = Retry(backoff=1.0, max_backoff=5.0)
    for attempt, step in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 5.0)]:
        delays = {retry.delay(attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jitter


def test_retry_after() -> None:
    retry = Retry(backoff=1.0, max_backoff=60)
    assert retry.delay(0, "7") == 7
    assert retry.delay(0, "600") == 60  # capped
    assert Retry(respect_retry_after=False, backoff=0.1).delay(0, "7") <= 0.1
    assert 0.5 <= retry.delay(0, "soon") <= 1.0  # unparsable: ordinary backoff
    later = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(later, now=1_000_000) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True), now=1_000_000) == 0

"""Routing decisions, rule parsing and matching on plain values; the PAC file through a real PAC engine."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from typing import Any

import pacparser  # type: ignore[import-untyped]
import pytest
from conftest import RunningProxy
from wire import exchange

from proxy.config import ConfigError
from proxy.server.pac import pac_file
from proxy.server.rewrite import RuleError, edit_fields, parse_rule, plan, remote_path, tunnel_block
from proxy.server.routing import Parent, Router, parse_bypass, parse_parent, parse_route_rule, route

PARENT = Parent("proxy.corp", 3128)


# -- the parent URL ------------------------------------------------------------------------

def test_parent_url_with_encoded_credentials() -> None:
    parent = parse_parent("http://al%40ice:p%3Ass@Proxy.Corp:3128/")
    assert (parent.host, parent.port, parent.user, parent.password) == ("proxy.corp", 3128, "al@ice", "p:ss")
    assert parent.authorization == "Basic YWxAaWNlOnA6c3M="
    assert "p:ss" not in repr(parent) and str(parent) == "parent proxy proxy.corp:3128"
    assert parse_parent("http://[::1]:8080").authority == "[::1]:8080"
    assert parse_parent("http://h:1").authorization is None


@pytest.mark.parametrize("url", ["https://h:1", "socks5://h:1", "h:3128", "http://h", "http://h:0",
                                 "http://h:x", "http://:1", "http://u@h:1", "http://:p@h:1",
                                 "http://h:1/path", "http://[::1:1"])
def test_bad_parent_urls_say_why(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_parent(url)
    assert "upstream proxy" in str(info.value)


def test_a_bad_parent_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_parent("http://user:s3cret@host")
    assert "s3cret" not in str(info.value) and "user:***@host" in str(info.value)


# -- the routing decision -------------------------------------------------------------------

@pytest.mark.parametrize("host, port, direct", [
    ("example.com", 80, False),
    ("localhost", 8080, True),
    ("corp.example", 443, True),            # ".corp.example" matches the domain itself
    ("a.b.corp.example", 443, True),
    ("xcorp.example", 443, False),          # not a subdomain
    ("10.1.2.3", 80, True),                 # CIDR
    ("11.1.2.3", 80, False),
    ("::ffff:10.0.0.1", 80, True),          # IPv4-mapped counts as IPv4
    ("::1", 80, True),
    ("api.test", 8443, True),               # host:port entry
    ("api.test", 443, False),
    ("wild.test", 1, True),                 # *.wild.test also covers wild.test, as curl reads it
])
def test_bypass_entries_as_no_proxy_reads_them(host: str, port: int, direct: bool) -> None:
    bypass = parse_bypass("localhost, .corp.example,10.0.0.0/8 ,[::1],api.test:8443,*.wild.test")
    decision = route(host, port, PARENT, bypass)
    assert (decision.parent is None) is direct
    assert str(decision) == ("direct" if direct else "via parent proxy proxy.corp:3128")


def test_guard_clauses_say_why() -> None:
    assert route("a.test", 80, None).reason == "no upstream proxy configured"
    assert route("a.test", 80, PARENT, parse_bypass("*")).reason == "a.test matches bypass entry *"
    assert route("A.Test.", 80, PARENT, parse_bypass("a.test")).parent is None  # case and trailing dot
    assert Router.from_settings(None).parent_for("a.test", 80) is None
    assert Router.from_settings("http://p:1", ["x.test"]).parent_for("a.test", 80) == Parent("p", 1)


@pytest.mark.parametrize("host, port, via", [
    ("api.test", 443, "p2"),            # the first route that matches wins
    ("x.internal", 80, "p2"),
    ("10.1.2.3", 80, None),             # a route to direct
    ("localhost", 80, None),            # then the bypass list
    ("example.test", 80, "proxy.corp"),  # then the default parent
])
def test_per_host_routes_come_first(host: str, port: int, via: str | None) -> None:
    router = Router.from_settings("http://proxy.corp:3128", ["localhost"],
                                  ["api.test,.internal=http://u:s3cret@p2:3128", "10.0.0.0/8=direct",
                                   "api.test=http://never:1"])
    parent = router.parent_for(host, port)
    assert (parent.host if parent else None) == via
    assert [p.host for p in router.parents] == ["proxy.corp", "p2", "never"]
    assert "s3cret" not in router.route("api.test", 443).reason


def test_routes_without_a_default_parent() -> None:
    router = Router.from_settings(None, (), ["*.corp.test=http://p:1"])
    assert router.parent_for("a.corp.test", 80) == Parent("p", 1)
    assert router.parent_for("example.test", 80) is None
    assert router.parent_at("p", 1) == Parent("p", 1) and router.parent_at("p", 2) is None


@pytest.mark.parametrize("text", ["a.test", "=direct", "a.test=", "a.test=ftp://p:1", "a b=direct",
                                  "a.test=http://u@p:1"])
def test_bad_routes_say_why(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_route_rule(text)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "a b", "[::1]:x", "host:99999", "*.", "a/b"])
def test_bad_bypass_entries(entry: str) -> None:
    with pytest.raises(ConfigError):
        parse_bypass(entry)


# -- rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("glob, url, hit", [
    ("http://api.test/v1/*", ("http", "api.test", 80, "/v1/users?x=1"), True),
    ("http://api.test/v1/*", ("https", "api.test", 443, "/v1/users"), False),
    ("*://api.test/v1/*", ("https", "api.test", 8443, "/v1/users"), True),
    ("api.test", ("https", "api.test", 443, "/anything"), True),
    ("*.api.test", ("http", "api.test", 80, "/"), False),
    ("*.api.test", ("http", "eu.API.test", 80, "/"), True),
    ("http://api.test:8080/*", ("http", "api.test", 80, "/"), False),
    ("http://api.test:8080/*", ("http", "api.test", 8080, "/x"), True),
    ("http://[::1]:8080/x", ("http", "::1", 8080, "/x"), True),
    ("*/search[=]q", ("http", "a.test", 80, "/search=q"), True),
])
def test_url_globs_match_like_fault_matchers(glob: str, url: str, hit: bool) -> None:
    assert parse_rule("block", glob).glob.matches(*url) is hit


def test_map_remote_paths() -> None:
    rule = parse_rule("map-remote", "https://api.example.com/v1/*=http://127.0.0.1:3000/")
    assert rule.origin is not None and str(rule.origin) == "http://127.0.0.1:3000"
    assert remote_path(rule, "/v1/users?x=1") == "/users?x=1"
    assert remote_path(rule, "/v1/") == "/"
    no_path = parse_rule("map-remote", "http://a.test=http://b.test:81")
    assert remote_path(no_path, "/keep/this?q") == "/keep/this?q"
    prefixed = parse_rule("map-remote", "http://a.test/old*=http://b.test/new")
    assert remote_path(prefixed, "/old?q=1") == "/new?q=1" and remote_path(prefixed, "/old/x") == "/new/x"


def test_plan_order_first_answer_wins_and_header_rules_add_up() -> None:
    rules = [parse_rule("set-header", "*=X-A: 1"), parse_rule("map-remote", "*=http://b.test"),
             parse_rule("map-remote", "*=http://c.test"), parse_rule("set-header", "response:*=X-B: 2"),
             parse_rule("remove-header", "*=X-A")]
    steps = plan(rules, "http", "a.test", 80, "/")
    assert steps.answer is None and steps.remote is rules[1]
    assert steps.request_edits == [("X-A", "1"), ("X-A", None)] and steps.response_edits == [("X-B", "2")]
    assert steps.fired == [str(r) for r in (rules[0], rules[1], rules[3], rules[4])]
    blocked = plan([*rules, parse_rule("block", "a.test=410")], "http", "a.test", 80, "/")
    assert blocked.answer is not None and blocked.answer.status == 410
    assert blocked.fired == ["block a.test=410"]  # nothing else happened to it


def test_header_edits_replace_every_field_of_that_name() -> None:
    fields = [("Set-Cookie", "a"), ("X", "1"), ("set-cookie", "b")]
    assert edit_fields(fields, [("Set-Cookie", "c")]) == [("X", "1"), ("Set-Cookie", "c")]
    assert edit_fields(fields, [("SET-COOKIE", None)]) == [("X", "1")]


def test_only_pathless_block_rules_refuse_tunnels() -> None:
    rules = [parse_rule("block", "*/ads/*"), parse_rule("block", "http://*.t.test"),
             parse_rule("block", "*.t.test:443")]
    assert tunnel_block(rules, "x.t.test", 443) is rules[2]
    assert tunnel_block(rules, "x.t.test", 8443) is None


def test_rule_errors_name_the_rule() -> None:
    with pytest.raises(RuleError, match=r"rule --set-header 'response:\*=X-A: a\\x01': .*control"):
        parse_rule("set-header", "response:*=X-A: a\x01")
    with pytest.raises(RuleError, match="unknown rule kind"):
        parse_rule("rewrite", "*")


# -- the PAC file -----------------------------------------------------------------------------

@pytest.fixture
def pac_engine() -> Iterator[Any]:
    """pacparser: Mozilla's JavaScript engine with the PAC helper functions, as browsers run PAC."""
    pacparser.init()
    yield pacparser
    pacparser.cleanup()


@pytest.mark.parametrize("url, host, expected", [
    ("http://example.test/", "example.test", "PROXY 127.0.0.1:8080"),
    ("https://example.test/", "example.test", "PROXY 127.0.0.1:8080"),
    ("http://localhost:3000/", "localhost", "DIRECT"),
    ("http://a.corp.test/", "a.corp.test", "DIRECT"),
    ("http://xcorp.test/", "xcorp.test", "PROXY 127.0.0.1:8080"),
    ("http://10.9.8.7/", "10.9.8.7", "DIRECT"),
    ("http://11.9.8.7/", "11.9.8.7", "PROXY 127.0.0.1:8080"),
    ("https://api.test:8443/x", "api.test", "DIRECT"),
    ("https://api.test/x", "api.test", "PROXY 127.0.0.1:8080"),
    ("http://[::1]:8000/", "::1", "DIRECT"),
])
def test_pac_file_in_a_pac_engine(pac_engine: Any, url: str, host: str, expected: str) -> None:
    bypass = parse_bypass("localhost,.corp.test,10.0.0.0/8,::1,api.test:8443")
    pac_engine.parse_pac_string(pac_file("127.0.0.1:8080", bypass))
    assert pac_engine.find_proxy(url, host) == expected


def test_pac_file_follows_per_host_routes(pac_engine: Any) -> None:
    router = Router.from_settings("http://p:1", ["*.local.test"],
                                  ["10.0.0.0/8=direct", "api.local.test=http://p2:1"])
    pac_engine.parse_pac_string(pac_file("127.0.0.1:8080", router.bypass, router.rules))
    assert pac_engine.find_proxy("http://10.1.1.1/", "10.1.1.1") == "DIRECT"
    assert pac_engine.find_proxy("http://api.local.test/", "api.local.test") == "PROXY 127.0.0.1:8080"
    assert pac_engine.find_proxy("http://x.local.test/", "x.local.test") == "DIRECT"
    assert pac_engine.find_proxy("http://example.test/", "example.test") == "PROXY 127.0.0.1:8080"


def test_proxy_pac_is_served_on_the_proxy_port(proxy_factory: Callable[..., RunningProxy], pac_engine: Any) -> None:
    proxy = proxy_factory(upstream_proxy="http://127.0.0.1:9", upstream_bypass=("*.local.test",))
    conn = http.client.HTTPConnection(*proxy.address, timeout=10)
    conn.request("GET", "/proxy.pac")
    resp = conn.getresponse()
    script = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/x-ns-proxy-autoconfig"
    pac_engine.parse_pac_string(script)
    assert pac_engine.find_proxy("http://a.test/", "a.test") == f"PROXY 127.0.0.1:{proxy.server.port}"
    assert pac_engine.find_proxy("http://x.local.test/", "x.local.test") == "DIRECT"


@pytest.mark.parametrize("host, named", [
    ("localhost:{port}", "localhost:{port}"),
    ("[::1]:{port}", "[::1]:{port}"),
    ("proxy.lan", "proxy.lan:{port}"),
    ('evil");alert(1);//', "127.0.0.1:{port}"),  # not an authority: our own address instead
])
def test_proxy_pac_names_the_proxy_as_the_client_reached_it(proxy: RunningProxy, pac_engine: Any, host: str, named: str) -> None:
    host = host.format(port=proxy.server.port)
    raw = exchange(proxy.address, f"GET /proxy.pac HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    pac_engine.parse_pac_string(raw.partition(b"\r\n\r\n")[2].decode())
    assert pac_engine.find_proxy("http://a.test/", "a.test") == "PROXY " + named.format(port=proxy.server.port)


def test_proxy_pac_is_refused_to_clients_that_may_not_use_the_proxy(proxy_factory: Callable[..., RunningProxy]) -> None:
    from proxy.config import parse_networks

    proxy = proxy_factory(allow_from=parse_networks("10.0.0.0/8"))
    raw = exchange(proxy.address, b"GET /proxy.pac HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 403")

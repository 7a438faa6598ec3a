"""Request targets (RFC 9112 section 3.2), as plain values."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.http1.errors import BadRequest
from proxy.http1.target import Origin, parse_absolute, parse_authority


@pytest.mark.parametrize("target,origin,path", [
    ("http://example.test/a/b?c=d", Origin("http", "example.test", 80), "/a/b?c=d"),
    ("HTTP://Example.TEST:8080", Origin("http", "example.test", 8080), "/"),
    ("http://example.test?q", Origin("http", "example.test", 80), "/?q"),
    ("http://example.test:/x", Origin("http", "example.test", 80), "/x"),
    ("http://user:pw@example.test/x", Origin("http", "example.test", 80), "/x"),
    ("http://example.test/x#frag", Origin("http", "example.test", 80), "/x"),
    ("http://[::1]:8080/%7e%2F", Origin("http", "::1", 8080), "/%7e%2F"),
    ("http://[0:0::1]/", Origin("http", "::1", 80), "/"),
    ("http://127.0.0.1:1/", Origin("http", "127.0.0.1", 1), "/"),
    ("http://under_score.test/", Origin("http", "under_score.test", 80), "/"),
])
def test_absolute_form(target: Any, origin: Origin, path: Any) -> None:
    assert parse_absolute(target) == (origin, path)


def test_options_with_empty_path_is_asterisk() -> None:
    assert parse_absolute("http://example.test", "OPTIONS")[1] == "*"
    assert parse_absolute("http://example.test/", "OPTIONS")[1] == "/"


def test_https_absolute_form_is_an_https_origin_on_443() -> None:
    assert parse_absolute("https://Example.test/a?b") == (Origin("https", "example.test", 443), "/a?b")
    assert str(parse_absolute("https://example.test:8443/")[0]) == "https://example.test:8443"


@pytest.mark.parametrize("target,reason", [
    ("ftp://example.test/", "unsupported scheme"),
    ("file:///etc/passwd", "unsupported scheme"),
    ("gopher://example.test/", "unsupported scheme"),
    ("example.test/path", "not an absolute URL"),
    ("http:///path", "empty host"),
    ("http://exa%6dple.test/", "invalid host"),
    ("http://example.test:0/", "invalid port"),
    ("http://example.test:65536/", "invalid port"),
    ("http://example.test:+80/", "invalid port"),
    ("http://example.test:8o/", "invalid port"),
    ("http://[::1/", "malformed IPv6"),
    ("http://[::g]/", "invalid IPv6"),
    ("http://[::1]x/", "malformed IPv6"),
    ("http://a..b/", "invalid host"),
    ("http://a@b@example.test/x", "before '@'"),
    ("http://example.test\\@evil.test/", "before '@'"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://" + "a" * 254 + "/", "invalid host"),
])
def test_bad_absolute_targets(target: Any, reason: Any) -> None:
    with pytest.raises(BadRequest, match=reason) as info:
        parse_absolute(target)
    assert info.value.status == 400


@pytest.mark.parametrize("target,expected", [
    ("example.test:443", ("example.test", 443)),
    ("[::1]:8443", ("::1", 8443)),
    ("::1:8443", ("::1", 8443)),  # Python 3.11 set_tunnel()
    ("10.0.0.1:22", ("10.0.0.1", 22)),
])
def test_authority_form(target: Any, expected: Any) -> None:
    assert parse_authority(target) == expected


@pytest.mark.parametrize("target", ["example.test", "example.test:", ":443", "u@example.test:443",
                                    "example.test:443/x", "[::1]", "::1", "example.test:443:1"])
def test_bad_authorities(target: Any) -> None:
    with pytest.raises(BadRequest):
        parse_authority(target)


def test_origin_authority_leaves_out_default_ports() -> None:
    assert Origin("http", "example.test", 80).authority == "example.test"
    assert Origin("http", "::1", 8080).authority == "[::1]:8080"
    assert str(Origin("http", "::1", 80)) == "http://[::1]"

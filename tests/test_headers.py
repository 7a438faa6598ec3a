"""Head parsing and header hygiene (RFC 9110 section 5, 7.6; RFC 9112 sections 2-6), as plain values."""

from __future__ import annotations

import io
from typing import Any

import pytest

from proxy.http1.chunked import encode_chunk, read_chunked
from proxy.http1.errors import BadRequest
from proxy.http1.headers import (
    Headers,
    Limits,
    end_to_end,
    keep_alive,
    parse_request_line,
    read_fields,
    request_body_length,
)


def fields(raw: bytes, limits: Limits | None = None) -> Headers:
    return read_fields(io.BytesIO(raw).readline, limits or Limits())


@pytest.mark.parametrize("line,expected", [
    (b"GET http://a/ HTTP/1.1\r\n", ("GET", "http://a/", "HTTP/1.1")),
    (b"CONNECT a:443 HTTP/1.0\r\n", ("CONNECT", "a:443", "HTTP/1.0")),
    (b"M-SEARCH * HTTP/1.1\r\n", ("M-SEARCH", "*", "HTTP/1.1")),
])
def test_request_line(line: Any, expected: Any) -> None:
    parsed = parse_request_line(line)
    assert (parsed.method, parsed.target, parsed.version) == expected


@pytest.mark.parametrize("line,status", [
    (b"GET http://a/ HTTP/1.1\n", 400),          # bare LF
    (b"GET  http://a/ HTTP/1.1\r\n", 400),       # double space
    (b"GET http://a/\r\n", 400),                 # HTTP/0.9
    (b"GET http://a/ HTTP/2.0\r\n", 505),
    (b"GET http://a/ http/1.1\r\n", 400),
    (b"G(T http://a/ HTTP/1.1\r\n", 400),
    (b"GET http://a/\x00 HTTP/1.1\r\n", 400),
    (b"GET http://a/\xff HTTP/1.1\r\n", 400),
    (b"GET http://a/" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),
])
def test_bad_request_lines(line: Any, status: Any) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_line(line)
    assert info.value.status == status


def test_fields_keep_order_duplicates_and_case() -> None:
    h = fields(b"Host: a\r\nX-A: 1\r\nx-b:2\r\nX-A:  3 \r\n\r\n")
    assert list(h) == [("Host", "a"), ("X-A", "1"), ("x-b", "2"), ("X-A", "3")]
    assert h.get_all("x-a") == ["1", "3"] and h.get("X-B") == "2" and "host" in h


@pytest.mark.parametrize("raw", [
    b"X: a\r\n b\r\n\r\n",           # obs-fold
    b"X : a\r\n\r\n",                # space before colon
    b"X\t: a\r\n\r\n",
    b"X a\r\n\r\n",                  # no colon
    b": a\r\n\r\n",                  # empty name
    b"X: a\rb\r\n\r\n",              # bare CR in value
    b"X: a\x00b\r\n\r\n",            # NUL
    b"X: a\x7f\r\n\r\n",
    b"X: a\nY: b\r\n\r\n",           # bare LF
    b"X: a\r\n",                     # head never ends
])
def test_malformed_fields_are_refused(raw: Any) -> None:
    with pytest.raises(BadRequest) as info:
        fields(raw)
    assert info.value.status == 400


def test_header_limits_are_431() -> None:
    with pytest.raises(BadRequest) as info:
        fields(b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n")
    assert info.value.status == 431
    with pytest.raises(BadRequest) as info:
        fields(b"X: " + b"a" * 70000 + b"\r\n\r\n")
    assert info.value.status == 431


@pytest.mark.parametrize("raw,length", [
    (b"Content-Length: 5\r\n", 5),
    (b"Content-Length: 5, 5\r\nContent-Length: 5\r\n", 5),
    (b"", 0),
    (b"Transfer-Encoding: chunked\r\n", None),
    (b"Transfer-Encoding: CHUNKED\r\n", None),
])
def test_body_length(raw: Any, length: Any) -> None:
    assert request_body_length(fields(raw + b"\r\n")) == length


@pytest.mark.parametrize("raw,status", [
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
    (b"Content-Length: 5, 6\r\n", 400),
    (b"Content-Length: +5\r\n", 400),
    (b"Content-Length: 0x5\r\n", 400),
    (b"Content-Length: \r\n", 400),
    (b"Content-Length: 99999999999999999999\r\n", 400),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Transfer-Encoding: chunked, identity\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Transfer-Encoding: xchunked\r\n", 400),
    (b"Transfer-Encoding: chunked;q=1\r\n", 400),
    (b"Transfer-Encoding: identity\r\n", 400),
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
])
def test_ambiguous_framing_is_refused(raw: Any, status: Any) -> None:
    with pytest.raises(BadRequest) as info:
        request_body_length(fields(raw + b"\r\n"))
    assert info.value.status == status


def test_end_to_end_drops_hop_by_hop_and_connection_named_fields() -> None:
    h = fields(b"Connection: close, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
               b"Proxy-Authorization: x\r\nUpgrade: ws\r\nX-Bar: 2\r\nContent-Length: 0\r\n\r\n")
    assert end_to_end(h, ["content-length"]) == [("X-Bar", "2")]


@pytest.mark.parametrize("version,raw,expected", [
    ("HTTP/1.1", b"", True),
    ("HTTP/1.1", b"Connection: close\r\n", False),
    ("HTTP/1.1", b"Connection: Keep-Alive, CLOSE\r\n", False),
    ("HTTP/1.0", b"", False),
    ("HTTP/1.0", b"Connection: keep-alive\r\n", True),
    ("HTTP/1.0", b"Proxy-Connection: keep-alive\r\n", True),
])
def test_keep_alive(version: Any, raw: Any, expected: Any) -> None:
    assert keep_alive(version, fields(raw + b"\r\n")) is expected


def chunked(raw: bytes) -> bytes:
    f = io.BufferedReader(io.BytesIO(raw))
    return b"".join(read_chunked(f.readline, f.read1, f.read))


def test_chunked_round_trip_and_extensions() -> None:
    body = encode_chunk(b"hello") + encode_chunk(b" world") + b"0\r\nX-Trailer: 1\r\n\r\n"
    assert chunked(body) == b"hello world"
    assert chunked(b"5;name=value;q=\"a b\"\r\nhello\r\n0 ; ext\r\n\r\n") == b"hello"
    assert chunked(b"A\r\n0123456789\r\n0\r\n\r\n") == b"0123456789"


@pytest.mark.parametrize("raw", [
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"g\r\n",
    b"10000000000000000\r\n",            # 17 hex digits: overflow
    b"5\nhello\r\n0\r\n\r\n",            # bare LF
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",     # bare CR in an extension
    b"5\r\nhelloXX0\r\n\r\n",            # data not followed by CRLF
    b"5\r\nhel",                          # ends inside a chunk
    b"5\r\nhello\r\n",                    # no last chunk
])
def test_bad_chunked_bodies(raw: Any) -> None:
    with pytest.raises(BadRequest):
        chunked(raw)

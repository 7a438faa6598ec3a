"""RFC rules a proxy must follow beyond framing, each test named after its rule.

Max-Forwards (RFC 9110 section 7.6.2), Date on forwarded responses (section
6.6.1), no persistent connection with an HTTP/1.0 client (RFC 9112 section
9.3), trailer fields passed on (RFC 9112 section 7.1.2). Each against a real
loopback origin, with a control that shows the rule is what made the difference.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

import pytest
from wire import exchange, read_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import RunningProxy
    from servers import OriginServer, RawOrigin


def raw(proxy: RunningProxy, request: bytes) -> bytes:
    return exchange(proxy.address, request)


# -- RFC 9110 section 7.6.2: Max-Forwards --------------------------------------------------------

def test_rfc9110_7_6_2_options_with_max_forwards_zero_is_answered_by_the_proxy(proxy: RunningProxy, origin: OriginServer) -> None:
    response = raw(proxy, f"OPTIONS {origin.url('/x')} HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n"
                          "Connection: close\r\n\r\n".encode())
    head = response.partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 200 ")
    assert "\r\nAllow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT" in head
    assert origin.received == []  # the proxy was the final recipient


def test_rfc9110_7_6_2_trace_with_max_forwards_zero_echoes_the_request(proxy: RunningProxy, origin: OriginServer) -> None:
    request = (f"TRACE {origin.url('/t')} HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nX-Probe: 1\r\n"
               "Cookie: secret=1\r\nConnection: close\r\n\r\n")
    response = raw(proxy, request.encode())
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Type: message/http\r\n" in head
    assert body.startswith(f"TRACE {origin.url('/t')} HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n".encode())
    assert b"X-Probe: 1\r\n" in body and b"secret" not in body  # section 9.3.8: no credentials echoed
    assert origin.received == []


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
def test_rfc9110_7_6_2_max_forwards_above_zero_is_decremented(proxy: RunningProxy, origin: OriginServer, method: str) -> None:
    response = raw(proxy, f"{method} {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\n"
                          "Connection: close\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 200 ")
    assert origin.received[-1].all("Max-Forwards") == ["4"]


def test_rfc9110_7_6_2_max_forwards_applies_only_to_options_and_trace(proxy: RunningProxy, origin: OriginServer) -> None:
    raw(proxy, f"GET {origin.url('/echo')} HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n"
               "Connection: close\r\n\r\n".encode())
    assert origin.received[-1].all("Max-Forwards") == ["0"]  # forwarded, untouched


def test_rfc9110_7_6_2_malformed_max_forwards_is_a_400(proxy: RunningProxy, origin: OriginServer) -> None:
    response = raw(proxy, f"TRACE {origin.url('/')} HTTP/1.1\r\nHost: x\r\nMax-Forwards: -1\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 400 ") and b"Max-Forwards" in response
    assert origin.received == []


# -- RFC 9110 section 6.6.1: Date -----------------------------------------------------------------

def test_rfc9110_6_6_1_date_is_added_to_a_forwarded_response_without_one(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    dateless = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = raw(proxy, f"GET http://{dateless.authority}/ HTTP/1.1\r\nHost: x\r\n"
                          "Connection: close\r\n\r\n".encode())
    head = response.partition(b"\r\n\r\n")[0].decode()
    dates = [line for line in head.split("\r\n") if line.lower().startswith("date:")]
    assert len(dates) == 1 and dates[0].endswith(" GMT")


def test_rfc9110_6_6_1_an_origin_date_is_kept_as_sent(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    dated = raw_origin(b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                       b"Content-Length: 2\r\n\r\nok")
    response = raw(proxy, f"GET http://{dated.authority}/ HTTP/1.1\r\nHost: x\r\n"
                          "Connection: close\r\n\r\n".encode())
    head = response.partition(b"\r\n\r\n")[0].decode()
    assert [line for line in head.split("\r\n") if line.lower().startswith("date:")] == [
        "Date: Sun, 06 Nov 1994 08:49:37 GMT"]


# -- RFC 9112 section 9.3: persistence ------------------------------------------------------------

def test_rfc9112_9_3_no_persistent_connection_with_an_http10_client(proxy: RunningProxy, origin: OriginServer) -> None:
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"GET {origin.url('/bytes/7')} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        resp, body = read_response(sock)
        assert body == b"0123456" and resp.getheader("Connection") != "keep-alive"
        assert sock.recv(1) == b""  # the proxy closed, though the client asked to keep it


def test_rfc9112_9_3_an_http11_client_keeps_its_connection(proxy: RunningProxy, origin: OriginServer) -> None:
    """Control: the same exchange over HTTP/1.1 stays open for a second request."""
    with socket.create_connection(proxy.address, timeout=10) as sock:
        for _ in range(2):
            sock.sendall(f"GET {origin.url('/bytes/7')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            _resp, body = read_response(sock)
            assert body == b"0123456"


# -- RFC 9112 section 7.1.2: trailers ------------------------------------------------------------

def test_rfc9112_7_1_2_trailer_fields_reach_an_http11_client(proxy: RunningProxy, origin: OriginServer) -> None:
    response = raw(proxy, f"GET {origin.url('/chunked/3000')} HTTP/1.1\r\nHost: x\r\n"
                          "Connection: close\r\n\r\n".encode())
    head = response.partition(b"\r\n\r\n")[0]
    assert b"\r\nTransfer-Encoding: chunked" in head and b"\r\nTrailer: X-Sum" in head
    assert response.endswith(b"\r\n0\r\nX-Sum: 1\r\n\r\n")
    assert proxy.wait_flows(1)[0].response_trailers == [("X-Sum", "1")]


def test_rfc9112_7_1_2_fields_not_allowed_in_a_trailer_are_dropped(proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    chunked = raw_origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nok\r\n0\r\nContent-Length: 99\r\nX-Check: abc\r\nConnection: close\r\n\r\n")
    response = raw(proxy, f"GET http://{chunked.authority}/ HTTP/1.1\r\nHost: x\r\n"
                          "Connection: close\r\n\r\n".encode())
    assert response.endswith(b"\r\n2\r\nok\r\n0\r\nX-Check: abc\r\n\r\n")


def test_rfc9112_7_1_2_an_http10_client_gets_the_body_without_trailers(proxy: RunningProxy, origin: OriginServer) -> None:
    """Control: no chunked coding for HTTP/1.0, so nowhere to put trailers."""
    response = raw(proxy, f"GET {origin.url('/chunked/3000')} HTTP/1.0\r\n\r\n".encode())
    body = response.partition(b"\r\n\r\n")[2]
    assert len(body) == 3000 and b"X-Sum" not in response


# -- RFC 9112 section 9.6: a lingering close after an early response ---------------------------

def test_rfc9112_9_6_a_client_still_uploading_after_an_early_refusal_is_not_reset(
        proxy: RunningProxy, raw_origin: Callable[..., RawOrigin]) -> None:
    # The origin refuses the upload at its head; the proxy relays the 413 and closes while
    # the client is still sending. Closing with its bytes unread answers the client's next
    # write with a reset (curl: "Send failure: Broken pipe", and no status shown).
    origin = raw_origin(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    size = 12 << 20  # more than socket buffers hold, less than the proxy drains
    errors: list[OSError] = []
    with socket.create_connection(proxy.address, timeout=10) as sock:
        def upload() -> None:
            try:
                sock.sendall(f"PUT http://{origin.authority}/up HTTP/1.1\r\nHost: x\r\n"
                             f"Content-Length: {size}\r\n\r\n".encode())
                for _ in range(size // 65536):
                    sock.sendall(b"x" * 65536)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=upload)
        sender.start()
        response = b""
        while piece := sock.recv(65536):  # the whole response, then the proxy's FIN
            response += piece
        sender.join(10)
    assert response.startswith(b"HTTP/1.1 413 ") and errors == []
    # Negative control: the next client is served.
    assert raw(proxy, f"GET http://{origin.authority}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
               .encode()).startswith(b"HTTP/1.1 413")


# -- RFC 9110 section 10.1.1: Expect: 100-continue is the origin's to answer --------------------

@pytest.mark.parametrize("refusal", [b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n",
                                     b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nwho?"])
def test_rfc9110_10_1_1_an_origin_refusing_before_the_body_is_heard_first(
        proxy: RunningProxy, raw_origin: Callable[..., RawOrigin], refusal: bytes) -> None:
    # The proxy passes Expect on and lets the origin speak first: its refusal reaches the
    # client instead of a 100 of the proxy's own that would have the client send the body
    # (a big upload, for nothing) to an origin that already said no.
    origin = raw_origin(refusal, then="hang")
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"PUT http://{origin.authority}/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        resp, body = read_response(sock)
    assert (resp.status, body) == (int(refusal[9:12]), refusal.partition(b"\r\n\r\n")[2])
    assert resp.getheader("Connection") == "close"  # its body unread, the connection cannot carry another
    assert b"expect: 100-continue" in origin.received[0].lower()
    assert proxy.wait_flows(1)[0].bytes_up == 0

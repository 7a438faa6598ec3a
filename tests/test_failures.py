"""The one map from a failure at the next hop to what the client is told, and the one head writer.

End-to-end tests (test_errors.py, test_forward.py) drive most rows through
real sockets; this table pins every row, including TLS, which no forward path
uses yet.
"""

from __future__ import annotations

import http.client
import socket
import ssl

import pytest

from proxy.http1 import responses
from proxy.http1.errors import AuthRequired, BadRequest, ProxyError
from proxy.server.failures import Closed, Step, switch_failure, upstream_failure

W = "api.test:8080"


def tls_error() -> ssl.SSLError:
    """A real handshake failure: the answer to our ClientHello is plain HTTP, not TLS."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="api.test")
    incoming.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        tls.do_handshake()
    except ssl.SSLError as exc:
        return exc
    raise AssertionError("the handshake took plain HTTP for TLS")


def cert_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


@pytest.mark.parametrize(("step", "exc", "kw", "status", "kind", "reason"), [
    (Step.CONNECT, socket.gaierror(-2, "Name or service not known"), {}, 502, "dns_error",
     f"cannot resolve {W}: Name or service not known"),
    (Step.CONNECT, TimeoutError(), {}, 504, "connection_timeout", f"timed out connecting to {W}"),
    (Step.CONNECT, ConnectionRefusedError(111, "Connection refused"), {}, 502, "connection_refused",
     f"connection refused by {W}"),
    (Step.CONNECT, OSError(113, "No route to host"), {}, 502, "destination_unavailable",
     f"cannot connect to {W}: No route to host"),
    (Step.CONNECT, cert_error(), {}, 502, "tls_certificate_error",
     f"{W} presented a certificate that does not verify: self-signed certificate"),
    (Step.CONNECT, tls_error(), {}, 502, "tls_protocol_error", f"TLS with {W} failed: WRONG_VERSION_NUMBER"),
    (Step.SEND, OSError(32, "Broken pipe"), {}, 502, "connection_terminated",
     f"cannot send to {W}: [Errno 32] Broken pipe"),
    (Step.SEND, ValueError("Invalid header value"), {}, 400, "http_request_error",
     "request cannot be forwarded: Invalid header value"),
    (Step.UPLOAD, OSError(), {"timed_out": True}, 504, "connection_write_timeout",
     f"{W} stopped reading the request body"),
    (Step.RESPONSE, OSError(), {"timed_out": True, "waited": 2.5}, 504, "http_response_timeout",
     f"no response from {W} within 2.5s"),
    (Step.RESPONSE, Closed(), {}, 502, "connection_terminated", f"{W} closed the connection without a response"),
    (Step.RESPONSE, http.client.RemoteDisconnected("gone"), {}, 502, "connection_terminated",
     f"{W} closed the connection without a response"),
    (Step.RESPONSE, OSError("broken"), {}, 502, "connection_terminated", f"reading from {W} failed: broken"),
    (Step.RESPONSE, http.client.BadStatusLine("nonsense"), {}, 502, "http_protocol_error",
     f"malformed response from {W}: BadStatusLine"),
    (Step.BODY, OSError(), {"timed_out": True}, 504, "connection_read_timeout", f"{W} stalled mid-body"),
    (Step.BODY, None, {"short": (3, 10)}, 502, "http_response_incomplete", f"{W} sent 3 of 10 body bytes"),
    (Step.BODY, ConnectionResetError(), {}, 502, "http_response_incomplete", f"{W} broke off the response body"),
])
def test_each_failure_has_one_answer(step: Step, exc: BaseException | None, kw: dict[str, object],
                                     status: int, kind: str, reason: str) -> None:
    error = upstream_failure(step, W, exc, **kw)  # type: ignore[arg-type]
    assert (error.status, error.kind, error.reason) == (status, kind, reason)


def test_a_timeout_wins_over_what_the_cut_socket_raised() -> None:
    # The watchdog cuts a socket with shutdown(): the read then fails as a reset or an EOF.
    error = upstream_failure(Step.RESPONSE, W, ConnectionResetError(), timed_out=True, waited=1)
    assert error.status == 504


def test_an_error_response_is_one_line_with_proxy_status() -> None:
    data = responses.error(BadRequest('bad "target"\r\nX-Injected: 1'), "fwdproxy-abc123")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 400 Bad Request",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: 37",
        b"Cache-Control: no-store",
        b'Proxy-Status: fwdproxy-abc123; error=http_request_error; details="bad \\"target\\" X-Injected: 1"',
        b"Connection: close",
    ]
    assert body == b'fwdproxy: bad "target" X-Injected: 1\n'


def test_an_error_keeps_its_own_fields_before_proxy_status() -> None:
    head = responses.error(AuthRequired("proxy authentication required"), "p", head_only=True)
    assert b'Proxy-Authenticate: Basic realm="fwdproxy"\r\nProxy-Status: p; error=http_request_denied' in head
    assert head.endswith(b"Connection: close\r\n\r\n")  # no body after a HEAD


def test_a_reason_outside_latin1_still_gets_an_answer() -> None:
    data = responses.error(ProxyError("no route to bücher.例"), "p")
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b'details="no route to b\xfccher.?"' in data
    assert data.endswith("fwdproxy: no route to bücher.例\n".encode())


def test_a_relayed_head_keeps_the_origin_reason_and_field_order() -> None:
    assert responses.head(299, [("B", "2"), ("a", "1")], "Fine") == b"HTTP/1.1 299 Fine\r\nB: 2\r\na: 1\r\n\r\n"
    assert responses.head(299, []) == b"HTTP/1.1 299 \r\n\r\n"  # unregistered: empty phrase


def test_a_tls_handshake_that_fails_says_so() -> None:
    timed_out = upstream_failure(Step.HANDSHAKE, W, OSError(), timed_out=True, waited=3)
    assert (timed_out.status, timed_out.reason) == (504, f"TLS handshake with {W} not completed within 3s")
    refused = upstream_failure(Step.HANDSHAKE, W, tls_error())
    assert (refused.status, refused.kind) == (502, "tls_protocol_error")
    hung_up = upstream_failure(Step.HANDSHAKE, W, ConnectionResetError(104, "reset"))
    assert hung_up.reason == f"TLS with {W} failed: the connection ended: [Errno 104] reset"


def test_a_switch_nobody_asked_for_is_a_502() -> None:
    assert switch_failure(W, offered=False).reason == f"{W} switched protocols unasked"
    assert switch_failure(W, offered=True).kind == "http_upgrade_failed"


def test_the_busy_answer_is_written_by_the_one_writer() -> None:
    from proxy.server.listener import _busy_response
    assert _busy_response("p") == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
        b'Proxy-Status: p; error=proxy_internal_error; details="too many client connections"\r\n'
        b"Content-Length: 53\r\n\r\nfwdproxy: too many client connections; retry shortly\n")

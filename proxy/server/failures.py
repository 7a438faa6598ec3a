"""What a failure at the next hop means to the client: the one map to status, reason and Proxy-Status.

Every failure talking to an origin -- its name does not resolve, it refuses,
it times out, TLS with it fails, it breaks off, or it answers with something
malformed -- becomes a ProxyError here and nowhere else: 502 or 504, a
one-line reason naming the hop, and the RFC 9209 error type (section 2.3)
that the handler writes as ``Proxy-Status``. Callers say which step failed,
with the exception it raised and whether the watchdog had cut the socket.

Failures after the response head went out cannot become an error page; the
forward step aborts the client connection instead (see ``forward.py``).
"""

from __future__ import annotations

import enum
import http.client
import socket
import ssl

from ..http1.errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout


class Step(enum.Enum):
    """Where in an exchange with the next hop a failure happened."""

    CONNECT = "connect"  # opening the connection (resolving the name, TCP)
    HANDSHAKE = "handshake"  # TLS with an https origin
    SEND = "send"  # writing the request head, and a body held whole
    UPLOAD = "upload"  # streaming the request body
    RESPONSE = "response"  # waiting for the response head
    BODY = "body"  # reading a response body held whole before its head is sent

    def __repr__(self) -> str:
        return self.name


class Closed(Exception):
    """The connection ended before the origin sent a byte of a response (a reused one went stale)."""


def upstream_failure(step: Step, where: str, exc: BaseException | None = None, *,
                     timed_out: bool = False, waited: float = 0.0,
                     short: tuple[int, int] | None = None) -> ProxyError:
    """The error to answer with when ``step`` failed at ``where`` (host[:port]).

    ``timed_out``: the watchdog cut the socket, whatever exception that caused;
    ``waited``: the timeout that passed, in seconds.
    ``short``: a body ended early, as (bytes received, bytes announced).
    """
    if step is Step.CONNECT:
        return _connect_failure(exc, where)
    timeout = timed_out or isinstance(exc, TimeoutError)
    if step is Step.HANDSHAKE:
        if timeout:
            return UpstreamTimeout(f"TLS handshake with {where} not completed within {waited:g}s",
                                   kind="connection_timeout")
        if not isinstance(exc, ssl.SSLError):  # the origin hung up mid-handshake
            return UpstreamError(f"TLS with {where} failed: the connection ended: {exc}",
                                 kind="tls_protocol_error")
        return _connect_failure(exc, where)
    if step is Step.SEND:
        if isinstance(exc, (http.client.HTTPException, ValueError)):  # our serializer refused the head
            return BadRequest(f"request cannot be forwarded: {exc}")
        return UpstreamError(f"cannot send to {where}: {exc}", kind="connection_terminated")
    if step is Step.UPLOAD:
        return UpstreamTimeout(f"{where} stopped reading the request body", kind="connection_write_timeout")
    if step is Step.RESPONSE:
        if timeout:
            return UpstreamTimeout(f"no response from {where} within {waited:g}s",
                                   kind="http_response_timeout")
        if isinstance(exc, (Closed, http.client.RemoteDisconnected, ConnectionResetError)):
            return UpstreamError(f"{where} closed the connection without a response",
                                 kind="connection_terminated")
        if isinstance(exc, OSError):
            return UpstreamError(f"reading from {where} failed: {exc}", kind="connection_terminated")
        return UpstreamError(f"malformed response from {where}: {type(exc).__name__}",
                             kind="http_protocol_error")
    if timeout:
        return UpstreamTimeout(f"{where} stalled mid-body", kind="connection_read_timeout")
    if short is not None:
        return UpstreamError(f"{where} sent {short[0]} of {short[1]} body bytes",
                             kind="http_response_incomplete")
    return UpstreamError(f"{where} broke off the response body", kind="http_response_incomplete")


def switch_failure(where: str, *, offered: bool) -> ProxyError:
    """A 101 that cannot be relayed: to a protocol the client did not offer, or with no Upgrade sent."""
    if offered:
        return UpstreamError(f"{where} switched to a protocol that was not offered",
                             kind="http_upgrade_failed")
    return UpstreamError(f"{where} switched protocols unasked", kind="http_upgrade_failed")


def _connect_failure(exc: BaseException | None, where: str) -> ProxyError:
    # ssl.SSLError is an OSError: TLS is told apart first.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamError(f"{where} presented a certificate that does not verify: {exc.verify_message}",
                             kind="tls_certificate_error")
    if isinstance(exc, ssl.SSLError):
        return UpstreamError(f"TLS with {where} failed: {getattr(exc, 'reason', None) or exc}",
                             kind="tls_protocol_error")
    if isinstance(exc, socket.gaierror):
        return UpstreamError(f"cannot resolve {where}: {exc.strerror}", kind="dns_error")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"timed out connecting to {where}", kind="connection_timeout")
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamError(f"connection refused by {where}", kind="connection_refused")
    strerror = exc.strerror if isinstance(exc, OSError) else None
    return UpstreamError(f"cannot connect to {where}: {strerror or exc}", kind="destination_unavailable")

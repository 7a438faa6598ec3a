"""The proxy's errors: each carries the HTTP status to answer with and a one-line reason.

Low-level failures (socket errors, http.client exceptions) are translated into
these where they happen, with ``raise ... from`` (failures at the next hop by
``proxy.server.failures``), so the handler only ever has to turn a ProxyError
into a response (``responses.error``). ``kind`` is the RFC 9209 Proxy-Status
error type, so a client (or a test) can tell a refused connection from a DNS
failure without parsing prose.
"""

from __future__ import annotations

REALM = "fwdproxy"  # of the Proxy-Authenticate challenge


class ProxyError(Exception):
    """A failure the proxy answers with an HTTP error status."""

    status = 500
    kind = "proxy_internal_error"

    def __init__(self, reason: str, *, status: int | None = None, kind: str | None = None,
                 headers: tuple[tuple[str, str], ...] = (), next_hop: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers  # extra response fields, e.g. Proxy-Authenticate or Retry-After
        self.next_hop = next_hop  # RFC 9209 next-hop: the parent proxy a failure happened at
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} {self.kind}: {self.reason}>"


class BadRequest(ProxyError):
    """The client's message is malformed or unusable (400, or 414/431/501/505)."""

    status = 400
    kind = "http_request_error"


class UpstreamError(ProxyError):
    """The next hop could not be reached or sent something unusable (502)."""

    status = 502
    kind = "destination_unavailable"


class UpstreamTimeout(ProxyError):
    """The next hop did not connect or answer in time (504)."""

    status = 504
    kind = "connection_timeout"


class Forbidden(ProxyError):
    """The client, or the target, is not allowed by this proxy's rules (403)."""

    status = 403
    kind = "http_request_denied"


class AuthRequired(ProxyError):
    """Missing or wrong proxy credentials (407, with the challenge to answer)."""

    status = 407
    kind = "http_request_denied"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers=(("Proxy-Authenticate", f'Basic realm="{REALM}"'),))


class LoopDetected(ProxyError):
    """The request would come back to this proxy (508)."""

    status = 508
    kind = "proxy_loop_detected"


class Abort(Exception):
    """Nothing more can be said to the client: its connection must just be closed.

    Raised when the client has gone away, or when a response broke off after
    its head was sent (the truncation must show as a closed connection).
    """

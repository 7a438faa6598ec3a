"""The client's errors: every one is a ClientError, each layer raises the one that says what failed.

A ProxyError carries the proxy's refusal (status, reason, fields, the RFC 9209
error type); a RedirectError the responses that led to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .response import Response


class ClientError(Exception):
    """Base of every error ProxyClient raises."""


class InvalidURL(ClientError, ValueError):
    """A target or proxy URL the client cannot use."""


class ConnectError(ClientError):
    """The proxy or the target could not be reached."""


class ClientTimeout(ClientError, TimeoutError):
    """A connect, read or total deadline passed."""


class ConnectTimeout(ClientTimeout, ConnectError):
    """Connecting (TCP, CONNECT exchange or TLS handshake) took longer than the connect timeout."""


class ReadTimeout(ClientTimeout):
    """The peer sent nothing for longer than the read timeout, or the total deadline passed."""


class TLSError(ClientError):
    """The TLS handshake with the target failed (certificate not trusted, wrong host, protocol)."""


class ProtocolError(ClientError):
    """The peer broke the HTTP exchange: closed early, or sent something that is not HTTP."""


class ConnectionClosed(ProtocolError):
    """The connection closed before a response arrived; on a reused one, the server had timed it out."""


class ProxyError(ClientError):
    """The proxy refused the request: a non-2xx answer to CONNECT, or a 407.

    ``status``, ``reason`` and ``headers`` are the proxy's response;
    ``kind`` is the RFC 9209 Proxy-Status error type when the proxy sent one.
    """

    def __init__(self, message: str, *, status: int, reason: str,
                 headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = list(headers)
        self.body = body
        self.kind = _proxy_status_error(self.headers)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


class RedirectError(ClientError):
    """A redirect the client will not follow: a downgrade, a non-HTTP scheme, an unreplayable body."""

    def __init__(self, message: str, *, response: Response | None = None,
                 history: Sequence[Response] = ()) -> None:
        super().__init__(message)
        self.response = response
        self.history = list(history)


class TooManyRedirects(RedirectError):
    """More than ``max_redirects`` hops, or a loop; ``history`` holds every redirect response."""


def _proxy_status_error(headers: Iterable[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "proxy-status":
            match = re.search(r";\s*error=([A-Za-z0-9_.-]+)", value)
            if match:
                return match.group(1)
    return None

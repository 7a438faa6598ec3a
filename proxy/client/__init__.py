"""The client: ``ProxyClient`` and ``fwdproxy fetch``, HTTP/1.1 through a forward proxy.

``rules`` holds its pure decisions (URLs, routes, redirects, retries),
``errors`` what it raises, ``transport`` its sockets (dialling, CONNECT, TLS,
pooling), ``response`` what a caller gets back, ``client`` the request's life
across hops, ``fetch`` the curl-like command.

May import ``proxy.http1`` (and the wings below the server's: ``record``,
``config``, ``tls``); never ``proxy.server``, ``proxy.ui``, ``proxy.testing`` or
``proxy.cli``. ``from proxy.client import ProxyClient`` is public API.
"""

from .client import (
    ClientError,
    ClientTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    InvalidURL,
    ProtocolError,
    ProxyClient,
    ProxyError,
    ReadTimeout,
    RedirectError,
    Response,
    ResponseHeaders,
    Retry,
    Timeout,
    TLSError,
    TooManyRedirects,
    parse_retry_after,
)

__all__ = [
    "ClientError",
    "ClientTimeout",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "InvalidURL",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ReadTimeout",
    "RedirectError",
    "Response",
    "ResponseHeaders",
    "Retry",
    "TLSError",
    "Timeout",
    "TooManyRedirects",
    "parse_retry_after",
]

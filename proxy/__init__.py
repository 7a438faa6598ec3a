"""fwdproxy: a forward HTTP/1.1 proxy with CONNECT tunnelling, on the standard library.

The public names are imported on first use: the pytest plugin loads with every
test run of a project that installs fwdproxy, and should not pay for the client
(http.cookiejar, urllib.request) when a run never touches it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BadRequest": "http1.errors", "ProxyError": "http1.errors", "UpstreamError": "http1.errors",
    "UpstreamTimeout": "http1.errors", "Config": "config", "Flow": "record.flows",
    "ProxyServer": "server.listener",
    "ClientError": "client", "ProxyClient": "client", "Response": "client", "Retry": "client",
    "Timeout": "client", "TooManyRedirects": "client",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on demand
    from .client import ClientError, ProxyClient, Response, Retry, Timeout, TooManyRedirects  # noqa: F401
    from .config import Config  # noqa: F401
    from .http1.errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout  # noqa: F401
    from .record.flows import Flow  # noqa: F401
    from .server.listener import ProxyServer  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proxy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value

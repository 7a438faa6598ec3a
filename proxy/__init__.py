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
    # "X as X": an explicit re-export, which mypy --strict (no_implicit_reexport) asks of a typed package.
    from .client import ClientError as ClientError
    from .client import ProxyClient as ProxyClient
    from .client import Response as Response
    from .client import Retry as Retry
    from .client import Timeout as Timeout
    from .client import TooManyRedirects as TooManyRedirects
    from .config import Config as Config
    from .http1.errors import BadRequest as BadRequest
    from .http1.errors import ProxyError as ProxyError
    from .http1.errors import UpstreamError as UpstreamError
    from .http1.errors import UpstreamTimeout as UpstreamTimeout
    from .record.flows import Flow as Flow
    from .server.listener import ProxyServer as ProxyServer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proxy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value

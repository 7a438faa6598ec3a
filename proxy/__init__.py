"""fwdproxy: a forward HTTP/1.1 proxy with CONNECT tunnelling, on the standard library."""

__version__ = "0.1.0"

from .client import ClientError, ProxyClient, Response, Retry, Timeout, TooManyRedirects
from .config import Config
from .errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout
from .flows import Flow
from .server import ProxyServer

__all__ = [
    "BadRequest",
    "ClientError",
    "Config",
    "Flow",
    "ProxyClient",
    "ProxyError",
    "ProxyServer",
    "Response",
    "Retry",
    "Timeout",
    "TooManyRedirects",
    "UpstreamError",
    "UpstreamTimeout",
    "__version__",
]

"""fwdproxy: a forward HTTP/1.1 proxy with CONNECT tunnelling, on the standard library."""

__version__ = "0.1.0"

from .config import Config  # noqa: E402  (after __version__, which the modules read)
from .errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout  # noqa: E402
from .flows import Flow  # noqa: E402
from .server import ProxyServer  # noqa: E402
from .client import ClientError, ProxyClient, Response, Retry, Timeout, TooManyRedirects  # noqa: E402

__all__ = [
    "BadRequest",
    "ClientError",
    "Config",
    "Flow",
    "ProxyError",
    "ProxyClient",
    "ProxyServer",
    "Response",
    "Retry",
    "Timeout",
    "TooManyRedirects",
    "UpstreamError",
    "UpstreamTimeout",
    "__version__",
]

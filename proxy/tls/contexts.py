"""TLS contexts toward origins: what an intercepting or https-forwarding proxy trusts.

The proxy opens its own TLS connection to each origin and verifies it as a
browser would: the system's roots, plus any CA files given (``--upstream-ca``,
or an origin a test maps). ``--upstream-insecure`` turns verification off
entirely, for development against origins with self-made certificates.
Only HTTP/1.1 is offered (ALPN), since that is all the proxy speaks upstream.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable


class OriginTLS:
    """The one client context for every TLS connection to origins, and what it trusts."""

    def __init__(self, cafiles: Iterable[str] = (), *, insecure: bool = False) -> None:
        self.insecure = insecure
        self.context = ssl.create_default_context()
        self.context.set_alpn_protocols(["http/1.1"])
        if insecure:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self._trusted: set[str] = set()
        self._lock = threading.Lock()
        for cafile in cafiles:
            self.trust(cafile)

    def trust(self, cafile: str) -> None:
        """Also trust the CA certificates in cafile (PEM) from now on."""
        with self._lock:
            if cafile in self._trusted:
                return
            self.context.load_verify_locations(cafile)
            self._trusted.add(cafile)

    def __repr__(self) -> str:
        return f"<OriginTLS extra_cas={len(self._trusted)} insecure={self.insecure}>"

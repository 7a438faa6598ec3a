"""TLS interception on CONNECT: decide, sniff the first bytes, terminate TLS, dial origins over TLS.

With interception on for a target, the handler answers a CONNECT with 200
and lets this module look at what the client sends first. A TLS
ClientHello gets a TLS session with a leaf for the name asked for (tls/),
after which the handler runs its ordinary request loop over the decrypted
stream with ``https://`` URLs: one forwarding path for plain and
intercepted requests. Anything else, or nothing within a short wait (a
protocol where the server speaks first), is relayed blindly as before.
Origins are reached through ``UpstreamTLSConnection``, pooled like plain
connections, and their certificates are verified (tls/contexts.py).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from pathlib import Path

from ..config import Config
from ..http1.errors import Abort, BadRequest, Forbidden
from ..http1.target import Origin, parse_absolute
from ..tls.ca import LocalCA, default_ca_dir
from ..tls.contexts import OriginTLS
from ..tls.leaves import LeafMint, certificate_name
from ..tls.stream import TLSStream, looks_like_client_hello
from .connect import dial
from .failures import Step, upstream_failure
from .policy import HostRules
from .pool import UpstreamConnection
from .watchdog import Deadline

log = logging.getLogger("fwdproxy")

# How long the client may take to send its first bytes before the tunnel is
# relayed blindly (so SMTP or anything else where the server speaks first works).
FIRST_BYTES_WAIT = 1.0
_HINTED_MAX = 1024


def configured_interception(config: Config) -> Interception:
    """Interception as configured, with the CA saved in the CA folder (CAError if it is unusable)."""
    ca = LocalCA.load(Path(config.ca_dir) if config.ca_dir else default_ca_dir())
    return Interception(LeafMint(ca.ca), config.intercept_hosts, config.no_intercept_hosts,
                        first_bytes_wait=config.intercept_wait)


class Interception:
    """Which CONNECT targets are intercepted, and the leaves to present to their clients."""

    def __init__(self, mint: LeafMint, hosts: tuple[str, ...] = (), no_hosts: tuple[str, ...] = (),
                 *, first_bytes_wait: float = FIRST_BYTES_WAIT) -> None:
        self.mint = mint
        self.rules = HostRules(hosts, no_hosts)  # no-intercept wins, as deny wins over allow
        self.first_bytes_wait = first_bytes_wait
        self._hinted: set[str] = set()
        self._lock = threading.Lock()

    def wants(self, host: str) -> bool:
        try:
            self.rules.check(host)
        except Forbidden:
            return False
        return True

    def accept(self, sock: socket.socket, early: bytes, host: str, deadline: Deadline, timeout: float,
               client: str) -> TLSStream:
        """The client's TLS session, handshake done within timeout, with a leaf for its SNI (else host).

        A failed handshake raises Abort with a one-line reason (the flow's error); a client
        that refused our certificate also gets a hint in the log, once per host.
        """
        deadline.arm_write(timeout)  # the whole handshake, as for a request head (it writes too)
        stream = TLSStream(sock, self.mint.context(certificate_name(host) or host), early)
        try:
            stream.handshake()
        except (OSError, ValueError) as exc:
            reason, refused = handshake_failure(exc)
            if deadline.fired:
                reason = f"TLS handshake with the client not completed within {timeout:g}s"
            elif refused:
                self.hint_once(client, host, reason)
            raise Abort(reason) from None
        deadline.clear()
        return stream

    def hint_once(self, client: str, host: str, error: str) -> None:
        """One log line per host saying the client probably does not trust the CA."""
        with self._lock:
            if host in self._hinted or len(self._hinted) >= _HINTED_MAX:
                return
            self._hinted.add(host)
        log.warning("%s rejected fwdproxy's certificate for %s (%s): make the client trust the CA "
                    "(`fwdproxy ca env`), or relay this host blindly with --no-intercept-host %s",
                    client, host, error, host)

    def __repr__(self) -> str:
        return f"<Interception {self.rules} {self.mint!r}>"


def first_bytes(sock: socket.socket, buffered: bytes, wait: float) -> bytes:
    """What the client sends first: enough to tell a TLS record, or what came within ``wait`` seconds.

    The socket is left blocking. A ClientHello may arrive a byte at a time;
    three bytes decide.
    """
    data = buffered
    sock.settimeout(None)
    end = time.monotonic() + wait
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while len(data) < 3:
        left = end - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            break
        try:
            chunk = sock.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def is_tls(data: bytes) -> bool:
    return looks_like_client_hello(data)


def handshake_failure(exc: Exception) -> tuple[str, bool]:
    """A one-line reason for a failed client handshake, and whether the client refused our certificate."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        # The client's alert when it does not trust the issuer (RFC 8446 section 6.2).
        refused = any(word in reason.upper() for word in ("UNKNOWN_CA", "BAD_CERTIFICATE",
                                                          "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR"))
        return f"TLS handshake with the client failed: {reason}", refused
    return f"TLS handshake with the client failed: {exc}", False


def inner_target(origin: Origin, target: str, method: str) -> tuple[Origin, str]:
    """Where a request inside an intercepted tunnel goes: always the tunnel's origin."""
    if method == "CONNECT":
        raise BadRequest("CONNECT inside an intercepted tunnel")
    if (target == "*" and method == "OPTIONS") or target.startswith("/"):
        return origin, target
    asked, path = parse_absolute(target, method)
    if asked != origin:
        raise BadRequest(f"request for {asked} inside a tunnel to {origin}")
    return origin, path


class UpstreamTLSConnection(UpstreamConnection):
    """An upstream connection that speaks TLS, verified for the origin's name, with a bounded handshake."""

    def __init__(self, origin: Origin, tls: OriginTLS, **kwargs: object) -> None:
        super().__init__(origin, **kwargs)  # type: ignore[arg-type]
        self.tls = tls

    def connect(self) -> None:
        """Dial and complete the TLS handshake within connect_timeout; failures raise what to answer."""
        where = self.origin.authority
        raw = dial(self._connect_fn, self.host, self.port, self.connect_timeout, where)
        try:
            sock = self.tls.context.wrap_socket(raw, server_hostname=self.origin.host,
                                                do_handshake_on_connect=False)
        except BaseException:
            raw.close()
            raise
        self.sock = sock
        if self._watchdog is None:
            sock.settimeout(self.connect_timeout)
        else:
            sock.settimeout(None)
            self.deadline = self._watchdog.watch(sock)
            self.deadline.arm_write(self.connect_timeout)
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:
            timed_out = self.timed_out()
            self.close()
            raise upstream_failure(Step.HANDSHAKE, self.origin.authority, exc, timed_out=timed_out,
                                   waited=self.connect_timeout) from exc
        if self.deadline is not None:
            self.deadline.clear()
        else:
            sock.settimeout(self.read_timeout)


"""The routed dialler: a byte stream to a target, directly or through a CONNECT to the parent proxy.

This is the one seam for everything that needs a raw connection to a
target: CONNECT tunnels, and origin-side TLS connections (which wrap what
this returns). It asks the router where the target goes; a direct target is
dialled by the Connector (deny-private, loop check), a routed one by
opening a connection to the parent and asking it for a tunnel (RFC 9110
section 9.3.6). Plain HTTP through the parent does not come here: it is
sent in absolute-form over pooled connections to the parent (forward.py).

Every failure involving the parent is a ProxyError naming the parent, with
the parent as RFC 9209 ``next-hop``: 502, or 504 for timeouts. A parent's 407
is reported as our 502, never passed on as if this proxy wanted credentials.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from ..http1.errors import Forbidden, LoopDetected, ProxyError, UpstreamError, UpstreamTimeout
from .connect import ConnectFn
from .failures import Step, upstream_failure
from .policy import is_private
from .routing import Parent, Router

# The parent's answer to CONNECT is a head only; a larger one is not a proxy talking.
MAX_CONNECT_REPLY = 65536


class Dialler:
    """A ConnectFn that follows the routing rules; ``via`` carries the client's Via fields on."""

    def __init__(self, connector: ConnectFn, router: Router, *, via_name: str, read_timeout: float,
                 parent_connector: ConnectFn | None = None, deny_private: bool = False) -> None:
        self.connector = connector
        # The parent is the operator's choice: reached even when --deny-private refuses its
        # address for targets (a corporate proxy usually has a private one); loops still count.
        self.parent_connector = parent_connector or connector
        self.router = router
        self.via_name = via_name
        self.read_timeout = read_timeout
        self.deny_private = deny_private

    def __call__(self, address: tuple[str, int], timeout: float, *,
                 via: Sequence[str] = ()) -> socket.socket:
        parent = self.parent_for(*address)
        if parent is None:
            return self.connector(address, timeout)
        return self.tunnel(parent, address, timeout, via)

    def parent_for(self, host: str, port: int) -> Parent | None:
        """The parent to go through, or None for direct; checks what can be checked of a routed target.

        The parent resolves the names it is sent, so --deny-private can judge only address literals.
        """
        parent = self.router.parent_for(host, port)
        if parent is not None and self.deny_private and _private_literal(host):
            raise Forbidden(f"{host} is a private or local address; this proxy refuses those")
        return parent

    def connect_parent(self, parent: Parent, timeout: float) -> socket.socket:
        """A TCP connection to the parent itself (the loop check applies: it may be us)."""
        try:
            return self.parent_connector((parent.host, parent.port), timeout)
        except OSError as exc:
            raise _at_parent(upstream_failure(Step.CONNECT, str(parent), exc), parent) from exc

    def parent_dial(self, address: tuple[str, int], timeout: float) -> socket.socket:
        """The ConnectFn of pooled connections to the parent: failures name it, with next-hop."""
        parent = self.router.parent_at(*address)
        assert parent is not None  # the pool keys a parent's connections by its address
        sock = self.connect_parent(parent, timeout)
        sock.settimeout(timeout)
        return sock

    def tunnel(self, parent: Parent, address: tuple[str, int], timeout: float,
               via: Sequence[str] = ()) -> socket.socket:
        """A socket on which the parent relays to ``address``, its CONNECT reply consumed."""
        sock = self.connect_parent(parent, timeout)
        try:
            sock.settimeout(self.read_timeout)
            sock.sendall(connect_request(address, parent, [*via, f"1.1 {self.via_name}"]))
            status, reason = _read_reply(sock, parent)
            check_connect_reply(status, reason, parent, address)
            sock.settimeout(timeout)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise _at_parent(UpstreamTimeout(f"{parent} did not answer CONNECT within "
                                                 f"{self.read_timeout:g}s"), parent) from exc
            if isinstance(exc, OSError):
                raise _at_parent(UpstreamError(f"{parent} failed during CONNECT: {exc}",
                                               kind="connection_terminated"), parent) from exc
            raise
        return sock


def connect_request(address: tuple[str, int], parent: Parent, via: Sequence[str]) -> bytes:
    host, port = address
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if parent.authorization:
        lines.append(f"Proxy-Authorization: {parent.authorization}")
    lines += [f"Via: {entry}" for entry in via]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_connect_reply(status: int, reason: str, parent: Parent, address: tuple[str, int]) -> None:
    """Any 2xx opens the tunnel (RFC 9110 section 9.3.6); every refusal becomes our 502 or 504."""
    if 200 <= status < 300:
        return
    target = f"{address[0]}:{address[1]}"
    if status == 407:
        what = "rejected our credentials" if parent.user else "requires credentials (see --upstream-proxy)"
        raise _at_parent(UpstreamError(f"{parent} {what} (407)", kind="http_request_denied"), parent)
    error: ProxyError = UpstreamError(f"{parent} refused CONNECT to {target}: {status} {reason}".strip(),
                                      kind="destination_unavailable")
    if status == 504:
        error = UpstreamTimeout(f"{parent} timed out reaching {target} (504)")
    elif status == 508:  # a loop through parents: every proxy on it says so, not just the first
        error = LoopDetected(f"{parent} reports a loop reaching {target} (508)")
    raise _at_parent(error, parent)


def _read_reply(sock: socket.socket, parent: Parent) -> tuple[int, str]:
    """Read the parent's reply head exactly: bytes after it belong to the tunnel and stay unread.

    MSG_PEEK looks ahead; only the head's own bytes are then taken off the socket.
    """
    head = b""
    while True:
        seen = sock.recv(8192, socket.MSG_PEEK)
        if not seen:
            raise _at_parent(UpstreamError(f"{parent} closed the connection during CONNECT",
                                           kind="connection_terminated"), parent)
        end = (head[-3:] + seen).find(b"\r\n\r\n")
        if end != -1:
            head += _recv_exact(sock, end + 4 - len(head[-3:]))
            break
        head += _recv_exact(sock, len(seen))
        if len(head) > MAX_CONNECT_REPLY:
            raise _at_parent(UpstreamError(f"{parent} sent an oversized CONNECT reply",
                                           kind="http_protocol_error"), parent)
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise _at_parent(UpstreamError(f"{parent} sent a malformed CONNECT reply",
                                       kind="http_protocol_error"), parent)
    return int(code), reason.strip()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise ConnectionResetError("closed mid-reply")
        data += piece
    return data


def _private_literal(host: str) -> bool:
    try:
        return is_private(ipaddress.ip_address(host))
    except ValueError:
        return False


def _at_parent(error: ProxyError, parent: Parent) -> ProxyError:
    error.next_hop = parent.authority
    return error

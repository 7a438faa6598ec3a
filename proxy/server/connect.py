"""Dialling the next hop: the one way the proxy opens a connection, under the address rules.

``dial`` opens every upstream connection, for forwarded requests (through the
pool) and for CONNECT tunnels alike, and translates a failure into the status
to answer with (``failures.py``). The ``Connector`` it is handed applies the
address rules: names are resolved here and each address is checked before it is dialled, so
the address judged is the address connected to: a name that resolves to a
public address at check time and a private one at connect time (DNS
rebinding) gets nowhere. After connecting, the peer is compared with the
proxy's own listening address, so a request that would make the proxy call
itself is refused whatever name it used.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from ..http1.errors import Forbidden, LoopDetected
from .failures import Step, upstream_failure
from .policy import is_private

# Opens a TCP connection to (host, port) within a timeout; injected so tests can stand in for DNS.
ConnectFn = Callable[[tuple[str, int], float], socket.socket]


def dial(connect: ConnectFn, host: str, port: int, timeout: float, where: str) -> socket.socket:
    """A connected socket to (host, port), Nagle off; a failure raises the error to answer with."""
    try:
        sock = connect((host, port), timeout)
    except OSError as exc:
        raise upstream_failure(Step.CONNECT, where, exc) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Connector:
    """A ConnectFn applying deny-private and loop rules around a plain connect function."""

    def __init__(self, connect: ConnectFn = socket.create_connection, *, deny_private: bool = False,
                 own_address: Callable[[], tuple[str, int]] | None = None) -> None:
        self._connect = connect
        self._deny_private = deny_private
        self._own_address = own_address

    def __call__(self, address: tuple[str, int], timeout: float) -> socket.socket:
        sock = self._dial_public(address, timeout) if self._deny_private else self._connect(address, timeout)
        try:
            self._check_loop(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    def _dial_public(self, address: tuple[str, int], timeout: float) -> socket.socket:
        host, port = address
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        public = [info[4] for info in infos if not is_private(ipaddress.ip_address(info[4][0]))]
        if not public:
            raise Forbidden(f"{host} resolves to a private or local address; this proxy refuses those")
        error: OSError | None = None
        for sockaddr in public:
            try:
                return self._connect((str(sockaddr[0]), port), timeout)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    def _check_loop(self, sock: socket.socket, address: tuple[str, int]) -> None:
        if self._own_address is None:
            return
        own_host, own_port = self._own_address()  # the bound address: an IP, never a name
        peer_host, peer_port = sock.getpeername()[:2]
        if peer_port != own_port:
            return
        own_ip = ipaddress.ip_address(own_host)
        # Bound to a wildcard, every local address is ours: a connection whose
        # two ends share an address stayed on this machine.
        local_host = sock.getsockname()[0]
        if ipaddress.ip_address(peer_host) == own_ip or (own_ip.is_unspecified and peer_host == local_host):
            raise LoopDetected(f"{address[0]}:{address[1]} is this proxy itself")

"""Client-side helpers for tests: raw sockets and http.client pointed at a proxy."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterable
from typing import Any


def exchange(address: tuple[str, int], data: bytes, timeout: float = 10.0, *,
             half_close: bool = False, read: bool = True) -> bytes:
    """Send raw bytes to the proxy and read until it closes the connection.

    ``half_close`` shuts our sending side after the bytes (whatever we sent is
    all there is); a reset from the proxy ends the reading like a close.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may have answered and closed already
        if not read:
            return b""
        chunks = []
        try:
            while piece := sock.recv(65536):
                chunks.append(piece)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def read_response(sock: socket.socket, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    """Read one response from a socket (keeping the socket usable for the next one)."""
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    body = resp.read()
    return resp, body


def through(address: tuple[str, int], method: str, url: str, body: bytes | Iterable[bytes] | None = None,
            headers: dict[str, str] | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    """One request in absolute-form through the proxy with http.client."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        if own:
            conn.close()


def echoed(body: bytes) -> dict[str, Any]:
    """The origin's /echo answer: what reached it."""
    return json.loads(body)  # type: ignore[no-any-return]

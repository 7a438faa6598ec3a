"""Closing a client connection without destroying the last response: the lingering close.

RFC 9112 section 9.6: a server that closes while the client is still sending (an upload
the origin refused early with 413, 401 or 417, say) must not close both directions at
once, since the client's next bytes would meet a reset that can destroy the response
before the client reads it; it half-closes, then reads and discards what the client is
still sending, for a bounded time, before it closes. A connection with nothing unread
closes at once, so keep-alive clients that go away pay nothing for this.
"""

from __future__ import annotations

import socket
import time

LINGER_SECONDS = 2.0  # as Apache's lingering close: time enough to read a response, no more
LINGER_BYTES = 16 * 1024 * 1024


def half_close(sock: socket.socket, seconds: float = LINGER_SECONDS, limit: int = LINGER_BYTES) -> int:
    """Send our FIN, then drain the client's bytes until it closes, time runs out or limit passes.

    Returns how many bytes were discarded. The socket is left for the caller to close.
    """
    drained = 0
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0)
        if not sock.recv(1, socket.MSG_PEEK):
            return 0  # the client already closed
        deadline = time.monotonic() + seconds
        while drained < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:  # BlockingIOError: nothing unread now; a timeout or reset: done either way
        pass
    return drained

"""``Expect: 100-continue`` across the proxy: whether the origin answered before the body.

RFC 9110 section 10.1.1: a proxy that forwards such a request's head lets the origin
decide; it may send a 100 of its own only when it believes the next hop will not.
So after the head goes out the origin gets a moment (as long as curl gives a proxy
before it sends a body anyway) to speak first: its 100 means send the body; a final
status (401, 413, 417) means the body is not wanted, and is not read or sent; silence
means an origin that ignores Expect, and the proxy's own 100 lets the client go on.
The origin's bytes are only peeked at: the response parser reads them as before.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

CONTINUE_WAIT = 1.0  # seconds; curl's --expect100-timeout default
_STATUS_END = len(b"HTTP/1.1 100")


def origin_answered_first(sock: socket.socket | None, wait: float = CONTINUE_WAIT) -> bool:
    """True if the origin sent a final response, or closed, before asking for the body."""
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return False  # TLS records cannot be peeked at (and session tickets make it readable anyway)
    deadline = time.monotonic() + wait
    seen = b""
    while len(seen) < _STATUS_END:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return False  # nothing yet: an origin that ignores Expect
        try:
            seen = sock.recv(_STATUS_END, socket.MSG_PEEK)
        except OSError:
            return True  # reset: reading the response reports it
        if not seen:
            return True  # closed: reading the response reports it
        if not seen.startswith(b"HTTP/1."[:len(seen)]):
            return True  # not a status line: the response parser says what it is
    return not seen[9:12].startswith(b"1")

"""Request heads as bytes: the one writer of the head the proxy sends an origin.

This module owns the request line and field block of a forwarded request
(RFC 9112 sections 3 and 5), written in one pass. It replaces
``http.client``'s ``putrequest``/``putheader``, whose checks cost more than
the rest of sending: every part of the head was already validated where it
entered (``headers.parse_request_line``, ``headers.parse_field``,
``target.parse_absolute``). What the stdlib's checks close (CVE-2019-9740,
CVE-2019-9947: a CR or LF smuggled into the request line or a field, starting
a line of the attacker's) is still closed here at the cost of one count: a
head whose line breaks are not exactly its own is refused (ValueError), never
sent. It returns bytes and never touches a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# What http.client refuses in a method or a target (CVE-2019-9740): controls, space, DEL.
_UNSAFE_IN_LINE = re.compile(r"[\x00-\x20\x7f]")


def request_head(method: str, target: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """``method target HTTP/1.1``, the fields in order, the empty line; ValueError if a part breaks a line."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields]
    lines += ["", ""]
    head = "\r\n".join(lines).encode("latin-1")
    # Each line ends in the one CRLF put there above: a CR or LF inside a part
    # would make the origin read a line (or a message) of someone else's.
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise ValueError("a request head field contains a line break")
    if _UNSAFE_IN_LINE.search(method) or _UNSAFE_IN_LINE.search(target):
        raise ValueError("request line contains a control character or a space")
    return head

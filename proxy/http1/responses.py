"""Response heads as bytes: the one writer of every head the proxy sends, its own and relayed ones.

This module owns the status line and field block (RFC 9112 section 4), and
the proxy's own small responses: an error as a status, a one-line plain-text
body and an RFC 9209 ``Proxy-Status`` field; a short body of ours (health, a
fault rule's answer). It returns bytes and never touches a socket: the caller
sends them.
"""

from __future__ import annotations

import http
from collections.abc import Iterable

from .errors import ProxyError

Fields = Iterable[tuple[str, str]]


def phrase(status: int) -> str:
    """The reason phrase registered for a status, or an empty one (RFC 9112 section 4 allows it)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def head(status: int, fields: Fields, reason: str | None = None) -> bytes:
    """A response head: status line, fields in the order given, the empty line."""
    lines = [f"HTTP/1.1 {status} {phrase(status) if reason is None else reason}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in fields]
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def proxy_status(name: str, exc: ProxyError) -> str:
    """The RFC 9209 Proxy-Status value naming this proxy, the error type and the reason."""
    details = " ".join(exc.reason.split()).replace("\\", "\\\\").replace('"', '\\"')
    hop = f'; next-hop="{exc.next_hop}"' if exc.next_hop else ""  # the parent proxy that failed
    return f'{name}; error={exc.kind}{hop}; details="{details}"'


def own(status: int, body: bytes, content_type: str, *, head_only: bool, close: bool,
        extra: Fields = ()) -> bytes:
    """A complete response of ours; ``head_only`` leaves the body out (an answer to HEAD)."""
    fields = [("Content-Type", content_type), ("Content-Length", str(len(body))),
              ("Cache-Control", "no-store"), *extra]
    if close:
        fields.append(("Connection", "close"))
    # Our fields may quote a client's bytes; one that is not latin-1 must not stop the answer.
    data = head(status, [(n, _latin1(v)) for n, v in fields])
    return data if head_only else data + body


def error(exc: ProxyError, name: str, *, head_only: bool = False) -> bytes:
    """The answer to a failed request: its status, the reason in one line, Proxy-Status; then close."""
    reason = " ".join(exc.reason.split())  # one line, whatever the reason held
    body = f"fwdproxy: {reason}\n".encode("utf-8", "replace")
    return own(exc.status, body, "text/plain; charset=utf-8", head_only=head_only, close=True,
               extra=[*exc.headers, ("Proxy-Status", proxy_status(name, exc))])


def _latin1(value: str) -> str:
    return value.encode("latin-1", "replace").decode("latin-1")

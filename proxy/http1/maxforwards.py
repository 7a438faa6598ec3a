"""Max-Forwards on OPTIONS and TRACE (RFC 9110 section 7.6.2): answer at zero, else count down.

This module owns the rule as plain values: whether a request stops here, the
field to send on instead, and the answer a final recipient gives (``Allow``
for OPTIONS, the request echoed as ``message/http`` for TRACE, section 9.3.8).
It never touches a socket; the handler writes what it returns.
"""

from __future__ import annotations

from .errors import BadRequest
from .headers import Headers

METHODS = frozenset({"OPTIONS", "TRACE"})
# What this proxy carries, for OPTIONS answered as the final recipient.
ALLOW = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT"
# RFC 9110 section 9.3.8: a TRACE echo SHOULD leave out fields likely to hold secrets.
_SECRET = frozenset({"authorization", "proxy-authorization", "cookie"})


def remaining(method: str, headers: Headers) -> int | None:
    """The request's Max-Forwards if the rule applies to it, else None; a malformed value is a 400."""
    if method not in METHODS or "max-forwards" not in headers:
        return None
    values = {value.strip() for value in headers.get_all("max-forwards")}
    if len(values) != 1:
        raise BadRequest("conflicting Max-Forwards values")
    (value,) = values
    if not value.isdigit() or not value.isascii() or len(value) > 18:  # 1*DIGIT
        raise BadRequest(f"invalid Max-Forwards {value[:20]!r}")
    return int(value)


def counted_down(headers: Headers, left: int) -> Headers:
    """The fields to forward: Max-Forwards replaced by ``left`` (one less than received), in place."""
    return Headers.from_parsed([(key, name, str(left) if key == "max-forwards" else value)
                                for key, name, value in headers.fields])


def final_answer(method: str, request_line: str,
                 headers: Headers) -> tuple[str, bytes, list[tuple[str, str]]]:
    """Content type, body and extra fields of the 200 a final recipient sends."""
    if method == "OPTIONS":
        return "text/plain; charset=utf-8", b"", [("Allow", ALLOW)]
    echo = [request_line] + [f"{name}: {value}" for key, name, value in headers.fields
                             if key not in _SECRET]
    return "message/http", ("\r\n".join(echo) + "\r\n\r\n").encode("latin-1"), []

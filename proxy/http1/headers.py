"""Header hygiene: reading a request head, validating fields, and hop-by-hop rules.

This module owns the rules of RFC 9110 section 5 and 7.6 and RFC 9112
sections 2-6 as they apply to a proxy: what a well-formed head looks like,
which fields are hop-by-hop, and how a request's body is framed. It reads from
a ``readline`` callable and never touches a socket, so it is tested with bytes.

Parsing is strict where leniency lets a proxy and an origin disagree about a
message (request smuggling): obs-fold, whitespace before the colon, bare CR,
control characters, conflicting Content-Length, unknown transfer codings are
all refused rather than repaired.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .errors import BadRequest

# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: field-vchar / SP / HTAB, obs-text allowed; CR, LF, NUL
# and the other controls are refused.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 3986: a request target is visible ASCII only.
_BAD_TARGET = re.compile(rb"[^\x21-\x7e]")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# A whole field section that read_fields would take as it is: every line a
# token, a colon and a clean value, then the empty line. Anything else (obs-fold,
# bare CR, a space before the colon, controls) is left to read_fields, which
# says what is wrong with it.
# One field of a section already known clean (decoded as latin-1): the value
# without the whitespace around it (RFC 9112 section 5.1: OWS is not part of it).
_CLEAN_FIELD = re.compile(r"([^:]+):[ \t]*([^\r]*?)[ \t]*\r\n")
_CLEAN_SECTION = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n")

# RFC 9110 section 7.6.1, plus Proxy-Connection (never standard, still sent by
# old clients) and the proxy authentication fields, which are for this hop only.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authorization",
    "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade",
})


@dataclass(frozen=True)
class Limits:
    """Size limits on a request head (RFC 9112 section 2.3 leaves them to us)."""

    request_line: int = 8192
    header_bytes: int = 65536
    header_count: int = 100


class Headers:
    """Header fields in order, duplicates kept, looked up case-insensitively."""

    __slots__ = ("fields", "names")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        # (lowercase name, name as sent, value): lowercased once, looked up often.
        self.fields = [(name.lower(), name, value) for name, value in fields]
        # Most lookups (Transfer-Encoding, Expect, Via...) find nothing: answer those at once.
        self.names = {key for key, _, _ in self.fields}

    @classmethod
    def from_parsed(cls, fields: list[tuple[str, str, str]]) -> Headers:
        """Wrap (lowercase name, name, value) triples as they come from the parser."""
        headers = cls()
        headers.fields = fields
        headers.names = {key for key, _, _ in fields}
        return headers

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for _, name, value in self.fields]

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        if lname not in self.names:
            return default
        for key, _, value in self.fields:
            if key == lname:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        if lname not in self.names:
            return []
        return [value for key, _, value in self.fields if key == lname]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every field with this name, lowercased."""
        if name.lower() not in self.names:
            return set()
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.names

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


@dataclass(frozen=True)
class RequestLine:
    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"


def parse_request_line(line: bytes, limits: Limits = Limits()) -> RequestLine:
    """Parse ``method SP request-target SP HTTP-version CRLF`` (RFC 9112 section 3)."""
    if len(line) > limits.request_line:
        raise BadRequest(f"request line longer than {limits.request_line} bytes", status=414)
    if not line.endswith(b"\r\n"):
        raise BadRequest("request line does not end in CRLF")
    parts = line[:-2].split(b" ")
    if len(parts) != 3:
        raise BadRequest("request line is not 'METHOD target HTTP/x.y'")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest("method is not a token")
    if not target or _BAD_TARGET.search(target):
        raise BadRequest("request target contains illegal characters")
    match = _VERSION.fullmatch(version)
    if not match:
        raise BadRequest("malformed HTTP version")
    if match.group(1) != b"1":
        raise BadRequest("only HTTP/1.0 and HTTP/1.1 are supported", status=505,
                         kind="http_protocol_error")
    return RequestLine(method.decode("ascii"), target.decode("ascii"),
                       "HTTP/1.0" if match.group(2) == b"0" else "HTTP/1.1")


def read_fields(readline: Callable[[int], bytes], limits: Limits = Limits()) -> Headers:
    """Read header lines up to the empty line, validating each (RFC 9112 section 5)."""
    fields: list[tuple[str, str, str]] = []
    total = 0
    while True:
        line = readline(limits.header_bytes + 1)
        total += len(line)
        if total > limits.header_bytes:
            raise BadRequest(f"header section larger than {limits.header_bytes} bytes",
                             status=431)
        if line == b"\r\n":
            return Headers.from_parsed(fields)
        if not line.endswith(b"\r\n"):
            raise BadRequest("header section ended early or a line lacks CRLF")
        name, value = parse_field(line[:-2])
        fields.append((name.lower(), name, value))
        if len(fields) > limits.header_count:
            raise BadRequest(f"more than {limits.header_count} header fields", status=431)


class Buffered(Protocol):
    """A buffered reader (io.BufferedReader, or a TLS stream's): what read_section needs."""

    def peek(self, size: int = 0, /) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


def read_section(reader: Buffered, limits: Limits = Limits()) -> Headers:
    """read_fields, in one pass when the whole section is already buffered (the common case).

    The buffered bytes are checked whole by one expression and split once; a
    section that is not all there yet, too large, or not plainly clean is read
    by read_fields instead, from the same place (nothing has been consumed),
    so both give the same fields or the same error.
    """
    buffered = reader.peek(limits.header_bytes)
    # The section ends at the first empty line: no line holds a CRLF of its own.
    end = -2 if buffered[:2] == b"\r\n" else buffered.find(b"\r\n\r\n")
    size = end + 4  # through the empty line
    if end == -1 or size > limits.header_bytes or not _CLEAN_SECTION.fullmatch(buffered, 0, size):
        return read_fields(reader.readline, limits)
    pairs = _CLEAN_FIELD.findall(buffered[:size - 2].decode("latin-1"))
    if len(pairs) > limits.header_count:
        return read_fields(reader.readline, limits)
    fields = [(name.lower(), name, value) for name, value in pairs]
    reader.read(size)
    return Headers.from_parsed(fields)


def parse_field(line: bytes) -> tuple[str, str]:
    """Parse one ``name: value`` line (without its CRLF)."""
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        if line[:1] in (b" ", b"\t"):
            # RFC 9112 section 5.2: obs-fold is refused rather than unfolded.
            raise BadRequest("obsolete line folding in header section")
        if not colon:
            raise BadRequest("header line without a colon")
        # Includes "Name :" (RFC 9112 section 5.1: MUST reject with 400).
        raise BadRequest(f"invalid header name {name[:40]!r}")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise BadRequest(f"control character in header {name.decode()!r}")
    return name.decode("ascii"), value.decode("latin-1")


def content_length(headers: Headers) -> int | None:
    """The message's Content-Length, or None; conflicting values are refused.

    RFC 9110 section 8.6: a list of identical values may be taken as one;
    anything else (different values, signs, blanks) is a framing attack.
    """
    values = headers.get_all("content-length")
    if not values:
        return None
    items = {item.strip() for value in values for item in value.split(",")}
    if len(items) != 1:
        raise BadRequest("conflicting Content-Length values")
    (item,) = items
    if not item.isdigit() or not item.isascii() or len(item) > 18:
        raise BadRequest(f"invalid Content-Length {item[:20]!r}")
    return int(item)


def is_chunked(headers: Headers) -> bool:
    """Whether the message uses chunked framing; other transfer codings are refused.

    RFC 9112 section 6.1 and 6.3: only a final ``chunked`` frames a request.
    A proxy that accepted ``chunked, identity`` or ``xchunked`` while the origin
    read Content-Length would be open to smuggling, so only exactly ``chunked``
    (any case) is accepted.
    """
    values = headers.get_all("transfer-encoding")
    if not values:
        return False
    codings = [item.strip().lower() for value in values for item in value.split(",")]
    if codings == ["chunked"]:
        return True
    if codings and codings[-1] == "chunked" and "chunked" not in codings[:-1] and all(codings):
        raise BadRequest("transfer codings other than chunked are not supported", status=501,
                         kind="http_request_error")
    raise BadRequest(f"invalid Transfer-Encoding {', '.join(values)[:60]!r}")


def request_body_length(headers: Headers, version: str = "HTTP/1.1") -> int | None:
    """Body length of a request: bytes, None for chunked (RFC 9112 section 6.3)."""
    if version == "HTTP/1.0" and "transfer-encoding" in headers:
        # RFC 9112 section 6.1: HTTP/1.0 has no transfer codings; such framing is faulty.
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    chunked = is_chunked(headers)
    length = content_length(headers)
    if chunked and length is not None:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if chunked:
        return None
    return length or 0


def keep_alive(version: str, headers: Headers) -> bool:
    """Whether the peer wants the connection kept open (RFC 9112 section 9.3)."""
    tokens = headers.tokens("connection") | headers.tokens("proxy-connection")
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens


def persistent_client(version: str, headers: Headers) -> bool:
    """Whether a client connection may stay open after this exchange.

    RFC 9112 section 9.3: a proxy MUST NOT maintain a persistent connection
    with an HTTP/1.0 client, whatever its Connection: keep-alive says (an
    HTTP/1.0 proxy in between would forward that field blindly and hang).
    """
    return version == "HTTP/1.1" and keep_alive(version, headers)


def http_date() -> str:
    """The current time as an IMF-fixdate (RFC 9110 section 5.6.7), formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


_date = (0, "")


def end_to_end(headers: Headers, extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Fields to forward: hop-by-hop ones, those named by Connection, and ``extra`` removed."""
    drop = HOP_BY_HOP | headers.tokens("connection") | set(extra)
    return [(name, value) for key, name, value in headers.fields if key not in drop]

"""The chunked transfer coding (RFC 9112 section 7.1): decoding from a reader, encoding for a writer.

Used for request bodies arriving from clients (http.client decodes the ones
arriving from origins). Chunk-size lines are read strictly: hex digits only,
no sign, no whitespace games, no bare CR in extensions, no sizes that
overflow. Each of those has been used to make two parsers disagree about
where a message ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from .errors import BadRequest
from .headers import Limits, read_fields

# At most 16 hex digits: sizes beyond 2**64 are an overflow attack, not a body.
_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"'
_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")
MAX_SIZE_LINE = 4096
LAST_CHUNK = b"0\r\n\r\n"


def read_chunked(
    readline: Callable[[int], bytes],
    read1: Callable[[int], bytes],
    read: Callable[[int], bytes],
    bufsize: int = 65536,
) -> Iterator[bytes]:
    """Yield a chunked body's data as it arrives; trailers are read and dropped.

    Raises BadRequest on malformed framing or a body that ends early.
    """
    while True:
        size = _chunk_size(readline(MAX_SIZE_LINE + 1))
        if size == 0:
            # Trailer fields are hop-by-hop unless declared; they are dropped
            # (RFC 9110 section 6.5.1 allows discarding them).
            read_fields(readline, Limits(header_count=100))
            return
        while size:
            data = read1(min(size, bufsize))
            if not data:
                raise BadRequest("request body ended inside a chunk")
            size -= len(data)
            yield data
        if read(2) != b"\r\n":
            raise BadRequest("chunk data not followed by CRLF")


def _chunk_size(line: bytes) -> int:
    try:
        return parse_chunk_size(line)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def parse_chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (with its CRLF); ValueError if it is anything but strict."""
    if not line.endswith(b"\r\n"):
        raise ValueError("malformed or truncated chunk-size line")
    line = line[:-2]
    digits, semi, _ = line.partition(b";")
    if semi:
        digits = digits.rstrip(b" \t")
        if not _EXT.fullmatch(line[len(digits):]):
            raise ValueError("malformed chunk extension")
    if not _SIZE.fullmatch(digits):
        raise ValueError(f"invalid chunk size {digits[:20]!r}")
    return int(digits, 16)


def encode_chunk(data: bytes) -> bytes:
    """One chunk, ready to send (never call with empty data: that is the last chunk)."""
    return b"%x\r\n%b\r\n" % (len(data), data)

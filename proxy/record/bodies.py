"""Recorded bodies made readable: content codings undone, JSON indented, binary as a hex head.

Pure functions on bytes. A body may have been cut at the capture limit or
be broken on purpose (an origin under test sending invalid gzip): decoding
never raises, it says what it could not do, and the caller shows the bytes
as they were sent.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass

MAX_DECODED = 16 << 20  # a decompression bomb stops here
HEX_HEAD = 64
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Decoded:
    data: bytes  # decoded when ``decoded``, else the bytes as sent
    decoded: bool
    note: str  # what was done or why not, "" for a body without a content coding


def decode(data: bytes, content_encoding: str, *, complete: bool = True) -> Decoded:
    """Undo gzip/deflate codings (RFC 9110 section 8.4), last applied first."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings or not data:
        return Decoded(data, False, "")
    out = data
    for coding in reversed(codings):
        if coding not in ("gzip", "x-gzip", "deflate"):
            return Decoded(data, False, f"{coding}-coded, shown as sent")
        try:
            out, finished = _inflate(out, coding)
        except zlib.error as exc:
            return Decoded(data, False, f"invalid {coding} ({exc}), shown as sent")
        if not finished and complete:
            return Decoded(data, False, f"{coding} stream ends early or is too large, shown as sent")
    prefix = "first part " if not complete else ""
    return Decoded(out, True, f"{prefix}decoded from {'+'.join(codings)}: {len(data)} -> {len(out)} bytes")


def _inflate(data: bytes, coding: str) -> tuple[bytes, bool]:
    # wbits: 16+ for a gzip wrapper; deflate is zlib-wrapped by the RFC, raw in practice too.
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    if coding == "deflate" and (len(data) < 2 or (data[0] * 256 + data[1]) % 31):
        wbits = -zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, MAX_DECODED)
    return out, inflater.eof


def is_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # a multi-byte character cut at the capture limit
    return True


def render(data: bytes, content_type: str = "") -> str:
    """Text for a terminal: JSON indented, text with control characters escaped, else a hex head."""
    if not data:
        return ""
    if not is_text(data):
        head = data[:HEX_HEAD]
        lines = [f"{len(data)} bytes of binary data; the first {len(head)}:"]
        lines += [f"  {i:04x}  {head[i:i + 16].hex(' ')}" for i in range(0, len(head), 16)]
        return "\n".join(lines)
    text = data.decode("utf-8", "replace")
    if "json" in content_type.lower() or text.lstrip()[:1] in ("{", "["):
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    return printable(text)


def printable(text: str) -> str:
    """Control characters (terminal escapes among them) shown as \\xNN; newlines and tabs kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)

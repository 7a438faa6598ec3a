"""What the page's JSON says about flows: list rows, one flow in detail, bodies made viewable.

Pure functions from the store's records to plain dicts; the app serialises
them. Recorded bytes leave here as JSON strings only, and the page puts
them on screen with ``textContent``: nothing recorded is ever markup.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from ..record.bodies import decode, is_text
from ..record.command import curl_command
from ..record.flows import Flow
from ..record.store import Filters, FlowRow, StoredFlow

Json = dict[str, Any]

MAX_TEXT = 1 << 20  # characters of a text body sent to the page; the rest is cut, and said so
HEX_HEAD = 256  # bytes of a binary body shown as hex
# Raster formats a browser shows in <img>; SVG is not among them (it can carry script): shown as text.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
                         "image/x-icon", "image/vnd.microsoft.icon", "image/avif"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
PARTS = ("request", "response")


class BadQuery(ValueError):
    """A query parameter the page should never send; answered with 400 and this message."""


def filters_from_query(query: str, *, min_id: int = 0) -> Filters:
    """The page's filter fields (host, method, status, q) as store Filters."""
    params = {name: values[-1].strip() for name, values in parse_qs(query).items()}
    host = params.get("host") or None
    if host is not None and not any(c in host for c in "*?["):
        host = f"*{host}*"  # a plain word matches anywhere in the host, as a search box should
    method = (params.get("method") or "").upper() or None
    if method is not None and method not in METHODS:
        raise BadQuery(f"unknown method {method!r}")
    try:
        return Filters(host=host, method=method, status=params.get("status") or None,
                       grep=params.get("q") or None, min_id=min_id or None)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None


def int_param(query: str, name: str, default: int, *, low: int = 0, high: int = 1 << 62) -> int:
    values = parse_qs(query).get(name)
    if not values or not values[-1]:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise BadQuery(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value


def short_type(content_type: str) -> str:
    """The media type without parameters: 'application/json; charset=utf-8' -> 'application/json'."""
    return content_type.partition(";")[0].strip().lower()


def row_json(row: FlowRow) -> Json:
    """One line of the list."""
    return {"id": row.id, "started": row.started, "kind": row.kind, "method": row.method,
            "host": row.host, "path": row.path if row.kind != "tunnel" else "",
            "url": row.url, "status": row.status, "reason": row.reason,
            "type": short_type(row.content_type), "up": row.bytes_up, "down": row.bytes_down,
            "ms": round(row.duration_ms, 1), "error": row.error}


def flow_json(stored: StoredFlow) -> Json:
    """One flow in full, for the detail pane."""
    f = stored.flow
    return {"id": stored.id, "kind": f.kind, "client": f.client, "method": f.method, "url": f.url,
            "http_version": f.http_version, "host": f.host, "port": f.port, "path": f.path,
            "status": f.status, "reason": f.reason, "started": f.started,
            "duration_ms": round(f.duration_ms, 2), "timings": _timings(f),
            "upstream_reused": f.upstream_reused, "intercepted": f.intercepted,
            "upstream_tls": f.upstream_tls, "faults": list(f.faults), "rules": list(f.rules),
            "parent": f.parent, "error": f.error,
            "error_kind": f.error_kind,
            "request": _message(stored, "request"), "response": _message(stored, "response"),
            "curl": curl_command(f)}


def _timings(f: Flow) -> Json:
    # -1 where a phase did not happen (a reused connection has no connect, a tunnel no wait).
    return {name: round(value, 2) for name, value in
            (("connect", f.connect_ms), ("send", f.send_ms), ("wait", f.wait_ms),
             ("receive", f.receive_ms))}


def _message(stored: StoredFlow, part: str) -> Json:
    f = stored.flow
    headers = f.request_headers if part == "request" else f.response_headers
    body = f.request_body if part == "request" else f.response_body
    size = f.bytes_up if part == "request" else f.bytes_down
    trailers = f.response_trailers if part == "response" else []
    return {"headers": [[name, value] for name, value in headers],
            "trailers": [[name, value] for name, value in trailers],
            "body": body_view(body, size, headers, dropped=stored.bodies_dropped, tunnel=f.kind == "tunnel")}


def header(fields: list[tuple[str, str]], name: str) -> str:
    return next((value for n, value in fields if n.lower() == name), "")


def body_view(body: bytes, size: int, fields: list[tuple[str, str]], *, dropped: bool = False,
              tunnel: bool = False) -> Json:
    """How the page shows a body: kind is empty, missing, json, text, image or binary."""
    content_type = short_type(header(fields, "content-type"))
    view: Json = {"size": size, "stored": len(body), "type": content_type, "note": ""}
    if tunnel or not size:
        return {**view, "kind": "empty" if not size else "missing",
                "note": "tunnelled bytes are relayed unread" if tunnel and size else ""}
    if not body:
        why = "the recorder fell behind" if dropped else "bodies were not captured (--capture-bodies 0)"
        return {**view, "kind": "missing", "note": f"not recorded: {why}"}
    complete = len(body) >= size
    decoded = decode(body, header(fields, "content-encoding"), complete=complete)
    notes = [] if complete else [f"first {len(body)} of {size} bytes recorded"]
    notes += [decoded.note] if decoded.note else []
    view["note"] = "; ".join(notes)
    data = decoded.data
    if content_type in IMAGE_TYPES and complete and not decoded.decoded:
        return {**view, "kind": "image"}
    if not is_text(data):
        head = data[:HEX_HEAD]
        lines = [f"{i:08x}  {head[i:i + 16].hex(' '):<47}  {_printable_ascii(head[i:i + 16])}"
                 for i in range(0, len(head), 16)]
        return {**view, "kind": "binary", "decoded_size": len(data), "hex": "\n".join(lines)}
    text = data.decode("utf-8", "replace")
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            return {**view, "kind": "json", "text": _cut(json.dumps(json.loads(text), indent=2,
                                                                    ensure_ascii=False))}
        except ValueError:
            pass
    return {**view, "kind": "text", "text": _cut(text)}


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} more characters not shown]"


def _printable_ascii(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def raw_body(stored: StoredFlow, part: str) -> tuple[bytes, str]:
    """A body as recorded and the Content-Type to serve it with: raster images as themselves,
    everything else as an opaque download (never HTML or script on the page's origin)."""
    f = stored.flow
    fields = f.request_headers if part == "request" else f.response_headers
    body = f.request_body if part == "request" else f.response_body
    content_type = short_type(header(fields, "content-type"))
    image = content_type in IMAGE_TYPES and not header(fields, "content-encoding")
    return body, content_type if image else "application/octet-stream"


def har_pairs(flows: Any) -> Any:
    """(flow, note) pairs for the HAR writer."""
    for stored in flows:
        yield stored.flow, "bodies not recorded: the recorder fell behind" if stored.bodies_dropped else ""

"""HAR 1.2: flows as the JSON archive browser devtools and HAR viewers open.

This module owns the mapping from Flow records to a HAR ``log``
(http://www.softwareishard.com/blog/har-12-spec/), checked against the HAR
1.2 JSON schema in the tests. ``har_log`` builds the whole document as a
dict; ``write_har`` streams one to a file, entry by entry, so an export of a
million flows needs no more memory than one. The proxy does not see header
sizes on the wire, so ``headersSize`` is -1; timings come from the flow's
phases (connect, send, wait, receive), with what the proxy spent before
them (reading the request, policy) as ``blocked``, so ``time`` is their sum.
Bodies were decoded from gzip/deflate where they were captured whole, as
HAR's ``content.text`` is the decoded body; anything that is not UTF-8 is
base64 with ``encoding``. What HAR has no field for goes in custom fields
of the entry (``_rules``, ``_parent``, ``_faults``, ``_intercepted``,
``_upstreamTls``, ``_responseTrailers``), present only where set. A CONNECT
tunnel becomes one entry with method CONNECT, the target as an
``https://host:port`` URL and the bytes relayed as its body sizes: what went
through it is encrypted and not ours to show.
"""

from __future__ import annotations

import base64
import http
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import parse_qsl

from .. import __version__
from .bodies import decode
from .flows import REDACTED, Flow

Json = dict[str, Any]
PAGE_ID = "page_1"


def har_log(flows: Iterable[Flow], *, comment: str = "") -> Json:
    """A complete HAR document: ``{"log": {...}}``."""
    entries = [har_entry(flow) for flow in flows]
    log = _log_head(comment)
    log["pages"] = [_page(entries[0]["startedDateTime"] if entries else _now(), comment)]
    log["entries"] = entries
    return {"log": log}


def write_har(flows: Iterable[tuple[Flow, str]], out: TextIO, *, comment: str = "") -> int:
    """Stream a HAR document of (flow, note) pairs to ``out``; returns the number of entries."""
    head = json.dumps({"log": _log_head(comment)})
    out.write(head[:-2] + ', "entries": [\n')  # reopen the log object after its last field
    count, first = 0, ""
    for flow, note in flows:
        entry = har_entry(flow, note=note)
        first = first or entry["startedDateTime"]
        out.write((",\n" if count else "") + json.dumps(entry))
        count += 1
    out.write(f'\n], "pages": [{json.dumps(_page(first or _now(), comment))}]}}}}\n')
    return count


def _log_head(comment: str) -> Json:
    log: Json = {"version": "1.2", "creator": {"name": "fwdproxy", "version": __version__}}
    if comment:
        log["comment"] = comment
    return log


def _page(started: str, comment: str) -> Json:
    # Devtools group entries by page; one page holds the whole capture.
    return {"startedDateTime": started, "id": PAGE_ID, "title": comment or "fwdproxy capture",
            "pageTimings": {"onContentLoad": -1, "onLoad": -1}}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def har_entry(flow: Flow, *, note: str = "") -> Json:
    timings = _timings(flow)
    entry: Json = {
        "pageref": PAGE_ID,
        "startedDateTime": datetime.fromtimestamp(flow.started, UTC).isoformat(timespec="milliseconds"),
        "time": round(sum(v for v in timings.values() if v > 0), 3),
        "request": _request(flow),
        "response": _response(flow),
        "cache": {},
        "timings": timings,
    }
    entry.update(_custom(flow))
    notes = [f"fault rules fired: {', '.join(flow.faults)}"] if flow.faults else []
    notes += [f"rules fired: {'; '.join(flow.rules)}"] if flow.rules else []
    notes += [f"via parent proxy {flow.parent}"] if flow.parent else []
    if flow.kind == "tunnel":
        notes.insert(0, "CONNECT tunnel: bytes relayed unread, sizes are the bytes each way")
    if flow.error:
        kind = f" (Proxy-Status {flow.error_kind})" if flow.error_kind else ""
        notes.append(f"error: {flow.error}{kind}")
    if note:
        notes.append(note)
    if notes:
        entry["comment"] = "; ".join(notes)
    return entry


def _custom(flow: Flow) -> Json:
    """What HAR has no field for, as custom fields (HAR 1.2: names starting with "_"), where set."""
    custom: Json = {}
    if flow.rules:
        custom["_rules"] = list(flow.rules)
    if flow.parent:
        custom["_parent"] = flow.parent
    if flow.faults:
        custom["_faults"] = list(flow.faults)
    if flow.intercepted:
        custom["_intercepted"] = True
    if flow.upstream_tls:
        custom["_upstreamTls"] = flow.upstream_tls
    if flow.response_trailers:
        custom["_responseTrailers"] = _headers(flow.response_trailers)
    return custom


def _timings(flow: Flow) -> Json:
    """HAR timings in ms: send, wait and receive are never negative; -1 marks a phase that did not happen."""
    if flow.wait_ms < 0:  # no upstream exchange (tunnel, local answer, an early error)
        return {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0,
                "wait": max(flow.duration_ms, 0), "receive": 0}
    # HAR: connect is -1 when a connection was reused; the pool lookup then counts as blocked.
    connect = flow.connect_ms if flow.upstream_reused is False else -1
    phases = max(connect, 0) + max(flow.send_ms, 0) + flow.wait_ms + max(flow.receive_ms, 0)
    return {"blocked": round(max(flow.duration_ms - phases, 0), 3), "dns": -1, "connect": connect,
            "ssl": -1, "send": max(flow.send_ms, 0), "wait": flow.wait_ms, "receive": max(flow.receive_ms, 0)}


def _request(flow: Flow) -> Json:
    request: Json = {
        "method": flow.method,
        "url": _tunnel_url(flow) if flow.kind == "tunnel" else flow.url,
        "httpVersion": flow.http_version,
        "cookies": _request_cookies(flow.request_headers),
        "headers": _headers(flow.request_headers),
        "queryString": [{"name": n, "value": v}
                        for n, v in parse_qsl(flow.path.partition("?")[2], keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": flow.bytes_up,
    }
    if flow.request_body:
        post: Json = {"mimeType": _field(flow.request_headers, "content-type")}
        post.update(_text(flow.request_body))
        if len(flow.request_body) < flow.bytes_up:
            post["comment"] = f"first {len(flow.request_body)} bytes of {flow.bytes_up}"
        request["postData"] = post
    return request


def _response(flow: Flow) -> Json:
    content: Json = {"size": flow.bytes_down, "mimeType": _field(flow.response_headers, "content-type")}
    body = flow.response_body
    if body:
        complete = len(body) >= flow.bytes_down
        coding = _field(flow.response_headers, "content-encoding")
        decoded = decode(body, coding, complete=complete)
        if decoded.decoded and complete:
            # HAR: content.text is the decoded body; size its length, compression what was saved.
            content.update(size=len(decoded.data), compression=len(decoded.data) - flow.bytes_down)
            body = decoded.data
        content.update(_text(body))
        notes = [f"first {len(body)} bytes of {flow.bytes_down}"] if not complete else []
        notes += [decoded.note] if decoded.note and not decoded.decoded else []
        if notes:
            content["comment"] = "; ".join(notes)
    return {
        "status": flow.status,
        "statusText": flow.reason or _phrase(flow.status),
        "httpVersion": "HTTP/1.1",
        "cookies": _response_cookies(flow.response_headers),
        "headers": _headers(flow.response_headers),
        "content": content,
        "redirectURL": _field(flow.response_headers, "location"),
        "headersSize": -1,
        "bodySize": flow.bytes_down,
    }


def _tunnel_url(flow: Flow) -> str:
    host = f"[{flow.host}]" if ":" in flow.host else flow.host
    return f"https://{host}:{flow.port}"


def _headers(fields: list[tuple[str, str]]) -> list[Json]:
    return [{"name": name, "value": value} for name, value in fields]


def _field(fields: list[tuple[str, str]], name: str) -> str:
    return next((value for n, value in fields if n.lower() == name), "")


def _request_cookies(fields: list[tuple[str, str]]) -> list[Json]:
    pairs = [pair.strip().partition("=") for n, v in fields if n.lower() == "cookie" and v != REDACTED
             for pair in v.split(";")]
    return [{"name": name, "value": value} for name, _, value in pairs if name]


def _response_cookies(fields: list[tuple[str, str]]) -> list[Json]:
    pairs = [v.split(";", 1)[0].strip().partition("=") for n, v in fields
             if n.lower() == "set-cookie" and v != REDACTED]
    return [{"name": name, "value": value} for name, _, value in pairs if name]


def _text(body: bytes) -> Json:
    """HAR text: UTF-8 as is, anything else base64 with ``encoding`` (as content.encoding in HAR 1.2)."""
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(body).decode("ascii"), "encoding": "base64"}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""

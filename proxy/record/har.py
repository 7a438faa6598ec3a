"""HAR 1.2: flows as the JSON archive browser devtools and HAR viewers open.

This module owns the mapping from Flow records to a HAR ``log`` dict
(http://www.softwareishard.com/blog/har-12-spec/). It is pure: no files, no
sockets; callers serialise the dict with ``json.dump``. The proxy sees
neither header sizes on the wire nor a split of time into send, wait and
receive, so ``headersSize`` is -1 and the whole duration is under ``wait``.
A CONNECT tunnel becomes one entry with method CONNECT, the target as an
``https://host:port`` URL and the bytes relayed as its body sizes: what went
through it is encrypted and not ours to show.
"""

from __future__ import annotations

import base64
import http
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from .. import __version__
from .flows import Flow

Json = dict[str, Any]


def har_log(flows: Iterable[Flow], *, comment: str = "") -> Json:
    """A complete HAR document: ``{"log": {...}}``."""
    log: Json = {"version": "1.2", "creator": {"name": "fwdproxy", "version": __version__},
                 "entries": [har_entry(flow) for flow in flows]}
    if comment:
        log["comment"] = comment
    return {"log": log}


def har_entry(flow: Flow) -> Json:
    entry: Json = {
        "startedDateTime": datetime.fromtimestamp(flow.started, UTC).isoformat(timespec="milliseconds"),
        "time": flow.duration_ms,
        "request": _request(flow),
        "response": _response(flow),
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1,
                    "send": 0, "wait": flow.duration_ms, "receive": 0},
    }
    notes = [f"fault rules fired: {', '.join(flow.faults)}"] if flow.faults else []
    if flow.kind == "tunnel":
        notes.insert(0, "CONNECT tunnel: bytes relayed unread, sizes are the bytes each way")
    if flow.error:
        notes.append(f"error: {flow.error}")
    if notes:
        entry["comment"] = "; ".join(notes)
    return entry


def _request(flow: Flow) -> Json:
    request: Json = {
        "method": flow.method,
        "url": _tunnel_url(flow) if flow.kind == "tunnel" else flow.url,
        "httpVersion": "HTTP/1.1",
        "cookies": _request_cookies(flow.request_headers),
        "headers": _headers(flow.request_headers),
        "queryString": [{"name": n, "value": v}
                        for n, v in parse_qsl(flow.path.partition("?")[2], keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": flow.bytes_up,
    }
    if flow.request_body:
        request["postData"] = {"mimeType": _field(flow.request_headers, "content-type"),
                               "text": flow.request_body.decode("utf-8", "replace")}
        if len(flow.request_body) < flow.bytes_up:
            request["postData"]["comment"] = f"first {len(flow.request_body)} bytes of {flow.bytes_up}"
    return request


def _response(flow: Flow) -> Json:
    content: Json = {"size": flow.bytes_down, "mimeType": _field(flow.response_headers, "content-type")}
    if flow.response_body:
        content.update(_text(flow.response_body))
        if len(flow.response_body) < flow.bytes_down:
            content["comment"] = f"first {len(flow.response_body)} bytes of {flow.bytes_down}"
    return {
        "status": flow.status,
        "statusText": _phrase(flow.status),
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
    pairs = [pair.strip().partition("=") for n, v in fields if n.lower() == "cookie" for pair in v.split(";")]
    return [{"name": name, "value": value} for name, _, value in pairs if name]


def _response_cookies(fields: list[tuple[str, str]]) -> list[Json]:
    pairs = [v.split(";", 1)[0].strip().partition("=") for n, v in fields if n.lower() == "set-cookie"]
    return [{"name": name, "value": value} for name, _, value in pairs if name]


def _text(body: bytes) -> Json:
    """HAR content text: UTF-8 as is, anything else base64 (HAR 1.2 ``encoding``)."""
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(body).decode("ascii"), "encoding": "base64"}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""

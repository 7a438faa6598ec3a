"""Cassettes: recorded exchanges in a HAR 1.2 file, read back for replay.

This module owns the record modes (vcrpy's: ``none``, ``once``, ``new``,
``all``), turning a HAR file into Recorded answers for a Replay rule (with a
clear CassetteError naming the file and entry for anything malformed or cut
short), and writing flows into one with the project's HAR writer, secrets
redacted. Only exchanges the proxy forwarded to an origin are recorded.
It knows nothing of pytest or sockets.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..record.flows import REDACTED, SECRET_FIELDS, Flow
from ..record.har import har_log
from ..server.replay import Recorded

MODES = ("none", "once", "new", "all")
# Header fields whose values never reach a cassette unless asked for: the recordings' secrets, and API keys.
REDACT = (*sorted(SECRET_FIELDS), "x-api-key", "x-auth-token")
# Framing and hop-by-hop fields a replayed answer does not repeat: the proxy frames it anew.
_NOT_REPLAYED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "via",
                           "proxy-connection", "trailer", "upgrade"})


# How a HAR writer notes a body it kept only the start of.
_PARTIAL = re.compile(r"first \d+ bytes of \d+")


class CassetteError(ValueError):
    """A cassette that cannot be used: the message names the file, and the entry if one is at fault."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise CassetteError(f"unknown record mode {mode!r}; one of {', '.join(MODES)}")
    return mode


def plan(path: Path, mode: str) -> tuple[bool, bool]:
    """(replay from the file?, record into it?) for a cassette at ``path`` in ``mode``."""
    check_mode(mode)
    exists = path.exists()
    if mode == "none" and not exists:
        raise CassetteError(f"cassette {path} does not exist; record it with --fwdproxy-record=once")
    if mode == "once":
        return exists, not exists
    return exists and mode in ("none", "new"), mode in ("new", "all")


def load(path: Path) -> list[Recorded]:
    """The entries of a HAR cassette as answers, in file order."""
    document = _read(path)
    entries = document.get("log", {}).get("entries") if isinstance(document.get("log"), dict) else None
    if not isinstance(entries, list):
        raise CassetteError(f"cassette {path} is not a HAR file: no log.entries list")
    return [_entry(path, i, entry) for i, entry in enumerate(entries, 1)]


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CassetteError(f"cassette {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CassetteError(f"cassette {path} is not UTF-8 text: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (the file looks cut short)" if exc.pos >= len(text.rstrip()) else ""
        raise CassetteError(f"cassette {path} is not valid JSON{cut}: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}") from exc
    if not isinstance(document, dict):
        raise CassetteError(f"cassette {path} is not a HAR file: the top level is not an object")
    return document


def _entry(path: Path, number: int, entry: Any) -> Recorded:
    where = f"cassette {path} entry {number}"
    try:
        request, response = entry["request"], entry["response"]
        method, url = str(request["method"]).upper(), str(request["url"])
        status = int(response["status"])
        content = response.get("content", {})
        headers = [(str(h["name"]), str(h["value"])) for h in response.get("headers", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise CassetteError(f"{where} is malformed: missing or wrong {exc}") from exc
    if method == "CONNECT":
        raise CassetteError(f"{where} is a CONNECT tunnel, which cannot be replayed")
    post = request.get("postData", {})
    for part in (content, post):
        partial = _PARTIAL.search(str(part.get("comment", "")))
        if partial:
            raise CassetteError(f"{where} ({method} {url}) holds only part of a body: {partial.group()}")
    try:
        body, sent = _body(content), _body(post)
    except (binascii.Error, ValueError) as exc:
        raise CassetteError(f"{where} ({method} {url}): a body is not valid base64") from exc
    # A HAR writer may store a gzip or deflate body decoded (then it notes the compression saved):
    # the answer then goes out decoded, without the Content-Encoding that no longer applies.
    decoded = "compression" in content
    kept = [(n, v) for n, v in headers
            if n.lower() not in _NOT_REPLAYED and not (decoded and n.lower() == "content-encoding")]
    return Recorded(method, url, sent, status, kept, body, f"{path.name} entry {number}")


def _body(part: dict[str, Any]) -> bytes:
    """content.text or postData.text as bytes (HAR 1.2: base64 when ``encoding`` says so)."""
    text = str(part.get("text", ""))
    if part.get("encoding") == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


def recordable(flow: Flow) -> bool:
    """An exchange the proxy forwarded to an origin (not a tunnel, not answered by a rule)."""
    return flow.kind == "http" and flow.upstream_reused is not None and not flow.error


def write(path: Path, flows: Iterable[Flow], *, redact: Iterable[str] = REDACT, capture: int,
          append: bool = False) -> int:
    """Write ``flows`` (the recordable ones) as a HAR cassette; returns how many entries it got.

    Raises CassetteError for a body larger than ``capture`` (the proxy kept only part of it).
    """
    hidden = {name.lower() for name in redact}
    chosen = [_redacted(flow, hidden) for flow in flows if recordable(flow)]
    for flow in chosen:
        if len(flow.request_body) < flow.bytes_up or len(flow.response_body) < flow.bytes_down:
            raise CassetteError(f"cannot record {flow.method} {flow.url} into {path}: its body is larger "
                                f"than the {capture} bytes the proxy keeps of each body")
    document = har_log(chosen, comment="fwdproxy cassette")
    if append and path.exists():
        old = _read(path)
        document["log"]["entries"] = [*old["log"]["entries"], *document["log"]["entries"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return len(chosen)


def _redacted(flow: Flow, hidden: set[str]) -> Flow:
    def clean(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(n, REDACTED if n.lower() in hidden else v) for n, v in fields]
    return dataclasses.replace(flow, request_headers=clean(flow.request_headers),
                               response_headers=clean(flow.response_headers))

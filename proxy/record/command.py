"""``fwdproxy flows``: list, show, export and replay (as curl) what ``--record`` stored.

``flows list FILE`` prints a table (id, method, URL, status, size, time)
with the store's filters; ``flows show FILE ID`` one exchange in full,
bodies decoded and made printable; ``flows export FILE --har OUT`` or
``--jsonl OUT`` (``-``: stdout) what the filters select; ``flows curl FILE
ID`` the request as a curl command line. Output is text for a terminal:
recorded bytes never reach it unescaped.
"""

from __future__ import annotations

import argparse
import http
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

from .bodies import decode, printable, render
from .flows import REDACTED, Flow
from .recording import _atomic_write, export_har, flow_json
from .store import Filters, FlowRow, Reader, StoredFlow, StoreError

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("flows", prog="fwdproxy flows", help="read a recording (--record FILE)",
                                   description="List, show, export and replay flows recorded with "
                                               "`fwdproxy --record FILE.sqlite`.")
    sub = parser.add_subparsers(dest="flows_command", metavar="{list,show,export,curl}", required=True)
    listing = sub.add_parser("list", help="a table of flows")
    listing.add_argument("store", metavar="FILE")
    _add_filters(listing)
    listing.add_argument("--limit", type=int, default=0, help="only the newest N (default: all)")
    show = sub.add_parser("show", help="one flow in full")
    show.add_argument("store", metavar="FILE")
    show.add_argument("id", type=int)
    export = sub.add_parser("export", help="flows as HAR or JSON lines")
    export.add_argument("store", metavar="FILE")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--har", metavar="OUT", help="HAR 1.2 file (written atomically)")
    target.add_argument("--jsonl", metavar="OUT", help="one JSON object per flow; - for stdout")
    _add_filters(export)
    curl = sub.add_parser("curl", help="a flow's request as a curl command line")
    curl.add_argument("store", metavar="FILE")
    curl.add_argument("id", type=int)
    curl.add_argument("--proxy", metavar="URL", help="add -x URL (send it through a proxy again)")
    return parser


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all must match)")
    group.add_argument("--host", metavar="GLOB", help="target host, e.g. '*.example.com'")
    group.add_argument("--method", help="request method")
    group.add_argument("--status", metavar="CODE", help="404, or a class: 5xx; 0 for no response")
    group.add_argument("--grep", metavar="TEXT", help="text in the URL or a header line (any case)")
    group.add_argument("--since", metavar="WHEN",
                       help="30s, 10m, 2h, 1d ago, or a time: 2026-01-31T12:00 (local) or Unix seconds")
    group.add_argument("--kind", help="kind of flow: http, tunnel or local")


def run(ns: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        if ns.flows_command == "list":
            return _list(ns, out)
        if ns.flows_command == "export":
            return _export(ns, out)
        stored = _one(ns)
        text = _show(stored) if ns.flows_command == "show" else curl_command(stored.flow, ns.proxy)
        out.write(text + "\n")
        return 0
    except (StoreError, ValueError) as exc:
        print(f"fwdproxy flows: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `flows list | head`
        return 0


def filters_from(ns: argparse.Namespace) -> Filters:
    return Filters(host=ns.host, method=ns.method, status=ns.status, grep=ns.grep,
                   since=parse_since(ns.since) if ns.since else None, kind=ns.kind)


def parse_since(text: str, now: float | None = None) -> float:
    """'10m' (ago), an ISO 8601 time (local unless it has a zone), or Unix seconds -> Unix seconds."""
    text = text.strip()
    if match := _SINCE.match(text):
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--since takes 30s, 10m, 2h, 1d, an ISO 8601 time or Unix seconds, "
                         f"not {text!r}") from None


def _one(ns: argparse.Namespace) -> StoredFlow:
    with Reader(ns.store) as reader:
        stored = reader.get(ns.id)
    if stored is None:
        raise StoreError(f"{ns.store} has no flow {ns.id}")
    return stored


# -- list -------------------------------------------------------------------------


def _list(ns: argparse.Namespace, out: TextIO) -> int:
    filters = filters_from(ns)
    with Reader(ns.store) as reader:
        rows = reader.list(filters, limit=ns.limit) if ns.limit > 0 else _all_rows(reader, filters)
        # URLs are cut to fit a terminal; piped into another program, lines stay whole.
        width = shutil.get_terminal_size((120, 24)).columns if out.isatty() else 1 << 16
        count = 0
        out.write(_table_line("ID", "METHOD", "URL", "STATUS", "SIZE", "TIME", width) + "\n")
        for row in rows:
            out.write(_row_line(row, width) + "\n")
            count += 1
    if not count:
        print("no flows match", file=sys.stderr)
    return 0


def _all_rows(reader: Reader, filters: Filters, batch: int = 500) -> Iterator[FlowRow]:
    after = 0
    while True:
        rows = reader.list(filters, after_id=after, limit=batch)
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].id


def _row_line(row: FlowRow, width: int) -> str:
    status = str(row.status) if row.status else "-"
    if row.error:
        status += "!"
    size = _size(row.bytes_down) if row.kind != "tunnel" else f"{_size(row.bytes_up)}/{_size(row.bytes_down)}"
    return _table_line(str(row.id), row.method, printable(row.url), status, size,
                       f"{row.duration_ms:.0f}ms", width)


def _table_line(ident: str, method: str, url: str, status: str, size: str, took: str, width: int) -> str:
    fixed = 7 + 1 + 8 + 1 + 6 + 1 + 9 + 1 + 8 + 1
    room = max(width - fixed, 20)
    if len(url) > room:
        url = url[:room - 1] + "…"
    pad = min(room, 60)
    return f"{ident:>7} {method:<8} {url:<{pad}} {status:>6} {size:>9} {took:>8}".rstrip()


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# -- show -------------------------------------------------------------------------


def _show(stored: StoredFlow) -> str:
    f = stored.flow
    when = datetime.fromtimestamp(f.started).astimezone().isoformat(timespec="milliseconds")
    lines = [f"flow {stored.id}  {f.kind}  {when}  client {f.client}  {f.duration_ms:.1f} ms", ""]
    lines.append(printable(f"{f.method} {f.url} {f.http_version}"))
    lines += [printable(f"{name}: {value}") for name, value in f.request_headers]
    lines += _body_lines(f, f.request_body, f.bytes_up, f.request_headers, stored.bodies_dropped)
    lines.append("")
    if f.status:
        lines.append(printable(f"HTTP/1.1 {f.status} {f.reason or _phrase(f.status)}".rstrip()))
        lines += [printable(f"{name}: {value}") for name, value in f.response_headers]
        lines += _body_lines(f, f.response_body, f.bytes_down, f.response_headers, stored.bodies_dropped)
        if f.response_trailers:
            lines += ["", *(printable(f"{name}: {value}") for name, value in f.response_trailers)]
    else:
        lines.append("(no response)")
    lines += ["", _summary(f)]
    lines += [printable(f"rule fired: {rule}") for rule in f.rules]
    return "\n".join(lines)


def _body_lines(f: Flow, body: bytes, size: int, fields: list[tuple[str, str]], dropped: bool) -> list[str]:
    if not size:
        return []
    if f.kind == "tunnel":
        return ["", f"[{size} bytes relayed through the tunnel, unread]"]
    if dropped:
        return ["", f"[{size} bytes; not recorded: the recorder fell behind]"]
    if not body:
        why = "the proxy's own answer" if f.kind == "local" else "body capture was off"
        return ["", f"[{size} bytes; not recorded: {why}]"]
    complete = len(body) >= size
    coding = _field(fields, "content-encoding")
    decoded = decode(body, coding, complete=complete)
    notes = [] if complete else [f"first {len(body)} of {size} bytes recorded"]
    notes += [decoded.note] if decoded.note else []
    head = [f"[{'; '.join(notes)}]"] if notes else []
    return ["", *head, render(decoded.data, _field(fields, "content-type"))]


def _summary(f: Flow) -> str:
    parts = [f"up {f.bytes_up} B", f"down {f.bytes_down} B"]
    if f.wait_ms >= 0:
        parts.append(f"connect {f.connect_ms:.1f} / send {f.send_ms:.1f} / wait {f.wait_ms:.1f} / "
                     f"receive {f.receive_ms:.1f} ms")
    if f.upstream_reused is not None:
        parts.append("upstream reused" if f.upstream_reused else "new upstream connection")
    if f.intercepted:
        parts.append("intercepted (TLS terminated by the proxy)")
    if f.upstream_tls:
        parts.append(f"origin certificate {f.upstream_tls}")
    if f.parent:
        parts.append(f"via parent proxy {f.parent}")
    if f.faults:
        parts.append(f"faults: {', '.join(f.faults)}")
    if f.error:
        parts.append(f"error: {f.error}" + (f" (Proxy-Status {f.error_kind})" if f.error_kind else ""))
    return printable("  ".join(parts))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _field(fields: list[tuple[str, str]], name: str) -> str:
    return next((value for n, value in fields if n.lower() == name), "")


# -- export -----------------------------------------------------------------------


def _export(ns: argparse.Namespace, out: TextIO) -> int:
    filters = filters_from(ns)
    if ns.har:
        count = export_har(Path(ns.store), Path(ns.har), filters)
    else:
        with Reader(ns.store) as reader:
            def write(file: TextIO) -> int:
                n = 0
                for stored in reader.flows(filters):
                    record = flow_json(stored.flow, flow_id=stored.id, secrets=True)  # as stored
                    file.write(json.dumps(record, separators=(",", ":")) + "\n")
                    n += 1
                return n
            count = write(out) if ns.jsonl == "-" else _atomic_write(Path(ns.jsonl), write)
    print(f"exported {count} flows to {ns.har or ns.jsonl}", file=sys.stderr)
    return 0


# -- curl -------------------------------------------------------------------------

# Fields curl sets itself, and hop-by-hop fields meant for the proxy, not the request.
_CURL_SETS = frozenset({"host", "content-length", "transfer-encoding", "connection", "proxy-connection",
                        "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"})


def curl_command(flow: Flow, proxy: str | None = None) -> str:
    """The request as a curl command line (a shell-quoted string), with notes on what it lacks."""
    if flow.kind == "tunnel":
        return f"# flow {flow.url}: a CONNECT tunnel; its bytes were relayed unread, nothing to replay"
    notes = []
    args = ["curl"]
    if proxy:
        args += ["-x", proxy]
    if flow.method == "HEAD":
        args.append("--head")
    elif flow.method != ("POST" if flow.request_body else "GET"):
        args += ["-X", flow.method]
    for name, value in flow.request_headers:
        if name.lower() in _CURL_SETS:
            continue
        if value == REDACTED:
            notes.append(f"# {name} was redacted when recorded (record with --record-secrets to keep it)")
        args += ["-H", f"{name}: {value}"]
    if flow.http_version == "HTTP/1.0":
        args.append("--http1.0")
    command = " ".join(shlex.quote(arg) for arg in args)
    if flow.request_body:
        command += " --data-binary " + _shell_bytes(flow.request_body)
        if len(flow.request_body) < flow.bytes_up:
            notes.append(f"# the body holds the first {len(flow.request_body)} of {flow.bytes_up} bytes")
    elif flow.bytes_up:
        notes.append(f"# the {flow.bytes_up}-byte body was not recorded")
    command += " " + shlex.quote(flow.url)
    return "\n".join([*notes, command])


def _shell_bytes(data: bytes) -> str:
    """Bytes as one shell word: plain quoting for printable text, bash $'...' escapes otherwise."""
    text = data.decode("utf-8", "replace")
    if text.encode() == data and text.isprintable():
        return shlex.quote(text)
    escaped = "".join(chr(b) if 32 <= b < 127 and b not in (39, 92) else f"\\x{b:02x}" for b in data)
    return f"$'{escaped}'"

"""Carrying out rewrite rules on one request: rewriting it, refusing it, or answering from a file.

``rewrite.py`` decides (a Plan, from plain values); this module acts on the
request about to be forwarded: it points a mapped request at its new
target, edits its fields, refuses a blocked one, and answers a map-local
one from the local file with a guessed Content-Type. It runs on the
forward path for every plain request (and every decrypted one, which takes
the same path), before the route to the origin or the parent is chosen.

Map-local never leaves its folder: the path is percent-decoded, a ``..``
segment is refused with 403, and the file found is resolved (symlinks
included) and must still lie inside the folder.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from urllib.parse import unquote

from ..http1.chunked import read_chunked
from ..http1.errors import Forbidden, ProxyError
from ..http1.headers import Headers, persistent_client
from ..record.flows import Flow
from .downstream import Downstream
from .forward import Request
from .rewrite import Plan, Rule, edit_fields, plan, remote_path

FILE_CHUNK = 262144


def carry_out(rules: tuple[Rule, ...], req: Request, client: Downstream, flow: Flow) -> bool | None:
    """Apply the rules matching req; None to go on forwarding it, or whether the connection
    stays usable when a rule answered it (a file). A block raises its error."""
    origin = req.origin
    steps = plan(rules, origin.scheme, origin.host, origin.port, req.path)
    flow.rules += steps.fired
    if steps.answer is None:
        apply(steps, req)
        return None
    if steps.answer.kind == "block":
        raise block(steps.answer)
    return serve_file(steps.answer, req, client, flow)


def apply(steps: Plan, req: Request) -> None:
    """Rewrite ``req`` as a plan without an answering rule says: target, Host, fields."""
    if steps.remote is not None:
        rule = steps.remote
        assert rule.origin is not None
        if rule.keep_host and req.host_header is None:
            req.host_header = req.origin.authority
        req.origin, req.path = rule.origin, remote_path(rule, req.path)
    if steps.request_edits:
        for name, value in steps.request_edits:
            if name.lower() == "host" and value is not None:
                req.host_header = value  # the forward step writes Host itself
        req.headers = Headers(edit_fields(req.headers.items(), steps.request_edits))
    req.response_edits = tuple(steps.response_edits)


def block(rule: Rule) -> ProxyError:
    return ProxyError(f"blocked by rule {rule}", status=rule.status, kind="http_request_denied")


def local_file(rule: Rule, path: str) -> Path:
    """The file a map-local rule answers ``path`` with; 403 for a way out of the folder, else 404."""
    assert rule.local is not None
    if not rule.local.is_dir():
        return rule.local
    bare = path.split("?", 1)[0]
    prefix = rule.glob.path_prefix
    rest = unquote(bare[len(prefix):] if bare.startswith(prefix) else bare)
    parts = [part for part in rest.split("/") if part not in ("", ".")]
    if ".." in parts or "\x00" in rest:
        raise Forbidden(f"{bare} leaves the folder of rule {rule}")
    candidate = rule.local.joinpath(*parts)
    if candidate.is_dir():
        candidate = candidate / "index.html"
    real = candidate.resolve()
    if not real.is_relative_to(rule.local):
        raise Forbidden(f"{bare} leads out of the folder of rule {rule}")
    if not real.is_file():
        raise ProxyError(f"no file for {bare} under rule {rule}", status=404,
                         kind="proxy_internal_response")
    return real


def serve_file(rule: Rule, req: Request, client: Downstream, flow: Flow) -> bool:
    """Answer the request from the rule's file; True if the client connection stays usable."""
    if req.method not in ("GET", "HEAD"):
        raise ProxyError(f"rule {rule} serves files: GET or HEAD only", status=405,
                         kind="proxy_internal_response", headers=(("Allow", "GET, HEAD"),))
    found = local_file(rule, req.path)
    discard_body(req, client)
    keep = persistent_client(req.version, req.headers)  # never with HTTP/1.0 (RFC 9112 9.3)
    content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
    with found.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        fields = edit_fields([("Content-Type", content_type), ("Content-Length", str(size)),
                              ("Cache-Control", "no-store")], req.response_edits)
        if not keep:
            fields.append(("Connection", "close"))
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
        flow.status, flow.response_headers = 200, fields
        client.send(head.encode("latin-1"))
        if req.method == "GET":
            while data := file.read(FILE_CHUNK):
                client.send(data)
                flow.bytes_down += len(data)
                flow.keep("response_body", data, req.capture)
    return keep


def discard_body(req: Request, client: Downstream) -> None:
    """Read the request body a local answer does not need, so the connection stays in step."""
    rfile = client.rfile
    if req.body_length is None:
        for _ in read_chunked(rfile.readline, rfile.read1, rfile.read):
            pass
    elif req.body_length:
        client.read_exact(req.body_length)

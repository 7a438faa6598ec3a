"""Plain HTTP forwarding: one request, client -> origin and back, streamed both ways.

This module owns one exchange on the forward path (RFC 9112 section 3.2.2):
borrow a pooled connection, send the request in origin-form with hop-by-hop
fields removed and Via added, stream the body up, read the response, stream
it down with framing the client can trust, and give the connection back only
if the exchange left it clean. It does not parse the client's head, decide
policy or write error pages: the handler does that with what this raises.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedReader

from ..http1 import responses, upgrade
from ..http1.chunked import LAST_CHUNK, encode_chunk, read_chunked
from ..http1.errors import Abort, BadRequest, UpstreamError, UpstreamTimeout
from ..http1.headers import HOP_BY_HOP, Headers, content_length, end_to_end, http_date, persistent_client
from ..http1.request_head import request_head
from ..http1.target import Origin
from ..record.flows import Flow, elapsed_ms
from .downstream import Downstream
from .expect import origin_answered_first
from .failures import Closed, Step, switch_failure, upstream_failure
from .pool import Pool, UpstreamConnection, UpstreamResponse
from .rewrite import HeaderEdit, edit_fields
from .routing import Parent

# Bodies up to this size are read whole and sent with their head in one write;
# larger ones stream in pieces of up to STREAM_BUFFER bytes.
SMALL_BODY = 65536
STREAM_BUFFER = 262144
# RFC 9110 section 9.2.2: only these may be retried on a fresh connection.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Fields the proxy sets itself on the way up (Host comes from the target).
_REPLACED_UP = ("host", "content-length")
_REPLACED_DOWN = ("content-length",)
_CONTINUE = responses.head(100, [])


@dataclass
class Request:
    """A parsed, validated request ready to go upstream."""

    method: str
    origin: Origin
    path: str  # origin-form, exactly as received
    version: str
    headers: Headers
    body_length: int | None  # None: chunked
    via: str  # this proxy's Via entry, e.g. "1.1 fwdproxy-1a2b3c"
    max_body: int | None = None
    capture: int = 0  # body bytes each way to keep in the flow record
    parent: Parent | None = None  # sent in absolute-form through this parent proxy
    host_header: str | None = None  # kept from before a map-remote rule; None: the origin's
    response_edits: tuple[HeaderEdit, ...] = ()  # header rules for the response
    upgrade: str | None = None  # protocols offered in Upgrade, when the policy lets them through

    @property
    def url(self) -> str:
        return f"{self.origin}{self.path if self.path != '*' else ''}"

    @property
    def hop(self) -> Origin:
        """The pool key: connections go to the parent when there is one (shared by all its origins)."""
        if self.parent is None:
            return self.origin
        return Origin("http", self.parent.host, self.parent.port)

    @property
    def where(self) -> str:
        """The next hop, as error messages name it."""
        return self.origin.authority if self.parent is None else str(self.parent)


@dataclass
class Upgraded:
    """A 101 was relayed: the upstream socket, and bytes the origin sent after its head, for a tunnel."""

    upstream: socket.socket
    early: bytes


def forward(req: Request, client: Downstream, pool: Pool, flow: Flow) -> bool | Upgraded:
    """Carry one request to its origin and the response back; True if the client may send another.

    After a 101 to an Upgrade the policy allowed, returns the upstream socket to relay instead.
    """
    try:
        return _forward(req, client, pool, flow)
    except (UpstreamError, UpstreamTimeout) as exc:
        if req.parent is not None:
            exc.next_hop = req.parent.authority  # RFC 9209 section 2.1.3
        raise


def _forward(req: Request, client: Downstream, pool: Pool, flow: Flow) -> bool | Upgraded:
    expects_continue = req.version == "HTTP/1.1" and "100-continue" in req.headers.tokens("expect")
    body: bytes | None = b""
    if req.body_length is None or req.body_length > SMALL_BODY or (expects_continue and req.body_length):
        body = None  # streamed after the head
    elif req.body_length:
        body = client.read_exact(req.body_length)
        client.rest()
        flow.bytes_up = len(body)
        flow.keep("request_body", body, req.capture)
    # RFC 9110 section 9.2.2: a fresh connection is tried once more when a
    # reused one turns out stale, for idempotent requests whose body we hold.
    retry = body is not None and req.method in IDEMPOTENT
    # Monotonic stamps for the flow's timings (a vDSO call each, no system call).
    asked = time.monotonic()
    conn, reused = _acquire(pool, req, fresh=False)
    while True:
        connected = time.monotonic()
        try:
            resp, clean_upload, sent = _send(conn, req, client, body, flow, expects_continue)
            break
        except Closed as stale:
            conn.close()
            if not (reused and retry):
                raise upstream_failure(Step.RESPONSE, req.where, stale) from stale.__cause__
            conn, reused = _acquire(pool, req, fresh=True)
            retry = False
        except BaseException:
            conn.close()
            raise
    first_byte = time.monotonic()
    flow.upstream_reused = reused
    flow.connect_ms, flow.send_ms = elapsed_ms(asked, connected), elapsed_ms(connected, sent)
    flow.wait_ms = elapsed_ms(sent, first_byte)
    lease = _Lease(pool, conn, resp, clean_upload)
    try:
        if req.parent is not None and resp.status == 407:
            raise _parent_refused(req.parent)
        if resp.status == 101 and req.upgrade:
            return _switch(resp, req, client, flow, lease)
        keep = _relay_response(resp, req, client, flow, lease)
    finally:
        lease.abandon()
        flow.receive_ms = elapsed_ms(first_byte, time.monotonic())
    return keep and clean_upload


class _Lease:
    """A borrowed connection, given back as soon as its response is fully read.

    Giving it back before the last write to the client matters: a client's
    next request (or another client's) may arrive the moment that write lands,
    and should find the connection idle in the pool rather than open a new one.
    """

    def __init__(self, pool: Pool, conn: UpstreamConnection, resp: UpstreamResponse,
                 clean_upload: bool) -> None:
        self.pool, self.conn, self.resp, self.clean_upload = pool, conn, resp, clean_upload
        self.settled = False

    def settle(self) -> None:
        """The response was read to its end: pool the connection if it is reusable."""
        self.settled = True
        self.resp.close()
        self.conn.idle()
        if self.resp.will_close or self.conn.sock is None or not self.clean_upload:
            self.conn.close()
        else:
            self.conn.requests += 1
            self.pool.release(self.conn)

    def detach(self) -> tuple[socket.socket, bytes]:
        """After a 101: take the socket out of http.client, with bytes already read past the head."""
        self.settled = True
        sock = self.conn.detach()
        sock.setblocking(False)
        try:
            early = self.resp.fp.read1(65536) or b""
        except OSError:
            early = b""
        self.resp.close()  # its reader only: the socket is ours now
        return sock, early

    def abandon(self) -> None:
        """The exchange ended early: the connection's state is unknown, so it is closed."""
        if not self.settled:
            self.resp.close()  # its buffered reader holds the socket open otherwise
            self.conn.close()


def _acquire(pool: Pool, req: Request, *, fresh: bool) -> tuple[UpstreamConnection, bool]:
    conn, reused = pool.acquire(req.hop, fresh=fresh)
    if not reused:
        conn.connect()  # raises the error to answer with
    return conn, reused


def _parent_refused(parent: Parent) -> UpstreamError:
    """A parent's 407 is about our credentials, not the client's: never relayed as ours."""
    what = "rejected our credentials" if parent.user else "requires credentials (see --upstream-proxy)"
    return UpstreamError(f"{parent} {what} (407)", kind="http_request_denied")


def _send(conn: UpstreamConnection, req: Request, client: Downstream, body: bytes | None,
          flow: Flow, expects_continue: bool) -> tuple[UpstreamResponse, bool, float]:
    """Send head and body, then read the response head.

    Returns it, whether the upload completed, and when the request was sent (monotonic).
    """
    conn.progress()
    try:
        # RFC 9112 section 3.2.2: absolute-form to a proxy, origin-form to an origin.
        target = req.path if req.parent is None else req.url
        head = request_head(req.method, target, _upstream_fields(req))
        sock = conn.sock
        assert sock is not None  # connected by _acquire, or taken idle from the pool
        sock.sendall(head + body if body else head)
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise Closed() from exc  # a reused connection the origin had closed: retried if safe
    except (ValueError, OSError) as exc:
        raise upstream_failure(Step.SEND, req.where, exc) from exc
    clean_upload = True
    if body is None and expects_continue and origin_answered_first(conn.sock):
        clean_upload = False  # refused before the body: it is neither read nor sent
    elif body is None:
        if expects_continue:
            client.send(_CONTINUE)
        clean_upload = _stream_up(conn, req, client, flow)
    sent = time.monotonic()
    return _read_head(conn, req, retry_safe=body is not None), clean_upload, sent


def _upstream_fields(req: Request) -> list[tuple[str, str]]:
    """The fields sent upstream: Host first, the end-to-end ones as received, then ours and the framing."""
    fields = [("Host", req.host_header or req.origin.authority), *end_to_end(req.headers, _REPLACED_UP)]
    if req.parent is not None and req.parent.authorization:
        fields.append(("Proxy-Authorization", req.parent.authorization))
    fields.append(("Via", req.via))
    if req.upgrade:
        fields += [("Connection", "Upgrade"), ("Upgrade", req.upgrade)]
    if req.body_length is None:
        fields.append(("Transfer-Encoding", "chunked"))
    elif req.body_length or "content-length" in req.headers:
        fields.append(("Content-Length", str(req.body_length)))
    return fields


def _stream_up(conn: UpstreamConnection, req: Request, client: Downstream, flow: Flow) -> bool:
    """Copy the request body to the origin; False if the origin stopped taking it.

    An origin may answer early (413, 401) and close; its response is then
    still read and relayed, and the client connection closed after it.
    """
    rfile = client.rfile
    if req.body_length is None:
        pieces = _client_reads(read_chunked(rfile.readline, rfile.read1, rfile.read))
    else:
        pieces = _client_reads(_read_length(rfile, req.body_length))
    try:
        client.progress()
        for data in pieces:
            client.rest()  # while the origin takes this piece, the client owes nothing
            flow.bytes_up += len(data)
            flow.keep("request_body", data, req.capture)
            if req.max_body is not None and flow.bytes_up > req.max_body:
                raise BadRequest(f"request body larger than {req.max_body} bytes", status=413,
                                 kind="http_request_error")
            conn.progress()
            conn.send(encode_chunk(data) if req.body_length is None else data)
            client.progress()
        if req.body_length is None:
            conn.send(LAST_CHUNK)
        client.rest()
    except OSError as exc:
        if conn.timed_out():
            raise upstream_failure(Step.UPLOAD, req.where, exc, timed_out=True) from exc
        return False
    return True


def _client_reads(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The body's pieces, with a failing client socket reported as the client's fault.

    Without this, a client reset mid-upload would look like the origin
    refusing the body, and the origin would be waited on for nothing.
    """
    try:
        yield from pieces
    except OSError as exc:
        raise BadRequest(f"request body not received: {exc}") from exc


def _read_length(rfile: BufferedReader, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining:
        data = rfile.read1(min(remaining, STREAM_BUFFER))
        if not data:
            raise BadRequest(f"request body ended after {length - remaining} of {length} bytes")
        remaining -= len(data)
        yield data


def _read_head(conn: UpstreamConnection, req: Request, *, retry_safe: bool) -> UpstreamResponse:
    conn.progress()
    sock = conn.sock
    assert sock is not None
    # What HTTPConnection.getresponse() does, without its state machine: the head
    # was written above, not through putrequest(). A response that will close
    # leaves the connection to be closed when it is settled (see _Lease).
    resp = UpstreamResponse(sock, method=req.method)
    try:
        resp.begin()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        resp.close()
        timed_out = conn.timed_out() or isinstance(exc, TimeoutError)
        if retry_safe and not timed_out and isinstance(exc, (http.client.RemoteDisconnected,
                                                              ConnectionResetError)):
            raise Closed() from exc
        raise upstream_failure(Step.RESPONSE, req.where, exc, timed_out=timed_out,
                               waited=conn.read_timeout) from exc
    except BaseException:
        resp.close()
        raise
    return resp


def _relay_response(resp: UpstreamResponse, req: Request, client: Downstream, flow: Flow,
                    lease: _Lease) -> bool:
    """Write the response head and stream its body; True if the client connection stays usable."""
    flow.status, flow.reason = resp.status, resp.reason
    headers, length = _response_framing(resp, req)
    # An upload cut short leaves the client's connection unusable: say so (RFC 9112 section 9.6).
    client_keep = persistent_client(req.version, req.headers) and lease.clean_upload
    for status, reason, fields in resp.informational:
        if req.version == "HTTP/1.1":
            client.send(responses.head(status, fields.items(), reason))
    framing: list[tuple[str, str]] = []
    chunked_down = False
    if length is not None:
        framing.append(("Content-Length", str(length)))
    elif _has_body(resp, req):
        if req.version == "HTTP/1.1":
            framing.append(("Transfer-Encoding", "chunked"))
            chunked_down = True
        else:
            client_keep = False  # HTTP/1.0 client: the body ends when we close
    if req.version == "HTTP/1.1" and not client_keep:
        framing.append(("Connection", "close"))
    resp_fields: Headers = resp.headers  # type: ignore[assignment]
    if chunked_down and resp.chunked:
        framing += [("Trailer", value) for value in resp_fields.get_all("trailer")]
    if "date" not in resp_fields:
        framing.append(("Date", http_date()))  # RFC 9110 section 6.6.1: a forwarded response has one
    framing.append(("Via", _via(resp, req)))
    flow.response_headers = [*headers, *framing]
    head = responses.head(resp.status, [*headers, *framing], resp.reason)
    if not _has_body(resp, req):
        lease.settle()
        client.send(head)
        return client_keep
    if length is not None and length <= SMALL_BODY:
        body = _read_upstream(resp, length, req, lease.conn)
        flow.bytes_down = len(body)
        flow.keep("response_body", body, req.capture)
        lease.settle()
        client.send(head + body)
        return client_keep
    client.send(head)
    _stream_down(resp, req, client, flow, chunked_down, lease.conn)
    lease.settle()
    if chunked_down:
        client.send(_last_chunk(resp.trailers, flow))
    return client_keep


# RFC 9110 section 6.5.1: fields a trailer must not carry (framing, routing,
# authentication, controls); with the hop-by-hop ones they are not passed on.
_NOT_IN_TRAILER = HOP_BY_HOP | {"content-length", "host", "authorization", "set-cookie",
                                "content-type", "content-encoding", "content-range", "cache-control",
                                "expect", "max-forwards", "age", "expires", "date", "location",
                                "retry-after", "vary", "www-authenticate"}


def _last_chunk(trailers: Headers | None, flow: Flow) -> bytes:
    """The last chunk, with the origin's trailer fields (RFC 9112 section 7.1.2) passed on."""
    if not trailers:
        return LAST_CHUNK
    drop = _NOT_IN_TRAILER | trailers.tokens("connection")
    fields = [(name, value) for key, name, value in trailers.fields if key not in drop]
    flow.response_trailers = fields
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return b"0\r\n" + lines.encode("latin-1") + b"\r\n"


def _switch(resp: UpstreamResponse, req: Request, client: Downstream, flow: Flow,
            lease: _Lease) -> Upgraded:
    """Relay a 101 (RFC 9110 section 15.2.2) and hand over the upstream socket for a tunnel."""
    fields: Headers = resp.headers  # type: ignore[assignment]
    assert req.upgrade is not None
    protocol = upgrade.accepted(fields, req.upgrade)
    if protocol is None:
        raise switch_failure(req.where, offered=True)
    flow.status = 101
    framing = [("Connection", "Upgrade"), ("Upgrade", protocol), ("Via", _via(resp, req))]
    headers = end_to_end(fields, _REPLACED_DOWN)
    flow.response_headers = [*headers, *framing]
    upstream, early = lease.detach()
    try:
        client.send(responses.head(101, [*headers, *framing], resp.reason))
    except BaseException:
        upstream.close()
        raise
    return Upgraded(upstream, early)


def _has_body(resp: UpstreamResponse, req: Request) -> bool:
    # RFC 9112 section 6.3 rules 1-2: HEAD, 1xx, 204 and 304 have no body.
    return req.method != "HEAD" and resp.status not in (204, 304) and resp.status >= 200


def _response_framing(resp: UpstreamResponse, req: Request) -> tuple[list[tuple[str, str]], int | None]:
    """End-to-end response fields, and the body length if known (framing was checked in begin())."""
    if resp.status == 101:
        # Upgrade is hop-by-hop and was not forwarded, so a switch is a protocol error.
        raise switch_failure(req.where, offered=False)
    headers: Headers = resp.headers  # type: ignore[assignment]
    fields = end_to_end(headers, _REPLACED_DOWN)
    if req.response_edits:
        fields = edit_fields(fields, req.response_edits)
    if not _has_body(resp, req):
        length = content_length(headers)
        if length is not None and resp.status != 204:
            fields.append(("Content-Length", str(length)))  # HEAD and 304 report the length
        return fields, None
    return fields, resp.length


def _via(resp: UpstreamResponse, req: Request) -> str:
    name = req.via.partition(" ")[2]
    return f"{'1.0' if resp.version == 10 else '1.1'} {name}"


def _read_upstream(resp: UpstreamResponse, n: int, req: Request, conn: UpstreamConnection) -> bytes:
    conn.progress()
    try:
        data = resp.read(n)
    except (http.client.HTTPException, OSError) as exc:
        raise upstream_failure(Step.BODY, req.where, exc, timed_out=conn.timed_out()) from exc
    if len(data) != n:
        raise upstream_failure(Step.BODY, req.where, timed_out=conn.timed_out(),
                               short=(len(data), n))
    return data


def _stream_down(resp: UpstreamResponse, req: Request, client: Downstream, flow: Flow,
                 chunked: bool, conn: UpstreamConnection) -> None:
    """Relay the body as it arrives. A truncated body aborts the client connection.

    The head has gone out already, so a failure here cannot become an error
    page; the client must instead see the connection end early (no final
    chunk, fewer bytes than Content-Length), never a complete-looking response.
    """
    expected = resp.length
    while True:
        conn.progress()
        client.rest()  # waiting on the origin: the client owes nothing meanwhile
        try:
            data = resp.read1(STREAM_BUFFER)
        except (TimeoutError, http.client.HTTPException, OSError) as exc:
            raise Abort(f"{req.where} broke off the response body") from exc
        if not data:
            break
        flow.bytes_down += len(data)
        flow.keep("response_body", data, req.capture)
        client.send(encode_chunk(data) if chunked else data)
    if expected is not None and resp.length:
        raise Abort(f"{req.where} closed after {flow.bytes_down} of {expected} bytes")

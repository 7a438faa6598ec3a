"""ProxyClient: HTTP/1.1 requests through a forward proxy, with redirects, cookies and retries done right.

This module owns a request's life across hops: each hop's route (from
``rules``), a kept-alive connection for it (from ``transport``),
the request's framing, the redirect rules of RFC 9110 section 15.4, an
optional cookie jar, opt-in retries, and the connect, read and total
timeouts. It is built on ``http.client`` and never imports server code.

    with ProxyClient(proxy="http://127.0.0.1:8080") as client:
        resp = client.get("https://example.com/")

Why the CONNECT exchange does not go through ``set_tunnel()``: see the
docstring of ``transport``.
"""

from __future__ import annotations

import email.message
import http.cookiejar
import io
import json as jsonlib
import logging
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, cast

from .. import __version__
from .errors import (
    ClientError,
    ClientTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    InvalidURL,
    ProtocolError,
    ProxyError,
    ReadTimeout,
    RedirectError,
    TLSError,
    TooManyRedirects,
)
from .response import Response, ResponseHeaders
from .rules import (
    IDEMPOTENT,
    REDIRECT_STATUSES,
    URL,
    Mode,
    Retry,
    Route,
    Router,
    Timeout,
    check_redirect,
    parse_retry_after,
    parse_url,
    redirect_headers,
    redirect_method,
    resolve_location,
)
from .transport import (
    Connection,
    Deadline,
    Debug,
    Decoder,
    Dialer,
    Pool,
    Stream,
    show_fields,
    translated,
)

__all__ = [
    "ClientError",
    "ClientTimeout",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "InvalidURL",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ReadTimeout",
    "RedirectError",
    "Response",
    "ResponseHeaders",
    "Retry",
    "TLSError",
    "Timeout",
    "TooManyRedirects",
    "parse_retry_after",
]

log = logging.getLogger("fwdproxy.client")
USER_AGENT = f"fwdproxy/{__version__}"
BodyData = bytes | bytearray | str | IO[bytes] | Iterable[bytes] | None
HeaderData = Mapping[str, str] | Sequence[tuple[str, str]] | None
# A redirect's own body is kept for ``history`` up to this size; past it, the connection is dropped.
REDIRECT_BODY_LIMIT = 1 << 20


class _Body:
    """A request's content: how it is framed, and whether it can be sent again."""

    def __init__(self, data: BodyData) -> None:
        self.start: int | None = None
        self.sent = False
        if isinstance(data, str):
            data = data.encode("utf-8")
        if data is None or isinstance(data, (bytes, bytearray)):
            self.data: Any = bytes(data) if data is not None else None
            self.length: int | None = len(data) if data is not None else 0
        elif hasattr(data, "read"):
            if isinstance(data, io.TextIOBase):
                raise TypeError("a file body must be opened in binary mode")
            file = cast(IO[bytes], data)
            self.data, self.length = file, None
            if file.seekable():
                self.start = file.tell()
                self.length = file.seek(0, os.SEEK_END) - self.start
                file.seek(self.start)
        else:
            self.data, self.length = data, None  # an iterable of bytes: sent chunked, once

    @property
    def empty(self) -> bool:
        return self.data is None

    def rewind(self) -> bool:
        """Make the content ready to send again; False if it cannot be."""
        if not self.sent or self.data is None or isinstance(self.data, bytes):
            return True
        if self.start is not None:
            self.data.seek(self.start)
            return True
        return False

    def framing(self, method: str) -> list[tuple[str, str]]:
        if self.data is None:
            # RFC 9110 section 8.6: say "no content" for methods that expect some.
            return [("Content-Length", "0")] if method in ("POST", "PUT", "PATCH") else []
        if self.length is None:
            return [("Transfer-Encoding", "chunked")]  # RFC 9112 section 7.1
        return [("Content-Length", str(self.length))]


@dataclass
class _Hop:
    method: str
    url: URL
    headers: list[tuple[str, str]]  # the caller's fields, as they stand at this hop
    body: _Body


class _CookieResponse:
    """What CookieJar.extract_cookies needs from a response."""

    def __init__(self, headers: Iterable[tuple[str, str]]) -> None:
        self._msg = email.message.Message()
        for name, value in headers:
            self._msg[name] = value

    def info(self) -> email.message.Message:
        return self._msg


class ProxyClient:
    """An HTTP/1.1 client that reaches targets directly or through a forward proxy; see the README."""

    def __init__(self, proxy: str | None = None, *, ca_file: str | os.PathLike[str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float | Timeout = 10.0,
                 max_redirects: int = 10, follow_redirects: bool = True, trust_env: bool = True,
                 no_proxy: str | None = None, tunnel_http: bool = False, allow_downgrade: bool = False,
                 cookies: http.cookiejar.CookieJar | None = None, retries: Retry | int | None = None,
                 decode_content: bool = False, debug: bool = False, headers: HeaderData = None,
                 max_idle_per_route: int = 8) -> None:
        if ca_file is not None and ssl_context is not None:
            raise ValueError("pass ca_file or ssl_context, not both")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        self.router = Router.from_settings(proxy, environ=os.environ if trust_env else None,
                                           no_proxy=no_proxy, tunnel_http=tunnel_http)
        self.timeout = Timeout.of(timeout)
        self.max_redirects = max_redirects
        self.follow_redirects = follow_redirects
        self.allow_downgrade = allow_downgrade
        self.cookies = cookies
        self.retries = Retry(total=retries) if isinstance(retries, int) else retries
        self.decode_content = decode_content
        self.headers = [("User-Agent", USER_AGENT), ("Accept", "*/*")]
        self.headers = _merge(self.headers, headers)
        self._debug: Debug = _log_debug if debug else _quiet
        context: ssl.SSLContext | Callable[[], ssl.SSLContext] = ssl_context or ssl.create_default_context
        if ca_file is not None:
            context = ssl.create_default_context(cafile=os.fspath(ca_file))
        self.pool = Pool(max_idle_per_route)
        self.dialer = Dialer(context, user_agent=USER_AGENT, debug=self._debug)

    # -- public API ----------------------------------------------------------

    def request(self, method: str, url: str, *, body: BodyData = None, json: Any = None,
                headers: HeaderData = None, timeout: float | Timeout | None = None,
                follow_redirects: bool | None = None) -> Response:
        """Send a request, follow its redirects, and return the final response with its body read."""
        with self.stream(method, url, body=body, json=json, headers=headers, timeout=timeout,
                         follow_redirects=follow_redirects) as resp:
            resp.read()
        return resp

    @contextmanager
    def stream(self, method: str, url: str, *, body: BodyData = None, json: Any = None,
               headers: HeaderData = None, timeout: float | Timeout | None = None,
               follow_redirects: bool | None = None) -> Iterator[Response]:
        """Like request(), but the body is read by iterating the response (``for chunk in resp``)."""
        fields = _merge(self.headers, headers)
        if json is not None and body is not None:
            raise ValueError("pass body or json, not both")
        if json is not None:
            body = jsonlib.dumps(json).encode()
            if not any(name.lower() == "content-type" for name, _ in fields):
                fields.append(("Content-Type", "application/json"))
        hop = _Hop(method.upper(), parse_url(url), fields, _Body(body))
        limits = Timeout.of(timeout) if timeout is not None else self.timeout
        follow = self.follow_redirects if follow_redirects is None else follow_redirects
        resp = self._follow(hop, limits, follow)
        try:
            yield resp
        finally:
            resp.close()

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> Response:
        return self.request("HEAD", url, **kw)

    def post(self, url: str, **kw: Any) -> Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Response:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> Response:
        return self.request("DELETE", url, **kw)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ProxyClient proxy={self.router.describe()} {self.pool!r}>"

    # -- redirects (RFC 9110 section 15.4) ------------------------------------

    def _follow(self, hop: _Hop, limits: Timeout, follow: bool) -> Response:
        deadline = Deadline(limits.total)
        history: list[Response] = []
        seen: set[tuple[str, str, str | None]] = set()
        while True:
            seen.add(self._state(hop))
            resp = self._send_retrying(hop, limits, deadline)
            resp.history = list(history)
            try:
                nxt = self._next_hop(hop, resp) if follow else None
            except RedirectError as exc:
                resp.close()
                exc.response, exc.history = resp, history
                raise
            if nxt is None:
                return resp
            resp.read(REDIRECT_BODY_LIMIT)
            history.append(resp)
            if len(history) > self.max_redirects:
                raise TooManyRedirects(f"more than {self.max_redirects} redirects, last to {nxt.url}",
                                       response=resp, history=history)
            if self._state(nxt) in seen:
                # The same request again with no state changed (no new cookie): a loop.
                raise TooManyRedirects(f"redirect loop: {nxt.method} {nxt.url} was already requested",
                                       response=resp, history=history)
            self._debug(f"* redirect {resp.status}: {hop.method} {hop.url} -> {nxt.method} {nxt.url}")
            hop = nxt

    def _next_hop(self, hop: _Hop, resp: Response) -> _Hop | None:
        if resp.status not in REDIRECT_STATUSES:
            return None
        new = resolve_location(hop.url, resp.headers.get("Location"))
        if new is None:
            return None  # no usable Location: the 3xx is the answer
        check_redirect(hop.url, new, allow_downgrade=self.allow_downgrade)
        method, keep_body = redirect_method(resp.status, hop.method)
        if keep_body and not hop.body.rewind():
            raise RedirectError(f"cannot repeat the request body for the {resp.status} redirect to {new}: "
                                "it was an iterator or an unseekable stream; pass bytes or a seekable file")
        body = hop.body if keep_body else _Body(None)
        return _Hop(method, new, redirect_headers(hop.headers, hop.url, new, keep_body), body)

    def _state(self, hop: _Hop) -> tuple[str, str, str | None]:
        return hop.method, hop.url.absolute, self._cookie_header(hop)

    # -- retries ---------------------------------------------------------------

    def _send_retrying(self, hop: _Hop, limits: Timeout, deadline: Deadline) -> Response:
        attempt = 0
        while True:
            try:
                resp = self._send(hop, limits, deadline)
            except (ConnectError, ProtocolError, ReadTimeout, ProxyError) as exc:
                if not self._may_retry(hop, attempt, exc):
                    raise
                assert self.retries is not None
                delay, why = self.retries.delay(attempt), str(exc)
            else:
                self._store_cookies(hop, resp)
                if not self._may_retry(hop, attempt, resp):
                    return resp
                assert self.retries is not None
                delay, why = self.retries.delay(attempt, resp.headers.get("Retry-After")), str(resp.status)
                resp.read(REDIRECT_BODY_LIMIT)
            attempt += 1
            self._debug(f"* retry {attempt} of {hop.method} {hop.url} in {delay:.2f}s after {why}")
            time.sleep(deadline.clamp(delay, ReadTimeout))

    def _may_retry(self, hop: _Hop, attempt: int, outcome: Response | ClientError) -> bool:
        retry = self.retries
        if retry is None or attempt >= retry.total or hop.method not in retry.methods:
            return False
        if isinstance(outcome, (Response, ProxyError)) and outcome.status not in retry.statuses:
            return False
        return hop.body.rewind()

    # -- one hop -----------------------------------------------------------------

    def _send(self, hop: _Hop, limits: Timeout, deadline: Deadline) -> Response:
        route = self.router.route(hop.url)
        conn = self.pool.take(route)
        if conn is not None:
            try:
                return self._exchange(conn, hop, limits, deadline)
            except ConnectionClosed:
                # RFC 9110 section 9.2.2: only an idempotent request may be sent again.
                if hop.method not in IDEMPOTENT or not hop.body.rewind():
                    raise
                self._debug(f"* the server had closed the kept-alive connection; retrying {hop.method} once")
        return self._exchange(self._open(route, limits, deadline), hop, limits, deadline)

    def _open(self, route: Route, limits: Timeout, deadline: Deadline) -> Connection:
        conn = Connection(route, self.dialer)
        conn.connect_timeout = deadline.clamp(limits.connect, ConnectTimeout)
        conn.read_timeout = limits.read
        conn.connect()
        self.pool.opened += 1
        return conn

    def _exchange(self, conn: Connection, hop: _Hop, limits: Timeout, deadline: Deadline) -> Response:
        route = conn.route
        target = hop.url.absolute if route.mode is Mode.FORWARD else hop.url.target
        fields = self._fields(hop, route)
        self._debug(f"> {hop.method} {target} HTTP/1.1")
        show_fields(self._debug, ">", fields)
        try:
            assert conn.sock is not None
            conn.sock.settimeout(deadline.clamp(limits.read, ReadTimeout))
            with translated(f"{hop.method} {hop.url} ({route})"):
                conn.putrequest(hop.method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in fields:
                    conn.putheader(name, value)
                hop.body.sent = not hop.body.empty
                conn.endheaders(hop.body.data, encode_chunked=hop.body.length is None)
                raw = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        conn.requests += 1
        version = "HTTP/1.0" if raw.version == 10 else "HTTP/1.1"
        self._debug(f"< {version} {raw.status} {raw.reason}")
        show_fields(self._debug, "<", raw.getheaders())
        coding = raw.getheader("Content-Encoding", "").strip().lower()
        decoder = Decoder(coding) if self.decode_content and coding in ("gzip", "x-gzip", "deflate") else None
        resp = Response(hop.method, str(hop.url), raw.status, raw.reason, version,
                        ResponseHeaders(raw.getheaders()),
                        _stream=Stream(conn, raw, self.pool, deadline, limits.read, decoder))
        if route.mode is Mode.FORWARD and resp.status == 407:
            # Only a proxy answers 407 (RFC 9110 section 15.5.8); it is not the target's response.
            resp.read(4096)
            raise ProxyError(f"proxy {route.proxy} requires authentication: 407 {resp.reason}",
                             status=407, reason=resp.reason, headers=list(resp.headers), body=resp.body)
        return resp

    def _fields(self, hop: _Hop, route: Route) -> list[tuple[str, str]]:
        """The header section for this hop: Host first, the caller's fields, then what the hop adds."""
        own = {"host", "content-length", "transfer-encoding", "proxy-authorization", "cookie"}
        names = {name.lower() for name, _ in hop.headers}
        host = next((v for n, v in hop.headers if n.lower() == "host"), hop.url.authority)
        fields = [("Host", host)] + [(n, v) for n, v in hop.headers if n.lower() not in own]
        if "accept-encoding" not in names:
            fields.append(("Accept-Encoding", "gzip, deflate" if self.decode_content else "identity"))
        if "authorization" not in names and hop.url.basic_auth():
            fields.append(("Authorization", hop.url.basic_auth() or ""))
        cookie = self._cookie_header(hop)
        if cookie:
            fields.append(("Cookie", cookie))
        if route.mode is Mode.FORWARD and route.proxy is not None:
            # Proxy credentials go on every forwarded request, and only to the
            # proxy: for a tunnel they were on the CONNECT.
            auth = next((v for n, v in hop.headers if n.lower() == "proxy-authorization"),
                        route.proxy.authorization)
            if auth:
                fields.append(("Proxy-Authorization", auth))
        return fields + hop.body.framing(hop.method)

    # -- cookies -------------------------------------------------------------------

    def _cookie_header(self, hop: _Hop) -> str | None:
        given = next((v for n, v in hop.headers if n.lower() == "cookie"), None)
        if self.cookies is None:
            return given
        req = urllib.request.Request(hop.url.absolute, method=hop.method,
                                     headers={"Cookie": given} if given else {})
        self.cookies.add_cookie_header(req)
        return req.get_header("Cookie")

    def _store_cookies(self, hop: _Hop, resp: Response) -> None:
        if self.cookies is not None:
            req = urllib.request.Request(hop.url.absolute, method=hop.method)
            self.cookies.extract_cookies(_CookieResponse(resp.headers), req)  # type: ignore[arg-type]


def _quiet(line: str) -> None:
    pass


def _log_debug(line: str) -> None:
    log.debug("%s", line)


def _merge(base: Sequence[tuple[str, str]], extra: HeaderData) -> list[tuple[str, str]]:
    """``base`` with every field named in ``extra`` replaced by extra's."""
    if not extra:
        return list(base)
    pairs = list(extra.items()) if isinstance(extra, Mapping) else list(extra)
    names = {name.lower() for name, _ in pairs}
    return [(n, v) for n, v in base if n.lower() not in names] + pairs

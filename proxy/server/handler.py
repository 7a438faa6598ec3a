"""ProxyHandler: one client connection, request after request; orchestration only.

Each step lives elsewhere (head parsing and validation in ``http1.headers``,
targets in ``http1.target``, access rules in ``policy``, dialling in
``connect``, forwarding in ``forward``, tunnels in ``tunnel``, every response
head in ``http1.responses``); this class reads a head under a deadline, checks
it against the policy, routes it, turns a ProxyError into a one-line error
response, and records a Flow per exchange. Where a connection is (idle, in a
head, in an exchange, handed to the relay) is one ``Phase``. It overrides ``handle_one_request`` because the
stdlib's answers unknown methods with 501 and parses heads leniently, both
wrong for a proxy.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import json
import logging
import re
import socket
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import cast

from ..http1 import maxforwards, responses, upgrade
from ..http1.chunked import read_chunked
from ..http1.errors import Abort, AuthRequired, BadRequest, Forbidden, LoopDetected, ProxyError
from ..http1.headers import (
    Headers,
    RequestLine,
    content_length,
    parse_request_line,
    persistent_client,
    read_section,
    request_body_length,
)
from ..http1.target import Origin, parse_absolute, parse_authority
from ..record import metrics
from ..record.flows import Flow, elapsed_ms
from ..tls.stream import TLSStream
from . import intercept, pac, rewriting
from .connect import dial
from .downstream import Downstream
from .faults import Exchange
from .faults import Request as FaultRequest
from .forward import SMALL_BODY, Request, Upgraded, forward
from .policy import check_connect_port, check_credentials, client_allowed
from .rewrite import tunnel_block
from .shaping import ShapedDownstream, fail_handshake
from .shared import ServerBase

log = logging.getLogger("fwdproxy")

_ESTABLISHED = responses.head(200, [], "Connection Established")
_HINT = ("this is a forward proxy: send absolute-form requests (GET http://host/path) "
         "or CONNECT host:port; GET /healthz reports status, GET /metrics counts traffic, "
         "GET /proxy.pac is a PAC file")
# RFC 9112 section 2.2: empty lines before a request line are ignored (a few).
_MAX_EMPTY_LINES = 4
_USERINFO = re.compile(r"(?<=://)[^/?#@]*@")


class Phase(enum.Enum):
    """Where a client connection is. Only its handler's thread moves it; others may read it."""

    IDLE = "idle"  # between requests: waiting up to client_idle_timeout for a first byte
    HEAD = "head"  # a request head is arriving: all of it within header_timeout
    EXCHANGE = "exchange"  # the head is in: the request is being carried out
    RELAYED = "relayed"  # a tunnel: the relay owns the socket and records the flow

    def __repr__(self) -> str:
        return self.name


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ServerBase

    def setup(self) -> None:
        super().setup()
        host, port = self.client_address[:2]
        self.client_ip = host
        self.client_label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        assert isinstance(self.rfile, io.BufferedReader)  # StreamRequestHandler.rbufsize is -1
        # Blocking socket, no socket timeout: the watchdog enforces every phase's deadline.
        self.connection.settimeout(None)
        self.deadline = self.server.watchdog.watch(self.connection)
        self.downstream = Downstream(self.rfile, self.connection, self.deadline,
                                     self.server.config.timeout)
        self.phase = Phase.IDLE
        self.parked = False  # handed to the server's scheduler between requests
        self.requeued = False  # ... with its next request here, to be served in turn
        self.tracked = False  # in the server's set of live clients
        self.head_buffered = False  # the next request's whole head is in the read buffer
        self.body_buffered = 0  # ... and this many bytes after it (the start of a body, say)
        self._start = 0.0
        # Set once a CONNECT is intercepted: requests then come over TLS, all for this origin.
        self.intercepted: Origin | None = None
        self.tls: TLSStream | None = None
        self._tunnel_flow: Flow | None = None
        self._tunnel_auth: str | None = None

    @property
    def busy(self) -> bool:
        """Mid-exchange: from a request's first byte until its flow is recorded (see ProxyServer.drain)."""
        return self.phase is Phase.HEAD or self.phase is Phase.EXCHANGE

    def handle(self) -> None:
        """Serve requests until the connection closes, or park it while it waits for the next one."""
        if not self.tracked:
            self.server.track(self)
            self.tracked = True
        self.parked = False
        try:
            self.close_connection = False
            waiting = self.requeued  # requeued: its next request is here, and is served first
            self.requeued = False
            turn_taken = False  # one request per turn at least
            while not self.close_connection:
                if not waiting and self._park(yield_turn=turn_taken):
                    return  # the server's scheduler holds it now, and calls resume() when it is readable
                waiting = False
                if self.head_buffered:
                    self.handle_one_request()
                else:  # reading the head may wait on the client (a slow one, or slowloris):
                    with self.server.detached():  # it must not hold the scheduler's slot meanwhile
                        self.handle_one_request()
                turn_taken = True
        finally:
            if not self.parked:
                self.server.untrack(self)
                self.tracked = False

    def resume(self) -> None:
        """Continue a parked connection on this thread (its socket is readable, or cut)."""
        try:
            self.handle()
        finally:
            self.finish()

    def fileno(self) -> int:
        return int(self.connection.fileno())

    def _park(self, *, yield_turn: bool) -> bool:
        """Before each request: hand the connection to the scheduler if nothing of it has arrived.

        Only with an empty read buffer, so no byte of the next request is held
        by this handler: a readable socket then means a request is arriving (or
        the client left, or the watchdog cut the read side at the idle timeout).
        """
        self.head_buffered, self.body_buffered = False, 0
        if self.server.stopping:
            return False
        self.deadline.arm_read(self.server.config.client_idle_timeout)  # a waiting client's idle timeout
        if self.tls is not None:  # an intercepted tunnel's TLS layer may hold decrypted bytes: wait here
            with self.server.detached():  # ... without counting as one of the scheduler's busy threads
                with contextlib.suppress(OSError, ValueError):
                    self.downstream.rfile.peek(1)  # errors show again in _await_request
            return False
        sock = self.connection
        sock.setblocking(False)
        try:
            buffered = self.downstream.rfile.peek(1)  # the buffer, else one non-blocking read into it
            if buffered:
                end = buffered.find(b"\r\n\r\n")
                self.head_buffered = end >= 0
                self.body_buffered = len(buffered) - end - 4 if end >= 0 else 0
                return yield_turn and self._take_turn()
            # Nothing read: either nothing has come yet, or the client has closed.
            sock.recv(1, socket.MSG_PEEK)
            return False  # a close (or a byte that came just now): read it here
        except BlockingIOError:
            pass  # nothing yet: park
        except OSError:
            return False  # let the blocking path see the error and close
        finally:
            sock.settimeout(None)
        self.parked = self.server.park(self)
        return self.parked

    def _take_turn(self) -> bool:
        """The next request is here: serve it now, unless other connections wait for a thread."""
        if not self.server.others_waiting():
            return False
        self.requeued = self.parked = self.server.park(self)
        return self.parked

    def finish(self) -> None:
        if self.parked:
            return  # the connection lives on in the scheduler
        if self.tls is not None and self._tunnel_flow is not None:  # an intercepted tunnel ends
            self.tls.close_notify()
            flow = self._tunnel_flow
            flow.bytes_up, flow.bytes_down = self.tls.bytes_in, self.tls.bytes_out
            flow.duration_ms = round((time.time() - flow.started) * 1000, 2)
            self.server.flows.emit(flow)
        self.server.watchdog.forget(self.deadline)
        super().finish()

    def handle_one_request(self) -> None:
        self.close_connection = True
        if not self._await_request():
            return
        self._start = start = time.monotonic()
        # From its first byte, the whole head must arrive within header_timeout;
        # only the read side is cut, so a 408 can still be written.
        self.deadline.arm_read(self.server.config.header_timeout)
        self.phase = Phase.HEAD
        flow = Flow(kind="http", client=self.client_label, method="-", url="-")
        try:
            self.close_connection = not self._exchange(flow)
        except ProxyError as exc:
            self._refuse(exc, flow)
        except Abort as exc:
            flow.error = str(exc)
        except OSError as exc:  # the client's socket failed while we read from it
            flow.error = f"client connection failed: {exc}"
        except Exception:
            log.exception("internal error on %s %s", flow.method, flow.url)
            flow.status, flow.error, flow.error_kind = 500, "internal error", ProxyError.kind
            self._send_error(ProxyError("internal error; see the proxy's log"))
        finally:
            if self.phase is not Phase.RELAYED:
                if flow is not self._tunnel_flow:  # an intercepted tunnel's is emitted when it ends
                    flow.finish(start)
                    self.server.flows.emit(flow)
                self.phase = Phase.IDLE  # after the flow is recorded: see ProxyServer.busy()
            if self.server.stopping:
                self.close_connection = True

    def _refuse(self, exc: ProxyError, flow: Flow) -> None:
        """Answer a failed request with its error, unless the watchdog already cut the client off."""
        config = self.server.config
        if self.deadline.fired and self.phase is not Phase.HEAD:
            if not self.deadline.write_side_open or flow.status:  # the socket is cut: nobody to tell
                flow.error = f"client made no progress for {config.timeout:g}s"
                return
            # A body that stopped arriving, before any response: the client can still read why.
            exc = BadRequest(f"request body not received within {config.timeout:g}s", status=408)
        elif self.deadline.fired:  # the watchdog cut the head short: say so, not "malformed"
            exc = BadRequest(f"request head not received within {config.header_timeout:g}s", status=408)
        flow.status, flow.error, flow.error_kind = exc.status, exc.reason, exc.kind
        self._send_error(exc, head_only=flow.method == "HEAD")

    def _await_request(self) -> bool:
        """Wait (up to the idle timeout) for the next request's first byte; False if none comes."""
        self.deadline.arm_read(self.server.config.client_idle_timeout)  # a cut read ends the wait
        try:
            return bool(self.downstream.rfile.peek(1))
        except OSError:
            return False  # reset between requests: just close

    def _read_head(self) -> tuple[RequestLine, Headers]:
        limits = self.server.limits
        for _ in range(_MAX_EMPTY_LINES + 1):
            raw = self.rfile.readline(limits.request_line + 1)
            if raw not in (b"\r\n", b"\n"):
                break
        line = parse_request_line(raw, limits)
        self.command, self.path, self.request_version = line.method, line.target, line.version
        self.requestline = raw[:-2].decode("ascii")
        headers = read_section(self.downstream.rfile, limits)
        self.phase = Phase.EXCHANGE
        # From here Downstream sets the deadline before each blocking call on the
        # client; while the origin is being waited for, the client owes nothing.
        self.deadline.clear()
        return line, headers

    def _exchange(self, flow: Flow) -> bool:
        """Read, check, route and carry out one request; True if the connection may be reused."""
        line, headers = self._read_head()
        flow.method, flow.url = line.method, _USERINFO.sub("", line.target)
        flow.http_version = line.version
        if len(headers.get_all("host")) > 1:
            raise BadRequest("more than one Host header")  # RFC 9112 section 3.2
        if self.intercepted is not None:  # admitted at CONNECT; every request goes to its origin
            self._check_loop(headers)
            flow.intercepted = True
            return self._forward(line, headers, flow,
                                 *intercept.inner_target(self.intercepted, line.target, line.method))
        if line.target.startswith("/") or line.target == "*":
            return self._local(line, headers, flow)
        self._admit(headers)
        if line.method == "CONNECT":
            return self._tunnel(line, headers, flow)
        return self._forward(line, headers, flow, *parse_absolute(line.target, line.method))

    def _admit(self, headers: Headers) -> None:
        """Client network, credentials and loop checks; each refusal raises its status."""
        config = self.server.config
        if not self.server.live.admits(self.client_ip):  # per exchange: SIGHUP may change it
            raise Forbidden(f"client {self.client_ip} is not allowed to use this proxy")
        if config.auth:
            check_credentials(headers.get("proxy-authorization"), config.auth)
        self._check_loop(headers)

    def _check_loop(self, headers: Headers) -> None:
        for via in headers.get_all("via"):
            if self.server.via_name in via:
                raise LoopDetected("request already passed through this proxy (Via)")

    def _forward(self, line: RequestLine, headers: Headers, flow: Flow, origin: Origin, path: str) -> bool:
        """One request (plain, https://, or inside an intercepted tunnel), shaped by fault rules if any."""
        left = maxforwards.remaining(line.method, headers)
        if left == 0:
            return self._answer_as_final_recipient(line, headers, flow, origin, path)
        if left is not None:
            headers = maxforwards.counted_down(headers, left - 1)
        req = self._request(line, headers, flow, origin, path)
        downstream = self.downstream
        if self.server.faults:
            shaped = self._apply_faults(line.method, req.origin.host, req.path, headers, flow, req)
            if shaped is None:
                return False  # answered by a fault rule
            downstream = shaped
        if self.server.rules:
            answered = rewriting.carry_out(self.server.rules, req, downstream, flow)
            if answered is not None:
                return answered
        parent = self.server.connect.parent_for(req.origin.host, req.origin.port)
        flow.parent = parent.authority if parent else ""
        # Plain HTTP goes to the parent in absolute-form; an https:// origin (TLS with the
        # origin itself) is reached through a CONNECT to the parent, by the pool's dialler.
        req.parent = parent if req.origin.scheme == "http" else None
        if req.body_length == 0 or (req.body_length is not None and req.body_length <= self.body_buffered):
            result = forward(req, downstream, self.server.pool, flow)
        else:  # reading the body may wait on the client (a slow upload): not in the scheduler's slot
            with self.server.detached():
                result = forward(req, downstream, self.server.pool, flow)
        if isinstance(result, Upgraded):
            self._relay(result.upstream, result.early, flow)
            return False
        return result

    def _answer_as_final_recipient(self, line: RequestLine, headers: Headers, flow: Flow, origin: Origin,
                                   path: str) -> bool:
        """OPTIONS or TRACE with Max-Forwards: 0 stop here (RFC 9110 section 7.6.2)."""
        self.server.host_rules.check(origin.host)
        flow.host, flow.port, flow.path = origin.host, origin.port, path
        flow.request_headers = _redacted(headers)
        self._discard_body(request_body_length(headers, line.version))
        content_type, body, fields = maxforwards.final_answer(line.method, self.requestline, headers)
        keep = persistent_client(line.version, headers)
        self._send(responses.own(200, body, content_type, head_only=False, close=not keep, extra=fields))
        flow.status, flow.bytes_down = 200, len(body)
        return keep

    def _request(self, line: RequestLine, headers: Headers, flow: Flow, origin: Origin, path: str) -> Request:
        """The request to forward: an allowed target, a body within limits, our Via entry."""
        config = self.server.config
        self.server.host_rules.check(origin.host)
        if origin.scheme == "https":
            flow.upstream_tls = "unverified" if config.upstream_insecure else "verified"
        flow.host, flow.port, flow.path = origin.host, origin.port, path
        flow.request_headers = _redacted(headers)
        length = request_body_length(headers, line.version)
        if config.max_body is not None and length is not None and length > config.max_body:
            raise BadRequest(f"request body larger than {config.max_body} bytes", status=413)
        req = Request(line.method, origin, path, line.version, headers, length,
                      via=f"{line.version[5:]} {self.server.via_name}", max_body=config.max_body,
                      capture=config.capture_bodies,
                      # The relay moves raw bytes: an upgrade over TLS (https://, or inside an
                      # intercepted tunnel) is not offered, so Upgrade is dropped as hop-by-hop.
                      upgrade=None if origin.scheme == "https" else upgrade.offered(headers,
                                                                                    config.upgrade_protocols))
        flow.url = req.url
        return req

    def _tunnel(self, line: RequestLine, headers: Headers, flow: Flow) -> bool:
        flow.kind = "tunnel"
        host, port = parse_authority(line.target)
        flow.host, flow.port = host, port
        flow.request_headers = _redacted(headers)
        self.server.host_rules.check(host)
        check_connect_port(port, self.server.config.allowed_connect_ports)
        if "transfer-encoding" in headers or content_length(headers):
            raise BadRequest("a CONNECT request has no body")  # RFC 9110 section 9.3.6
        interception = self.server.interception
        intercepting = interception is not None and interception.wants(host)
        if self.server.faults:
            self._apply_faults("CONNECT", host, "", headers, flow, None, intercepting=intercepting)
        blocked = tunnel_block(self.server.rules, host, port) if self.server.rules else None
        if blocked is not None:
            flow.rules.append(str(blocked))
            raise rewriting.block(blocked)
        parent = self.server.connect.parent_for(host, port)
        flow.parent = parent.authority if parent else ""
        if interception is not None and intercepting:
            self._tunnel_auth = headers.get("proxy-authorization")  # it covers the requests inside
            return self._intercept(interception, host, port, flow)
        # The client's Via goes on in our CONNECT to a parent, so a loop through parents is seen.
        connect = functools.partial(self.server.connect, via=headers.get_all("via"))
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        asked = time.monotonic()
        upstream = dial(connect, host, port, self.server.config.connect_timeout, where)
        flow.connect_ms = elapsed_ms(asked, time.monotonic())
        try:
            self.downstream.send(_ESTABLISHED)
        except BaseException:
            upstream.close()
            raise
        flow.status = 200
        self._relay(upstream, b"", flow)
        return False

    def _relay(self, upstream: socket.socket, early_down: bytes, flow: Flow) -> None:
        """Hand both sockets to the tunnel relay (after CONNECT's 200 or an Upgrade's 101)."""
        self.deadline.clear()
        # From here the relay owns both sockets and records the flow when the tunnel ends.
        self.server.relay_tunnel(self.connection, upstream, self._buffered_bytes(), flow, self._start,
                                 early_down=early_down)
        self.phase = Phase.RELAYED

    def _intercept(self, interception: intercept.Interception, host: str, port: int, flow: Flow) -> bool:
        """Answer 200; decrypt if the client starts TLS and serve its requests here, else relay blindly."""
        self.downstream.send(_ESTABLISHED)
        flow.status = 200
        self.deadline.clear()
        early = intercept.first_bytes(self.connection, self._buffered_bytes(), interception.first_bytes_wait)
        if not intercept.is_tls(early):
            try:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                upstream = dial(self.server.connect, host, port, self.server.config.connect_timeout, where)
            except ProxyError as exc:  # 200 is said already: all that is left is to close
                raise Abort(exc.reason) from None
            self.server.relay_tunnel(self.connection, upstream, early, flow, self._start)
            self.phase = Phase.RELAYED
            return False
        flow.intercepted = True
        stream = interception.accept(self.connection, early, host, self.deadline,
                                     self.server.config.header_timeout, self.client_label)
        self.rfile.close()  # emptied into ``early``; it holds a reference to the socket
        # The TLS stream has the socket calls the handler and Downstream use (sendall,
        # shutdown, setsockopt, makefile), so the rest of this connection speaks through it.
        self.tls, self.connection, self.rfile = stream, cast(socket.socket, stream), stream.makefile("rb")
        self.downstream = Downstream(self.rfile, self.connection, self.deadline, self.server.config.timeout)
        self.intercepted, self._tunnel_flow = Origin("https", host, port), flow
        self.server.flows.emit_opened(flow)
        return True

    def _apply_faults(self, method: str, host: str, path: str, headers: Headers, flow: Flow,
                      req: Request | None, *, intercepting: bool = False) -> Downstream | None:
        """Carry out the fault plan for this request (see faults.py and shaping.py).

        Returns the client side to forward through (shaped as the plan says),
        or None when a rule answered the request itself. Raises the error a
        rule calls for (407, a refused CONNECT, an injected failure, a close).
        """
        faults = self.server.faults
        body = self._preread(req) if req is not None and faults.wants_body else None
        exchange = Exchange.TUNNEL if req is None else Exchange.HTTP
        plan = faults.plan(FaultRequest(exchange, method, host, path, flow.url, body, intercepting))
        flow.faults += plan.fired
        if plan.delay and not intercepting:  # an intercepted tunnel's requests are delayed one by one
            time.sleep(plan.delay)
        if plan.auth:
            # Inside an intercepted tunnel the credentials are the ones sent with its CONNECT.
            credentials = self._tunnel_auth if self.intercepted else headers.get("proxy-authorization")
            check_credentials(credentials, [plan.auth])
        if plan.error:
            raise plan.error
        if plan.close:
            raise Abort("connection closed without a response by a fault rule")
        if plan.tls_failure:
            flow.status = 200
            fail_handshake(self.downstream, _ESTABLISHED)
        if req is not None and plan.answer:
            if body is None:
                self._discard_body(req.body_length, flow, req.capture)
            else:
                flow.bytes_up = len(body)
                flow.keep("request_body", body, req.capture)
            answer = plan.answer
            self._send_response(answer.status, answer.body, answer.headers, flow, head_only=method == "HEAD")
            return None
        if not plan.shape and body is None:
            return self.downstream
        return ShapedDownstream(self.downstream, plan.shape, body)

    def _preread(self, req: Request) -> bytes | None:
        """A small request body, read ahead so a replay can match on it (forwarded from memory)."""
        expects_continue = "100-continue" in req.headers.tokens("expect")
        if req.body_length is None or req.body_length > SMALL_BODY or expects_continue:
            return None
        return self.downstream.read_exact(req.body_length) if req.body_length else b""

    def _discard_body(self, length: int | None, flow: Flow | None = None, capture: int = 0) -> None:
        """Read a body nobody is sent; ``flow`` keeps up to ``capture`` bytes of it (a rule's answer)."""
        if length is None:
            self.downstream.progress()
            pieces: Iterable[bytes] = read_chunked(self.rfile.readline, self.rfile.read1, self.rfile.read)
        else:
            pieces = [self.downstream.read_exact(length)] if length else []
        for piece in pieces:
            if flow is not None:
                flow.bytes_up += len(piece)
                flow.keep("request_body", piece, capture)

    def _send_response(self, status: int, body: bytes, headers: list[tuple[str, str]], flow: Flow,
                       head_only: bool) -> None:
        head = responses.head(status, [*headers, ("Content-Length", str(len(body))), ("Connection", "close")])
        self.downstream.send(head + (b"" if head_only else body))
        flow.status, flow.bytes_down = status, len(body)
        flow.response_headers = [*headers, ("Content-Length", str(len(body)))]
        flow.keep("response_body", body, self.server.config.capture_bodies)

    def _buffered_bytes(self) -> bytes:
        """Bytes already read into rfile's buffer past the CONNECT head, without blocking."""
        self.connection.settimeout(0)
        try:
            return self.rfile.read1(65536) or b""
        except OSError:
            return b""

    def _local(self, line: RequestLine, headers: Headers, flow: Flow) -> bool:
        """Requests addressed to the proxy itself: health (open to all), metrics, otherwise a hint."""
        flow.kind = "local"
        path = line.target.split("?")[0]
        if path == "/proxy.pac" and line.method in ("GET", "HEAD"):
            return self._pac(line, headers, flow)
        if path not in ("/healthz", "/metrics") or line.method not in ("GET", "HEAD"):
            raise BadRequest(_HINT)
        if request_body_length(headers):
            raise BadRequest(f"{path} takes no body")
        if path == "/metrics":
            body, content_type = self._metrics(headers), metrics.CONTENT_TYPE
        else:
            body, content_type = (json.dumps(self.server.status()) + "\n").encode(), "application/json"
        keep = persistent_client(line.version, headers)
        self._send(responses.own(200, body, content_type, head_only=line.method == "HEAD", close=not keep))
        flow.status, flow.bytes_down = 200, len(body)
        return keep

    def _pac(self, line: RequestLine, headers: Headers, flow: Flow) -> bool:
        """The proxy auto-config file, naming this proxy as the client reached it (its Host)."""
        if not self.server.live.admits(self.client_ip):
            raise Forbidden(f"client {self.client_ip} is not allowed to use this proxy")
        if request_body_length(headers):
            raise BadRequest("/proxy.pac takes no body")
        authority = pac.proxy_authority(headers.get("host"), self.server.config.host,
                                        int(self.server.server_address[1]))
        router = self.server.router
        body = pac.pac_file(authority, router.bypass, router.rules).encode()
        keep = persistent_client(line.version, headers)
        self._send(responses.own(200, body, pac.CONTENT_TYPE, head_only=line.method == "HEAD",
                                 close=not keep))
        flow.status, flow.bytes_down = 200, len(body)
        return keep

    def _metrics(self, headers: Headers) -> bytes:
        """Prometheus text, for clients in metrics_allow_from (loopback) or with valid credentials."""
        config = self.server.config
        if not config.metrics:
            raise BadRequest("metrics are turned off on this proxy (--no-metrics)", status=404)
        if not client_allowed(self.client_ip, config.metrics_allow_from):
            # Prometheus sends basic_auth as Authorization; proxy clients send Proxy-Authorization.
            credentials = headers.get("authorization") or headers.get("proxy-authorization")
            if not config.auth or credentials is None:
                raise Forbidden("/metrics answers loopback clients, or clients with proxy credentials")
            try:
                check_credentials(credentials, config.auth)
            except AuthRequired:
                raise Forbidden("wrong credentials for /metrics") from None
        return self.server.metrics.render(self.server.status()).encode()

    def _send_error(self, exc: ProxyError, head_only: bool = False) -> None:
        self._send(responses.error(exc, self.server.via_name, head_only=head_only))
        self.close_connection = True

    def _send(self, response: bytes) -> None:
        """Send a response of ours; a client that is gone (or does not read) is not told anything."""
        self.deadline.arm_write(self.server.config.timeout)
        try:
            self.connection.sendall(response)
        except OSError:
            pass

    def close_now(self) -> None:
        """Cut this connection from outside (server shutdown)."""
        if self.phase is Phase.RELAYED:
            return  # the relay owns this socket now
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.client_label, format % args)


def _redacted(headers: Headers) -> list[tuple[str, str]]:
    """Fields for the flow record: proxy credentials never reach a log (only their scheme)."""
    return [(name, value.split(" ", 1)[0] + " [redacted]" if key == "proxy-authorization" else value)
            for key, name, value in headers.fields]

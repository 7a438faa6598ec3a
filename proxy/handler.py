"""ProxyHandler: one client connection, request after request; orchestration only.

Each step lives elsewhere (head parsing and validation in ``headers``, targets
in ``target``, forwarding in ``forward``, tunnels in ``tunnel``); this class
reads a head, routes it, turns a ProxyError into a one-line error response,
and records a Flow per exchange. It overrides ``handle_one_request`` because
the stdlib's answers unknown methods with 501 and parses heads leniently, both
wrong for a proxy.
"""

from __future__ import annotations

import http
import json
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from . import __version__
from .errors import Abort, BadRequest, ProxyError
from .flows import Flow
from .forward import Downstream, Request, forward
from .headers import Headers, RequestLine, content_length, parse_request_line, read_fields, request_body_length
from .target import parse_absolute, parse_authority
from .tunnel import Tunnel, open_upstream

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("fwdproxy")

_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
_HINT = ("this is a forward proxy: send absolute-form requests (GET http://host/path) "
         "or CONNECT host:port; GET /healthz reports status")
# RFC 9112 section 2.2: empty lines before a request line are ignored (a few).
_MAX_EMPTY_LINES = 4


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ProxyServer

    def setup(self) -> None:
        super().setup()
        host, port = self.client_address[:2]
        self.client_label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.downstream = Downstream(self.rfile, self.connection)
        self.busy = False
        self.tunnel: Tunnel | None = None

    def handle(self) -> None:
        self.server.track(self)
        try:
            super().handle()
        finally:
            self.server.untrack(self)

    def handle_one_request(self) -> None:
        self.close_connection = True
        line = self._read_request_line()
        if not line:
            return
        self.busy = True
        start = time.monotonic()
        flow = Flow(kind="http", client=self.client_label, method="-", url="-")
        try:
            self.connection.settimeout(self.server.config.timeout)
            self.close_connection = not self._exchange(line, flow)
        except ProxyError as exc:
            flow.status, flow.error = exc.status, exc.reason
            self._send_error(exc, head_only=flow.method == "HEAD")
        except Abort as exc:
            flow.error = str(exc)
        except OSError as exc:  # the client's socket failed while we read from it
            flow.error = f"client connection failed: {exc}"
        except Exception:
            log.exception("internal error on %s %s", flow.method, flow.url)
            flow.status, flow.error = 500, "internal error"
            self._send_error(ProxyError("internal error; see the proxy's log"))
        finally:
            self.busy = False
            if self.server.stopping:
                self.close_connection = True
            flow.finish(start)
            self.server.flows.emit(flow)

    def _read_request_line(self) -> bytes:
        """The next request line, or b"" when the client is done (closed, idle, or shutting down)."""
        self.connection.settimeout(self.server.config.client_idle_timeout)
        limit = self.server.limits.request_line
        try:
            for _ in range(_MAX_EMPTY_LINES + 1):
                line = self.rfile.readline(limit + 1)
                if line not in (b"\r\n", b"\n"):
                    return line
        except OSError:
            pass  # idle timeout or reset between requests: just close
        return b""

    def _exchange(self, raw_line: bytes, flow: Flow) -> bool:
        """Parse, route and carry out one request; True if the connection may be reused."""
        line = parse_request_line(raw_line, self.server.limits)
        self.command, self.path, self.request_version = line.method, line.target, line.version
        self.requestline = raw_line[:-2].decode("ascii")
        flow.method, flow.url = line.method, line.target
        headers = read_fields(self.rfile.readline, self.server.limits)
        if len(headers.get_all("host")) > 1:
            raise BadRequest("more than one Host header")  # RFC 9112 section 3.2
        if line.method == "CONNECT":
            self._tunnel(line, headers, flow)
            return False
        if line.target.startswith("/") or line.target == "*":
            return self._local(line, headers, flow)
        return self._forward(line, headers, flow)

    def _forward(self, line: RequestLine, headers: Headers, flow: Flow) -> bool:
        origin, path = parse_absolute(line.target, line.method)
        req = Request(line.method, origin, path, line.version, headers,
                      request_body_length(headers), via=self._via(line.version))
        flow.url = req.url
        return forward(req, self.downstream, self.server.pool, flow)

    def _tunnel(self, line: RequestLine, headers: Headers, flow: Flow) -> None:
        flow.kind = "tunnel"
        host, port = parse_authority(line.target)
        if "transfer-encoding" in headers or content_length(headers):
            raise BadRequest("a CONNECT request has no body")  # RFC 9110 section 9.3.6
        config = self.server.config
        upstream = open_upstream(host, port, self.server.connect, config.connect_timeout)
        self.downstream.send(_ESTABLISHED)
        flow.status = 200
        tunnel = Tunnel(self.connection, upstream, config.tunnel_idle_timeout)
        self.tunnel = tunnel
        self.server.tunnel_opened(tunnel)
        try:
            tunnel.run(self._buffered_bytes())
        finally:
            self.server.tunnel_closed(tunnel)
            self.tunnel = None
        flow.bytes_up, flow.bytes_down, flow.error = tunnel.bytes_up, tunnel.bytes_down, tunnel.error

    def _buffered_bytes(self) -> bytes:
        """Bytes already read into rfile's buffer past the CONNECT head, without blocking."""
        self.connection.settimeout(0)
        try:
            return self.rfile.read1(65536) or b""
        except OSError:
            return b""

    def _local(self, line: RequestLine, headers: Headers, flow: Flow) -> bool:
        """Requests addressed to the proxy itself: health status, otherwise a hint."""
        flow.kind = "local"
        if line.target.split("?")[0] != "/healthz" or line.method not in ("GET", "HEAD"):
            raise BadRequest(_HINT)
        if request_body_length(headers):
            raise BadRequest("/healthz takes no body")
        body = (json.dumps(self.server.status()) + "\n").encode()
        self._send_simple(200, body, "application/json", head_only=line.method == "HEAD",
                          close=False)
        flow.status, flow.bytes_down = 200, len(body)
        return True

    def _via(self, version: str) -> str:
        return f"{version[5:]} {self.server.via_name}"

    def _send_error(self, exc: ProxyError, head_only: bool = False) -> None:
        reason = " ".join(exc.reason.split())  # one line, whatever the reason held
        body = f"fwdproxy: {reason}\n".encode("utf-8", "replace")
        details = reason.replace("\\", "\\\\").replace('"', '\\"')
        extra = f'Proxy-Status: {self.server.via_name}; error={exc.kind}; details="{details}"\r\n'
        self._send_simple(exc.status, body, "text/plain; charset=utf-8", head_only=head_only,
                          close=True, extra=extra)
        self.close_connection = True

    def _send_simple(self, status: int, body: bytes, content_type: str, *, head_only: bool,
                     close: bool, extra: str = "") -> None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        connection = "Connection: close\r\n" if close else ""
        head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}{connection}\r\n")
        try:
            self.connection.sendall(head.encode("latin-1", "replace") + (b"" if head_only else body))
        except OSError:
            pass  # the client is gone; nothing left to tell it

    def close_now(self) -> None:
        """Cut this connection from outside (server shutdown)."""
        if self.tunnel is not None:
            self.tunnel.close()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s %s", self.client_label, format % args)

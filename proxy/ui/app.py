"""The traffic page's HTTP server: static files, a JSON API over the flow store, live updates.

``UiServer(store, host=, port=, token=)`` serves one store file, read through
``record.store.Reader`` (SQLite does the filtering and paging; nothing big is
held here). Every request passes ``guard`` first: a Host that is not this
page's gets 403 (DNS rebinding), then a request without the token gets 403.

Routes (all GET but clear):

- ``/`` the page; ``/static/*`` its script and style (package data).
- ``/api/flows?host=&method=&status=&q=&before=&after=&limit=`` rows, oldest
  first, with the total that matches and the newest id.
- ``/api/flows/<id>`` one flow in full; ``/api/flows/<id>/body/<part>`` a body
  as recorded (raster images as themselves, everything else as a download).
- ``/api/events?<filters>&after=<id>`` Server-Sent Events: each event is the
  rows past the cursor that match; the event id is the cursor, so a
  reconnecting EventSource resumes where it stopped (``Last-Event-ID``).
- ``/api/har?<filters>`` what the filters select, as a HAR download.
- ``POST /api/clear`` hides every flow so far (the store file keeps them).

No CORS headers are ever sent, every response carries a strict
Content-Security-Policy, and the page has no inline script.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

from ..record.store import Filters, Reader, StoreError
from . import guard, streams, views

log = logging.getLogger("fwdproxy.ui")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
PAGE = 200  # rows a list request returns at most
_FLOW = re.compile(r"^/api/flows/(\d{1,18})$")
_BODY = re.compile(r"^/api/flows/(\d{1,18})/body/(request|response)$")


class UiServer(ThreadingHTTPServer):
    """The page over one store file, on its own port (never the proxy's)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, store: str | Path, *, host: str = "127.0.0.1", port: int = 8081,
                 token: str | None = None, live: bool = True) -> None:
        self.token = secrets.token_urlsafe(24) if token is None else token
        if not self.token:
            raise ValueError("the traffic page needs a token")
        self.ui_host = host
        self.live = live  # True: the proxy records into the store now; False: a saved capture
        self.store = Path(store)
        self.reader = Reader(self.store)  # StoreError names the file when it is not a store
        self.cleared_through = 0
        self.stopping = threading.Event()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), UiHandler)
        except BaseException:
            self.reader.close()
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def exposure_warning(self) -> str:
        """A line worth printing at startup when the page is reachable from other machines."""
        if guard.is_loopback(self.ui_host):
            return ""
        return (f"the traffic page listens on {self.ui_host}, beyond loopback: whoever has its URL "
                "can read the recorded traffic, and the hop is plain HTTP")

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a closed tab or an EventSource that moved on: nothing to report
        log.exception("unhandled error serving %s", client_address)

    @property
    def url(self) -> str:
        """The address to open, token included (printed at startup)."""
        host = f"[{self.ui_host}]" if ":" in self.ui_host else self.ui_host
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> UiServer:
        """Serve on a background thread; ``stop()`` ends it."""
        threading.Thread(target=self.serve_forever, name="fwdproxy-ui", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # live streams end at their next look
        self.shutdown()
        self.server_close()
        self.reader.close()

    def __enter__(self) -> UiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<UiServer {self.store} on {self.ui_host}:{self.port}>"


class UiHandler(BaseHTTPRequestHandler):
    server: UiServer
    protocol_version = "HTTP/1.1"
    server_version = "fwdproxy-ui"
    sys_version = ""
    # Every read and write on a connection is bounded: a client that stops reading an event
    # stream, or goes quiet mid-request, frees its thread after this many seconds.
    timeout = 30.0

    # -- entry points -----------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._admitted(url.path, url.query):
            return
        try:
            self._route_get(url.path, url.query)
        except views.BadQuery as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except StoreError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > 0:
            self._error(HTTPStatus.BAD_REQUEST, "this page's POSTs carry no body")
            return
        if not self._admitted(url.path, "", allow_token_param=False):
            return
        if url.path != "/api/clear":
            self._error(HTTPStatus.NOT_FOUND, f"no such action: {url.path}")
            return
        self.server.cleared_through = max(self.server.cleared_through, self.server.reader.last_id())
        self._json({"cleared_through": self.server.cleared_through})

    def do_HEAD(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- the guard --------------------------------------------------------------

    def _admitted(self, path: str, query: str, *, allow_token_param: bool = True) -> bool:
        """Host check, then the token (query once, cookie after); answers 403 itself when refused."""
        refusal = guard.host_refusal(self.headers.get("Host"), self.server.ui_host, self.server.port)
        if refusal:
            self._error(HTTPStatus.FORBIDDEN, refusal)
            return False
        token = self.server.token
        origin = self.headers.get("Origin")
        if self.command == "POST" and (self.headers.get("X-Fwdproxy-UI") != "1" or (
                origin is not None and urlsplit(origin).netloc != self.headers["Host"])):
            # A custom header cannot be sent cross-origin without a CORS preflight, which fails here.
            self._error(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")
            return False
        given = parse_qs(query).get("token", [""])[-1] if allow_token_param else ""
        if given and guard.token_matches(given, token):
            # The first visit: move the token into the cookie and out of the address bar.
            rest = "&".join(p for p in query.split("&") if not p.startswith("token="))
            self._redirect(path + (f"?{rest}" if rest else ""), guard.set_cookie(token, self.server.port))
            return False
        if guard.token_matches(guard.cookie_token(self.headers.get("Cookie"), self.server.port), token):
            return True
        self._error(HTTPStatus.FORBIDDEN, "this page needs its token: open the URL fwdproxy printed "
                                          "at startup (http://...?token=...)")
        return False

    # -- routes -----------------------------------------------------------------

    def _route_get(self, path: str, query: str) -> None:
        if path in STATIC:
            name, content_type = STATIC[path]
            self._send(HTTPStatus.OK, resources.files(__package__).joinpath("static", name).read_bytes(),
                       content_type)
        elif path == "/api/flows":
            self._list(query)
        elif path == "/api/events":
            self._events(query)
        elif path == "/api/har":
            self._har(query)
        elif match := _FLOW.match(path):
            stored = self._stored(int(match[1]))
            if stored is not None:
                self._json(views.flow_json(stored))
        elif match := _BODY.match(path):
            stored = self._stored(int(match[1]))
            if stored is not None:
                body, content_type = views.raw_body(stored, match[2])
                disposition = None if content_type.startswith("image/") else \
                    f'attachment; filename="flow-{stored.id}-{match[2]}.bin"'
                self._send(HTTPStatus.OK, body, content_type, disposition=disposition)
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _filters(self, query: str) -> Filters:
        return views.filters_from_query(query, min_id=self.server.cleared_through + 1)

    def _list(self, query: str) -> None:
        filters = self._filters(query)
        reader = self.server.reader
        limit = views.int_param(query, "limit", PAGE, low=1, high=PAGE)
        after = views.int_param(query, "after", -1, low=-1)
        before = views.int_param(query, "before", 0)
        cursor = reader.last_id()  # read first: the live stream resumes after it, and repeats are dropped
        rows = reader.list(filters, after_id=after if after >= 0 else None, before_id=before or None,
                           limit=limit)
        self._json({"rows": [views.row_json(row) for row in rows], "total": reader.count(filters),
                    "cursor": cursor, "live": self.server.live,
                    "store": self.server.store.name, "cleared_through": self.server.cleared_through})

    def _stored(self, flow_id: int) -> Any:
        stored = self.server.reader.get(flow_id)
        if stored is None:
            self._error(HTTPStatus.NOT_FOUND, f"no flow {flow_id} in {self.server.store.name}")
        return stored

    def _har(self, query: str) -> None:
        filters = self._filters(query)
        # Delimited by closing the connection: streamed from the store, never held whole.
        self._stream_head("application/json", disposition='attachment; filename="fwdproxy.har"')
        streams.har(cast(BinaryIO, self.wfile), self.server.store, filters)

    def _events(self, query: str) -> None:
        filters = self._filters(query)
        cursor = views.int_param(query, "after", 0)
        last_event = self.headers.get("Last-Event-ID", "")
        if last_event.isdigit():
            cursor = int(last_event)
        self._stream_head("text/event-stream")
        streams.events(cast(BinaryIO, self.wfile), self.server.store, filters, cursor, self.server.stopping)

    # -- responses --------------------------------------------------------------

    def _security_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)

    def _stream_head(self, content_type: str, *, disposition: str | None = None) -> None:
        self.send_response(HTTPStatus.OK)
        self._security_headers()
        self.send_header("Content-Type", content_type)
        if disposition:
            self.send_header("Content-Disposition", disposition)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, disposition: str | None = None,
              extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self._security_headers()
        if content_type:
            self.send_header("Content-Type", content_type)
        if disposition:
            self.send_header("Content-Disposition", disposition)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(value).encode(), "application/json")

    def _error(self, status: HTTPStatus, reason: str) -> None:
        self.close_connection = True  # a refused request's body, if any, is never read
        text = f"{status.value} {status.phrase}: {reason}\n"
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _redirect(self, location: str, cookie: str) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self._security_headers()
        self.send_header("Location", location)
        self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "0")
        self.end_headers()

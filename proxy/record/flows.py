"""Flow records: one per exchange (or per tunnel), and the sinks that receive them.

A Flow is what happened, in plain values: who asked, for what, what came back,
how many bytes each way, how long it took, and why it failed if it did. It
knows nothing about sockets; the handler fills one in and hands it to a sink.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

log = logging.getLogger("fwdproxy.access")


@dataclass
class Flow:
    """One exchange through the proxy: a forwarded request, a tunnel, or a local answer."""

    kind: str  # "http", "tunnel" or "local" (an answer from the proxy itself)
    client: str
    method: str
    url: str  # absolute URL, or host:port for a tunnel
    status: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    started: float = field(default_factory=time.time)
    duration_ms: float = 0.0
    error: str = ""
    upstream_reused: bool | None = None
    host: str = ""
    port: int = 0
    path: str = ""  # origin-form path and query; "" for tunnels
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_trailers: list[tuple[str, str]] = field(default_factory=list)  # of a chunked response
    # Bodies of plain HTTP exchanges, kept only up to Config.capture_bodies bytes.
    request_body: bytes = b""
    response_body: bytes = b""
    faults: list[str] = field(default_factory=list)  # fault rules that fired
    # TLS: whether the proxy saw inside (an intercepted tunnel, or a request inside one),
    # and for https origins whether their certificate was checked ("verified", "unverified").
    intercepted: bool = False
    upstream_tls: str = ""
    http_version: str = "HTTP/1.1"  # of the client's request line
    reason: str = ""  # the response's reason phrase as the origin sent it
    error_kind: str = ""  # the RFC 9209 Proxy-Status error type sent with an error response
    # Phases of a forwarded exchange in milliseconds, -1 where a phase did not happen:
    # waiting for an upstream connection (pool or dial), sending the request (head and
    # body), waiting for the response head, receiving the response body.
    connect_ms: float = -1.0
    send_ms: float = -1.0
    wait_ms: float = -1.0
    receive_ms: float = -1.0
    rules: list[str] = field(default_factory=list)  # rewrite rules that fired ("block *.ads.test")
    parent: str = ""  # the parent proxy it went through ("127.0.0.1:3128"); "" when direct

    @property
    def target(self) -> tuple[str, int]:
        return self.host, self.port

    def keep(self, attr: str, data: bytes, cap: int) -> None:
        """Append to request_body or response_body, up to ``cap`` bytes in all."""
        held: bytes = getattr(self, attr)
        if cap and len(held) < cap:
            setattr(self, attr, held + data[:cap - len(held)])

    def finish(self, start_monotonic: float) -> None:
        self.duration_ms = round((time.monotonic() - start_monotonic) * 1000, 2)

    def as_line(self) -> str:
        text = (f"{self.client} {self.method} {self.url} {self.status} "
                f"up={self.bytes_up} down={self.bytes_down} {self.duration_ms:.1f}ms")
        if self.intercepted:
            text += " intercepted"
        if self.upstream_tls == "unverified":
            text += " upstream-tls=unverified"
        if self.parent:
            text += f" parent={self.parent}"
        if self.rules:
            text += f" rules={'; '.join(self.rules)!r}"
        return f"{text} error={self.error!r}" if self.error else text

    def as_json(self) -> str:
        record = asdict(self)
        for attr in ("request_headers", "response_headers"):
            record[attr] = redact(record[attr])
        for attr in ("request_body", "response_body"):
            record[attr] = record[attr].decode("latin-1")
        return json.dumps(record, separators=(",", ":"))

    def __repr__(self) -> str:
        return f"<Flow {self.as_line()}>"


def elapsed_ms(since: float, until: float) -> float:
    """Milliseconds between two ``time.monotonic()`` stamps."""
    return round((until - since) * 1000, 3)


# Fields whose values are secrets: never in a log line, redacted in recordings by default.
SECRET_FIELDS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
REDACTED = "<redacted>"


def redact(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields with the values of SECRET_FIELDS replaced by ``<redacted>``."""
    return [(name, REDACTED if name.lower() in SECRET_FIELDS else value) for name, value in fields]


Sink = Callable[[Flow], None]


def log_sink(fmt: str = "text") -> Sink:
    """A sink writing one line per flow to the ``fwdproxy.access`` logger."""
    render = Flow.as_json if fmt == "json" else Flow.as_line

    def sink(flow: Flow) -> None:
        # Health probes arrive every few seconds from orchestrators: debug, not info.
        level = logging.DEBUG if flow.kind == "local" and flow.status == 200 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "%s", render(flow))

    return sink


class FlowLog:
    """Fans a finished flow out to every sink; a failing sink never breaks traffic."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self._sinks = list(sinks or [])
        self._opened: list[Sink] = []
        self._lock = threading.Lock()

    def add_opened(self, sink: Sink) -> None:
        """Also tell ``sink`` of each tunnel as it opens (status 200, no bytes yet).

        A tunnel's flow is finished only when it closes, and clients often
        keep tunnels open long after their last response.
        """
        with self._lock:
            self._opened = [*self._opened, sink]

    def emit_opened(self, flow: Flow) -> None:
        for sink in self._opened:
            try:
                sink(flow)
            except Exception:
                logging.getLogger("fwdproxy").exception("flow sink %r failed", sink)

    def add(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [*self._sinks, sink]

    def remove(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]

    def emit(self, flow: Flow) -> None:
        for sink in self._sinks:
            try:
                sink(flow)
            except Exception:  # a sink's bug must not cost a client its response
                logging.getLogger("fwdproxy").exception("flow sink %r failed", sink)

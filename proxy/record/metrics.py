"""Metrics: counters and histograms over finished flows, rendered in the Prometheus text format.

This module owns what ``GET /metrics`` reports. It counts from the Flow
records the server already makes (one ``observe`` per finished exchange or
tunnel, a few dictionary updates under one uncontended lock) and takes the
gauges (live connections, tunnels, pool) from the server's status when
scraped, so a request pays next to nothing for being counted. It knows
nothing of sockets.

Flows the recording sinks had to drop are read from the status (``record``) when
scraped; any other sink that drops flows can feed ``count_dropped``.
With ``--workers N`` each process counts its own traffic and a scrape is
answered by whichever worker accepted it: every sample then carries a
``worker`` label so series from different workers never mix.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .. import __version__
from .flows import Flow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a loopback hit to a slow origin; tunnels live long, hence the tail.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           300.0)

# Gauges and counters read from ProxyServer.status() at scrape time.
_STATUS = (
    ("client_connections", "fwdproxy_client_connections", "gauge",
     "Client connections open now (tunnels excluded)."),
    ("parked_clients", "fwdproxy_parked_client_connections", "gauge",
     "Client connections idle between requests, held without a thread (counted in client connections)."),
    ("tunnels", "fwdproxy_tunnels", "gauge", "CONNECT tunnels open now."),
    ("threads", "fwdproxy_threads", "gauge",
     "Threads serving client connections in this process, idle ones included."),
    ("upstream_idle", "fwdproxy_upstream_idle_connections", "gauge",
     "Idle upstream connections in the pool."),
    ("upstream_opened", "fwdproxy_upstream_connections_opened_total", "counter",
     "Upstream connections opened for plain HTTP exchanges."),
    ("upstream_reused", "fwdproxy_upstream_connections_reused_total", "counter",
     "Plain HTTP exchanges that reused a pooled upstream connection."),
    ("uptime_s", "fwdproxy_uptime_seconds", "gauge", "Seconds since this process started serving."),
)


_CLASSES = {status: f"{status // 100}xx" for status in range(100, 600)}


def status_class(status: int) -> str:
    return _CLASSES.get(status, "none")


class _Row:
    """What the flows of one kind and status class add up to."""

    __slots__ = ("buckets", "count", "down", "seconds", "up")

    def __init__(self) -> None:
        self.count = self.up = self.down = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # not cumulative; the last is +Inf


class Metrics:
    """Counts flows as they finish; renders everything for a scrape."""

    def __init__(self, worker: str | None = None) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], _Row] = {}
        self._errors: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._reloads = {"ok": 0, "error": 0}

    # -- feeding ----------------------------------------------------------------------

    def observe(self, flow: Flow) -> None:
        """The flow sink: count one finished exchange or tunnel (about a microsecond)."""
        key = (flow.kind, _CLASSES.get(flow.status, "none"))
        seconds = flow.duration_ms / 1000
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = _Row()
            row.count += 1
            row.up += flow.bytes_up
            row.down += flow.bytes_down
            row.seconds += seconds
            row.buckets[index] += 1
            if flow.error_kind:
                self._errors[flow.error_kind] = self._errors.get(flow.error_kind, 0) + 1

    def count_dropped(self, sink: str, count: int = 1) -> None:
        """For a sink that had to drop flows (e.g. a full recording queue): shown per sink."""
        with self._lock:
            self._dropped[sink] = self._dropped.get(sink, 0) + count

    def count_reload(self, ok: bool) -> None:
        with self._lock:
            self._reloads["ok" if ok else "error"] += 1

    # -- rendering ----------------------------------------------------------------------

    def render(self, status: Mapping[str, Any]) -> str:
        """Everything in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            rows = {key: (row.count, row.up, row.down, row.seconds, list(row.buckets))
                    for key, row in self._rows.items()}
            errors, dropped, reloads = dict(self._errors), dict(self._dropped), dict(self._reloads)
        out: list[str] = []
        self._family(out, "fwdproxy_info", "gauge", "Version and instance name of this proxy.",
                     [({"version": __version__, "name": str(status.get("name", ""))}, 1)])
        self._family(out, "fwdproxy_exchanges_total", "counter",
                     "Finished exchanges by kind (http, tunnel, local) and status class.",
                     [({"kind": k, "status": c}, row[0]) for (k, c), row in sorted(rows.items())])
        self._family(out, "fwdproxy_bytes_total", "counter",
                     "Body bytes relayed: up from clients, down to clients.",
                     [({"direction": "down"}, sum(row[2] for row in rows.values())),
                      ({"direction": "up"}, sum(row[1] for row in rows.values()))])
        self._family(out, "fwdproxy_errors_total", "counter",
                     "Error responses by RFC 9209 Proxy-Status error type.",
                     [({"type": t}, n) for t, n in sorted(errors.items())])
        recorders: Mapping[str, Mapping[str, int]] = status.get("record", {})
        for sink, stats in recorders.items():
            dropped[sink] = dropped.get(sink, 0) + stats.get("dropped_flows", 0)
        self._family(out, "fwdproxy_flows_dropped_total", "counter",
                     "Flows a sink had to drop instead of recording, by sink.",
                     [({"sink": s}, n) for s, n in sorted(dropped.items())])
        self._family(out, "fwdproxy_flow_bodies_dropped_total", "counter",
                     "Flows a recording sink stored without their bodies, to keep up.",
                     [({"sink": s}, n.get("dropped_bodies", 0)) for s, n in sorted(recorders.items())])
        self._family(out, "fwdproxy_config_reloads_total", "counter",
                     "Configuration reloads (SIGHUP) by result.",
                     [({"result": r}, n) for r, n in sorted(reloads.items())])
        for field, name, kind, help_text in _STATUS:
            if field in status:
                self._family(out, name, kind, help_text, [({}, status[field])])
        latency: dict[str, tuple[list[int], float]] = {}
        for (kind, _), (_, _, _, seconds, buckets) in rows.items():
            held = latency.setdefault(kind, ([0] * len(buckets), 0.0))
            latency[kind] = ([a + b for a, b in zip(held[0], buckets, strict=True)], held[1] + seconds)
        self._histogram(out, latency)
        return "\n".join(out) + "\n"

    def _labels(self, labels: Mapping[str, str]) -> str:
        if self.worker is not None:
            labels = {**labels, "worker": self.worker}
        if not labels:
            return ""
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"

    def _family(self, out: list[str], name: str, kind: str, help_text: str,
                samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{self._labels(labels)} {_number(value)}" for labels, value in samples)

    def _histogram(self, out: list[str], latency: Mapping[str, tuple[list[int], float]]) -> None:
        name = "fwdproxy_exchange_duration_seconds"
        out.append(f"# HELP {name} Time from a request's first byte to its flow being recorded "
                   "(a tunnel's whole life), by kind.")
        out.append(f"# TYPE {name} histogram")
        for kind, (buckets, total) in sorted(latency.items()):
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{name}_bucket{self._labels({'kind': kind, 'le': le})} {running}")
            out.append(f"{name}_sum{self._labels({'kind': kind})} {_number(total)}")
            out.append(f"{name}_count{self._labels({'kind': kind})} {running}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value) if isinstance(value, int) else repr(float(value))

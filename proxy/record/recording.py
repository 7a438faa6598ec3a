"""Recording: the sinks ``--record``, ``--har`` and ``--flows-jsonl`` add to a proxy, from start to stop.

``Recording(record=..., har=..., jsonl=...)`` opens everything at once, so a
bad path fails before the proxy accepts anyone. Its ``sinks`` go on the
server's FlowLog; ``close()`` at stop commits what is queued and writes the
HAR file atomically (a temporary file renamed into place). The HAR is
exported from a flow store, so a long capture never sits in memory: without
``--record`` that store is a temporary file beside the HAR, removed after.
JSON lines (``flow_json``) go out through their own writer thread, since
stdout may be a pipe whose reader is slow.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .flows import Flow, Sink, redact
from .har import write_har
from .spool import Queued, Spool
from .store import Filters, Reader, Recorder, StoreError


class Recording:
    """The recording sinks of one proxy instance; see the module docstring."""

    def __init__(self, *, record: str = "", har: str = "", jsonl: str = "", secrets: bool = False) -> None:
        self.har = Path(har) if har else None
        self.secrets = secrets
        self.sinks: list[Sink] = []
        self._temporary: Path | None = None
        self.recorder: Recorder | None = None
        self._jsonl: JsonLines | None = None
        try:
            if self.har is not None:
                _check_writable_folder(self.har)
            if record or self.har:
                self.recorder = Recorder(record or self._temporary_store(), secrets=secrets)
                self.sinks.append(self.recorder)
            if jsonl:
                self._jsonl = JsonLines(jsonl, secrets=secrets)
                self.sinks.append(self._jsonl.spool)
        except BaseException:
            self.close(write_har=False)
            raise

    def _temporary_store(self) -> Path:
        assert self.har is not None
        fd, name = tempfile.mkstemp(prefix=f".{self.har.name}.", suffix=".sqlite", dir=self.har.parent)
        os.close(fd)
        self._temporary = Path(name)
        return self._temporary

    def stats(self) -> dict[str, Any]:
        """For /healthz: what the store and the JSON lines writer wrote, queued and dropped."""
        stats: dict[str, Any] = {}
        if self.recorder is not None:
            stats["store"] = self.recorder.stats()
        if self._jsonl is not None:
            stats["jsonl"] = self._jsonl.spool.stats()
        return stats

    def close(self, *, write_har: bool = True) -> None:
        """Commit what is queued, write the HAR file (atomically), release every file."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self.recorder is not None:
            self.recorder.close()
            if write_har and self.har is not None:
                export_har(self.recorder.path, self.har, Filters())
            self.recorder = None
        if self._temporary is not None:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._temporary}{suffix}")
            self._temporary = None


def _check_writable_folder(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise StoreError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise StoreError(f"cannot write {path}: the folder {folder} is read-only")


def export_har(store: Path, out: Path, filters: Filters) -> int:
    """Write the matching flows of a store as a HAR file, atomically; returns how many."""
    with Reader(store) as reader:
        return _atomic_write(out, lambda file: write_har(_with_notes(reader.flows(filters)), file,
                                                          comment=f"recorded by fwdproxy in {store.name}"))


def _with_notes(stored: Iterator[Any]) -> Iterator[tuple[Flow, str]]:
    for item in stored:
        yield item.flow, "bodies not recorded: the recorder fell behind" if item.bodies_dropped else ""


def _atomic_write(out: Path, write: Any) -> int:
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            count = int(write(file))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(name, 0o644)
        os.replace(name, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return count


# -- JSON lines ------------------------------------------------------------------


def flow_json(flow: Flow, *, flow_id: int | None = None, secrets: bool = False) -> dict[str, Any]:
    """One flow as a JSON object (one line of --flows-jsonl and of ``flows export --jsonl``)."""
    headers_up, headers_down = flow.request_headers, flow.response_headers
    if not secrets:
        headers_up, headers_down = redact(headers_up), redact(headers_down)
    record: dict[str, Any] = {} if flow_id is None else {"id": flow_id}
    record.update({
        "started": datetime.fromtimestamp(flow.started, UTC).isoformat(timespec="milliseconds"),
        "kind": flow.kind, "client": flow.client, "method": flow.method, "url": flow.url,
        "http_version": flow.http_version, "status": flow.status, "reason": flow.reason,
        "request_headers": headers_up, "response_headers": headers_down,
        "bytes_up": flow.bytes_up, "bytes_down": flow.bytes_down, "duration_ms": flow.duration_ms,
        "timings": {"connect": flow.connect_ms, "send": flow.send_ms, "wait": flow.wait_ms,
                    "receive": flow.receive_ms},
        "upstream_reused": flow.upstream_reused, "faults": flow.faults,
        "error": flow.error, "error_kind": flow.error_kind,
        "intercepted": flow.intercepted, "upstream_tls": flow.upstream_tls,
        "rules": flow.rules, "parent": flow.parent,
    })
    if flow.response_trailers:
        record["response_trailers"] = flow.response_trailers
    for name, body in (("request_body", flow.request_body), ("response_body", flow.response_body)):
        if body:
            record[name] = _body_json(body)
    return record


def _body_json(body: bytes) -> dict[str, Any]:
    try:
        return {"size": len(body), "text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"size": len(body), "base64": base64.b64encode(body).decode("ascii")}


class JsonLines:
    """Streams one JSON object per finished flow to a file (appended) or stdout ("-")."""

    def __init__(self, target: str, *, secrets: bool = False) -> None:
        self.secrets = secrets
        if target == "-":
            self._out: IO[str] = sys.stdout
            self._owned = False
        else:
            path = Path(target)
            _check_writable_folder(path)
            try:
                self._out = open(path, "a", encoding="utf-8")  # closed in close()
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror}") from exc
            self._owned = True
        self.spool = Spool(self._write, name=f"flows-jsonl {target}")

    def _write(self, batch: list[Queued]) -> None:
        lines = []
        for queued in batch:
            flow = queued.flow
            record = flow_json(flow, secrets=self.secrets)
            if not queued.bodies and (flow.request_body or flow.response_body):
                record.pop("request_body", None)
                record.pop("response_body", None)
                record["bodies_dropped"] = True
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        self._out.write("".join(lines))
        self._out.flush()

    def close(self) -> None:
        self.spool.close()
        if self._owned:
            self._out.close()

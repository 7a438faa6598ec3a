"""The flow store: finished flows in one SQLite file (WAL), and the queries that read them back.

Writing (``Recorder``). ``Recorder(path)`` opens or creates the file and
fails at once, with a ``StoreError`` naming the file, if the folder is
missing, the file is read-only, another process is recording to it, the
file system is full, or the file is not a flow store this code can write.
Calling the recorder with a Flow (it is a FlowLog sink) only queues it: one
writer thread commits batches (see ``spool.Spool`` for what is dropped when
it falls behind). Values of Authorization, Proxy-Authorization, Cookie and
Set-Cookie become ``<redacted>`` unless ``secrets=True``. A commit is
durable against the process being killed (WAL with synchronous=NORMAL: the
last commits may be lost on power failure, never to a crash of the proxy).

Reading (``Reader``), from any process, also while a recorder writes::

    reader = Reader("flows.sqlite")
    reader.list(Filters(host="*.example.com", status="5xx"), limit=50)  # newest 50, oldest first
    reader.list(filters, before_id=rows[0].id, limit=50)    # the page before (scrolling back)
    reader.list(filters, after_id=rows[-1].id, limit=50)    # the page after (new flows)
    reader.count(filters)                                    # how many match
    reader.get(flow_id)                                      # StoredFlow with headers and bodies, or None
    reader.flows(filters)                                    # every match, oldest first (exports)
    reader.wait_for_new(after_id, timeout=25.0)              # True once a flow with a larger id exists

``list`` returns ``FlowRow`` summaries (no headers or bodies; the response's
Content-Type is cut from its header lines) in ascending id order. With
``after_id`` it returns the ``limit`` oldest flows past it; otherwise the
``limit`` newest flows below ``before_id`` (or of all). Ids only grow, so an
id is a stable paging cursor. ``Filters`` fields are
ANDed: ``host`` a case-insensitive glob, ``method``, ``status`` ("404",
"5xx"; 0 is "no response"), ``grep`` a case-insensitive substring of the
URL or of any "Name: value" header line, ``since`` a Unix time, ``kind``,
``min_id`` the first id (what a cleared page still shows). A Reader may be
shared by threads (one lock around its connection).

Schema (version ``SCHEMA_VERSION`` in ``PRAGMA user_version``, and
``APPLICATION_ID`` in ``PRAGMA application_id``): see ``SCHEMA`` below, and
``COLUMNS`` for the order of a flows row. An older store is read with the
defaults of the columns it lacks, and upgraded (``MIGRATIONS``) when a
recorder opens it; a newer one is refused. Headers are stored as "Name: value"
lines in order, duplicates kept; each body in ``bodies`` holds at most what the
proxy captured (``--capture-bodies``) while ``bytes_up``/``bytes_down`` hold the
true sizes.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .flows import REDACTED, SECRET_FIELDS, Flow
from .spool import MAX_BODY_BYTES, MAX_FLOWS, Queued, Spool

SCHEMA_VERSION = 3
APPLICATION_ID = 0x66777078  # "fwpx"
MIN_FREE_BYTES = 8 << 20  # refuse to start recording on a file system with less free space

SCHEMA = """
CREATE TABLE flows (
    id INTEGER PRIMARY KEY,           -- grows with every flow: the paging cursor
    started REAL NOT NULL,            -- Unix time the exchange began
    kind TEXT NOT NULL,               -- http, tunnel, local (answered by the proxy itself)
    client TEXT NOT NULL,             -- client address:port
    method TEXT NOT NULL,
    url TEXT NOT NULL,                -- absolute URL; host:port for a tunnel
    http_version TEXT NOT NULL,       -- of the client's request line
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    path TEXT NOT NULL,               -- origin-form path and query; '' for tunnels
    status INTEGER NOT NULL,          -- 0: no response was sent
    reason TEXT NOT NULL,
    request_headers TEXT NOT NULL,    -- "Name: value" lines joined by "\\n", as received
    response_headers TEXT NOT NULL,   -- as sent to the client
    bytes_up INTEGER NOT NULL,        -- request body bytes (tunnel: all bytes relayed up)
    bytes_down INTEGER NOT NULL,      -- response body bytes (tunnel: all bytes relayed down)
    request_body_stored INTEGER NOT NULL,   -- bytes of the request body kept in bodies
    response_body_stored INTEGER NOT NULL,
    bodies_dropped INTEGER NOT NULL,  -- 1: bodies not kept because the writer fell behind
    duration_ms REAL NOT NULL,
    connect_ms REAL NOT NULL,         -- timings; -1 where a phase did not happen
    send_ms REAL NOT NULL,
    wait_ms REAL NOT NULL,
    receive_ms REAL NOT NULL,
    upstream_reused INTEGER,          -- 1 reused, 0 new, NULL no upstream connection
    faults TEXT NOT NULL,             -- fault rules that fired, comma-separated
    error TEXT NOT NULL,
    error_kind TEXT NOT NULL,         -- RFC 9209 Proxy-Status error type, if one was sent
    intercepted INTEGER NOT NULL DEFAULT 0,     -- 1: TLS terminated by the proxy, requests seen (v2)
    upstream_tls TEXT NOT NULL DEFAULT '',      -- https origin certificate: verified, unverified (v2)
    response_trailers TEXT NOT NULL DEFAULT '', -- of a chunked response, as "Name: value" lines (v2)
    rules TEXT NOT NULL DEFAULT '',             -- routing/rewrite rules that fired, one a line (v3)
    parent TEXT NOT NULL DEFAULT ''             -- the parent proxy it went through, host:port; '' direct (v3)
);
CREATE INDEX flows_started ON flows (started);
CREATE TABLE bodies (
    flow_id INTEGER NOT NULL REFERENCES flows (id),
    part INTEGER NOT NULL,            -- 0 request, 1 response
    data BLOB NOT NULL,
    PRIMARY KEY (flow_id, part)
);
"""

COLUMNS = ("id", "started", "kind", "client", "method", "url", "http_version", "host", "port", "path",
            "status", "reason", "request_headers", "response_headers", "bytes_up", "bytes_down",
            "request_body_stored", "response_body_stored", "bodies_dropped", "duration_ms",
            "connect_ms", "send_ms", "wait_ms", "receive_ms", "upstream_reused", "faults", "error",
            "error_kind", "intercepted", "upstream_tls", "response_trailers", "rules", "parent")
# Schema changes that an older store is brought up to when it is opened for recording;
# a reader fills in the defaults of columns an older store does not have.
MIGRATIONS = {
    1: ("ALTER TABLE flows ADD COLUMN intercepted INTEGER NOT NULL DEFAULT 0;\n"
        "ALTER TABLE flows ADD COLUMN upstream_tls TEXT NOT NULL DEFAULT '';\n"
        "ALTER TABLE flows ADD COLUMN response_trailers TEXT NOT NULL DEFAULT '';"),
    2: ("ALTER TABLE flows ADD COLUMN rules TEXT NOT NULL DEFAULT '';\n"
        "ALTER TABLE flows ADD COLUMN parent TEXT NOT NULL DEFAULT '';"),
}
_DEFAULTS = {"intercepted": "0", "upstream_tls": "''", "response_trailers": "''",
             "rules": "''", "parent": "''"}
# The order in which the writer binds a flows row (``_rows``); reading uses COLUMNS.
_WRITE_COLUMNS = ("id", "started", "kind", "client", "method", "url", "http_version", "host", "port", "path",
                  "status", "reason", "bytes_up", "bytes_down", "duration_ms", "connect_ms", "send_ms",
                  "wait_ms", "receive_ms", "upstream_reused", "error", "error_kind", "intercepted",
                  "upstream_tls", "parent", "request_headers", "response_headers", "response_trailers",
                  "faults", "rules", "request_body_stored", "response_body_stored", "bodies_dropped")
assert sorted(_WRITE_COLUMNS) == sorted(COLUMNS)
# Rows per INSERT statement. sqlite3 releases the GIL around every step of a statement, and
# with request threads waiting for it each release costs a thread switch: one multi-row
# statement per ROWS_PER_INSERT flows, rather than one per flow, keeps that to a few per batch.
ROWS_PER_INSERT = 30  # 30 x 33 values: under SQLite's oldest limit of 999 bound values


@functools.lru_cache(maxsize=2 * ROWS_PER_INSERT)
def _insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    values = f"({', '.join('?' * len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([values] * rows)}"


_ROW_COLUMNS = ("id", "started", "kind", "client", "method", "url", "status", "reason", "bytes_up",
                "bytes_down", "duration_ms", "error", "bodies_dropped", "host", "path", "content_type")
# The response's Content-Type value, cut from its header lines (a list shows it, and stays light).
_HEADERS_NL = "(char(10) || response_headers || char(10))"
_TYPE_AT = f"instr(lower({_HEADERS_NL}), char(10) || 'content-type: ')"
_TYPE_REST = f"substr({_HEADERS_NL}, {_TYPE_AT} + 15)"
_CONTENT_TYPE = (f"CASE {_TYPE_AT} WHEN 0 THEN '' "
                 f"ELSE substr({_TYPE_REST}, 1, instr({_TYPE_REST}, char(10)) - 1) END")
_ROW_SELECT = ", ".join(_CONTENT_TYPE if c == "content_type" else c for c in _ROW_COLUMNS)


class StoreError(Exception):
    """A flow store cannot be opened or used; the message names the file and says why."""


# -- query values ---------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which flows a query selects; None matches anything. Every field given must match."""

    host: str | None = None  # glob, case-insensitive: "*.example.com"
    method: str | None = None
    status: str | None = None  # "404", "5xx", "0" (no response)
    grep: str | None = None  # substring of the URL or a "Name: value" header line
    since: float | None = None  # Unix time
    kind: str | None = None
    min_id: int | None = None  # flows from this id on (a page that was cleared up to an id)

    def __post_init__(self) -> None:
        if self.status is not None and not _status_range(self.status):
            raise ValueError(f"status must be a code like 404 or a class like 5xx, not {self.status!r}")

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        terms: list[str] = ["1"]
        params: list[Any] = []
        if self.host is not None:
            terms.append("lower(host) GLOB ?")
            params.append(self.host.lower())
        if self.method is not None:
            terms.append("method = ?")
            params.append(self.method.upper())
        if self.status is not None:
            low, high = _status_range(self.status) or (0, 0)
            terms.append("status BETWEEN ? AND ?")
            params += [low, high]
        if self.grep:
            pattern = "%" + self.grep.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            terms.append("(url LIKE ? ESCAPE '\\' OR request_headers LIKE ? ESCAPE '\\' "
                         "OR response_headers LIKE ? ESCAPE '\\')")
            params += [pattern] * 3
        if self.since is not None:
            terms.append("started >= ?")
            params.append(self.since)
        if self.kind is not None:
            terms.append("kind = ?")
            params.append(self.kind)
        if self.min_id is not None:
            terms.append("id >= ?")
            params.append(self.min_id)
        return " AND ".join(terms), params


def _status_range(text: str) -> tuple[int, int] | None:
    text = text.strip().lower()
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        return int(text[0]) * 100, int(text[0]) * 100 + 99
    if text.isdigit() and len(text) <= 3:
        return int(text), int(text)
    return None


@dataclass(frozen=True)
class FlowRow:
    """One line of a flow list: no headers, no bodies."""

    id: int
    started: float
    kind: str
    client: str
    method: str
    url: str
    status: int
    reason: str
    bytes_up: int
    bytes_down: int
    duration_ms: float
    error: str
    bodies_dropped: bool
    host: str = ""
    path: str = ""  # origin-form path and query; '' for tunnels
    content_type: str = ""  # of the response, as sent; '' when it had none


@dataclass(frozen=True)
class StoredFlow:
    """A flow as stored: the Flow record (bodies as kept) with its id."""

    id: int
    flow: Flow
    bodies_dropped: bool  # True: the bodies were not kept because the writer fell behind


Rows = list[FlowRow]
_Params = list[Any]
_Result = list[tuple[Any, ...]]


# -- writing --------------------------------------------------------------------


class Recorder:
    """Records finished flows into a store file; call it with a Flow (a FlowLog sink)."""

    def __init__(self, path: str | os.PathLike[str], *, secrets: bool = False,
                 max_flows: int = MAX_FLOWS, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.path = Path(path)
        self.secrets = secrets
        self._lock_fd = _claim(self.path)
        try:
            self._db = _open_for_writing(self.path)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._next_id = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM flows").fetchone()[0]
        self._spool = Spool(self._write, name=f"flow store {self.path}", max_flows=max_flows,
                            max_body_bytes=max_body_bytes, prepare=self._prepare)
        self._closed = False

    def __call__(self, flow: Flow) -> None:
        self._spool.offer(flow)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every flow handed in so far is committed (or failed); False on timeout."""
        return self._spool.flush(timeout)

    def stats(self) -> dict[str, Any]:
        """What /healthz shows: flows written, queued, dropped whole, stored without bodies, failed."""
        return {"path": str(self.path), **self._spool.stats()}

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (up to ``timeout``), checkpoint the WAL and release the file."""
        if self._closed:
            return
        self._closed = True
        self._spool.close(timeout)
        try:
            self._db.close()  # the last connection checkpoints the WAL into the file
        finally:
            # After the database: closing any descriptor of the file drops SQLite's own locks.
            os.close(self._lock_fd)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Recorder {self.path} {self._spool.stats()}>"

    def _prepare(self, f: Flow) -> tuple[tuple[Any, ...], bytes, bytes]:
        """A flow as the values of its row (no id, no body sizes yet) and its bodies (request thread).

        Strings and numbers only: the queue then holds no lists for the garbage collector.
        """
        redacting = not self.secrets
        # bool binds as 0/1 and None as NULL: upstream_reused and intercepted go in as they are.
        row = (f.started, f.kind, f.client, f.method, f.url, f.http_version, f.host, f.port,
               f.path, f.status, f.reason, f.bytes_up, f.bytes_down, f.duration_ms, f.connect_ms,
               f.send_ms, f.wait_ms, f.receive_ms, f.upstream_reused, f.error, f.error_kind,
               f.intercepted, f.upstream_tls, f.parent,
               _lines(f.request_headers, redacting), _lines(f.response_headers, redacting),
               _lines(f.response_trailers, False) if f.response_trailers else "",
               ",".join(f.faults) if f.faults else "",
               "\n".join([r.replace("\n", " ") for r in f.rules]) if f.rules else "")
        return row, f.request_body, f.response_body

    def _write(self, batch: list[Queued]) -> None:
        """One transaction for a batch (writer thread only)."""
        first = self._next_id
        flows, bodies = _rows(batch, first)
        self._db.execute("BEGIN")
        try:
            _insert_all(self._db, "flows", _WRITE_COLUMNS, flows)
            _insert_all(self._db, "bodies", ("flow_id", "part", "data"), bodies)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already (a full disk)
                self._db.execute("ROLLBACK")
            raise
        self._next_id = first + len(batch)


def _rows(batch: list[Queued], first: int) -> tuple[list[Any], list[Any]]:
    """The values of a batch's flows rows (``_WRITE_COLUMNS`` order) and bodies rows, each
    flattened into one list, with ids from ``first``: the writer's hot loop."""
    flows: list[Any] = []
    bodies: list[Any] = []
    for flow_id, ((row, up, down), kept, _size) in enumerate(batch, first):
        flows.append(flow_id)
        flows += row
        if kept:
            flows += (len(up), len(down), 0)
            if up:
                bodies += (flow_id, 0, up)
            if down:
                bodies += (flow_id, 1, down)
        else:
            flows += (0, 0, 1 if up or down else 0)
    return flows, bodies


def _insert_all(db: sqlite3.Connection, table: str, columns: tuple[str, ...], values: list[Any]) -> None:
    """Insert flattened rows, ROWS_PER_INSERT to a statement."""
    width = len(columns)
    step = width * ROWS_PER_INSERT
    whole = len(values) - len(values) % step
    if whole:
        db.executemany(_insert(table, columns, ROWS_PER_INSERT),
                       [values[at:at + step] for at in range(0, whole, step)])
    if whole < len(values):
        db.execute(_insert(table, columns, (len(values) - whole) // width), values[whole:])


def _claim(path: Path) -> int:
    """Open the file (creating it) and take an exclusive flock: one recorder per file.

    flock and SQLite's fcntl locks do not interact on Linux, so readers are unaffected.
    """
    folder = path.parent
    if not folder.is_dir():
        raise StoreError(f"cannot record to {path}: the folder {folder} does not exist")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # recordings can hold secrets
    except OSError as exc:
        why = "it is read-only" if exc.errno in (13, 30) else exc.strerror
        raise StoreError(f"cannot record to {path}: {why}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stat = os.fstatvfs(fd)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot record to {path}: another process is recording to it") from exc
    free = stat.f_bavail * stat.f_frsize
    if free < MIN_FREE_BYTES:
        os.close(fd)
        raise StoreError(f"cannot record to {path}: its file system is full ({free // 1024} KiB free, "
                         f"at least {MIN_FREE_BYTES >> 20} MiB needed)")
    return fd


def _open_for_writing(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        found = _check(db, path, allow_new=True)
        if found == "new":
            db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA application_id = {APPLICATION_ID};\n"
                             f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        elif found != "ok":
            steps = "\n".join(MIGRATIONS[v] for v in range(int(found), SCHEMA_VERSION))
            db.executescript(f"BEGIN IMMEDIATE;\n{steps}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        # A write now, so a read-only or full file fails at start rather than mid-run.
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"cannot record to {path}: {_explain(exc)}") from exc
    except StoreError:
        db.close()
        raise
    return db


def _check(db: sqlite3.Connection, path: Path, *, allow_new: bool) -> str:
    """'new' for an empty file, 'ok' for a store of this version, the version of an older one
    this code can upgrade (as text); else StoreError naming the file."""
    try:
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a fwdproxy flow store: {_explain(exc)}") from exc
    if app == 0 and tables == 0:
        if allow_new:
            return "new"
        raise StoreError(f"{path} is empty: no flows were recorded in it")
    if app != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite database but not a fwdproxy flow store")
    if version in MIGRATIONS:
        return str(version)
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path} is a flow store of schema version {version}; this fwdproxy reads and "
                         f"writes version {SCHEMA_VERSION} (record into a new file)")
    return "ok"


def _explain(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "readonly" in text:
        return "it is read-only"
    if "full" in text:
        return "the disk is full"
    if "locked" in text or "busy" in text:
        return "another process holds it locked"
    if "not a database" in text or "malformed" in text:
        return "the file is corrupt or not a database"
    return text


def _lines(fields: list[tuple[str, str]], redacting: bool) -> str:
    """Header fields as "Name: value" lines (secret values redacted); the hot spot of the writer."""
    if not fields:
        return ""
    if redacting:
        text = "\n".join([f"{n}: {REDACTED}" if n.lower() in SECRET_FIELDS else f"{n}: {v}"
                          for n, v in fields])
    else:
        text = "\n".join([f"{n}: {v}" for n, v in fields])
    if text.count("\n") >= len(fields):  # a value with a line break (not from the wire)
        return _lines([(n, v.replace("\r", " ").replace("\n", " ")) for n, v in fields], redacting)
    return text


def _split(text: str) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (line.partition(": ") for line in text.split("\n") if line)]


# -- reading --------------------------------------------------------------------


class Reader:
    """Queries over a store file (read-only); see the module docstring for the API."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such flow store")
        # Read-write but query-only where the file allows it, so the last connection to close
        # checkpoints and removes the -wal and -shm files; read-only where it does not.
        mode = "rw" if os.access(self.path, os.W_OK) else "ro"
        uri = f"file:{quote(str(self.path.resolve()))}?mode={mode}"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {_explain(exc)}") from exc
        try:
            _check(self._db, self.path, allow_new=False)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(flows)")}
        except StoreError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot read {self.path}: {_explain(exc)}") from exc
        self._columns = ", ".join(c if c in present else f"{_DEFAULTS[c]} AS {c}" for c in COLUMNS)
        self._lock = threading.Lock()

    def list(self, filters: Filters | None = None, *, after_id: int | None = None,
             before_id: int | None = None, limit: int = 100) -> Rows:
        """Flow summaries in ascending id order (see the module docstring for the window)."""
        where, params = (filters or Filters()).where()
        if after_id is not None:
            where, order = where + " AND id > ?", "ASC"
            params.append(after_id)
        else:
            order = "DESC"
        if before_id is not None:
            where += " AND id < ?"
            params.append(before_id)
        sql = f"SELECT {_ROW_SELECT} FROM flows WHERE {where} ORDER BY id {order} LIMIT ?"
        rows = [_row(row) for row in self._query(sql, [*params, limit])]
        return rows if order == "ASC" else rows[::-1]

    def count(self, filters: Filters | None = None) -> int:
        where, params = (filters or Filters()).where()
        return int(self._query(f"SELECT count(*) FROM flows WHERE {where}", params)[0][0])

    def get(self, flow_id: int) -> StoredFlow | None:
        """One flow in full: headers, bodies as kept, timings; None if there is no such id."""
        found = self._query(f"SELECT {self._columns} FROM flows WHERE id = ?", [flow_id])
        if not found:
            return None
        parts = self._query("SELECT part, data FROM bodies WHERE flow_id = ?", [flow_id])
        bodies: dict[int, bytes] = dict(parts)
        return _stored(found[0], bodies)

    def flows(self, filters: Filters | None = None, *, batch: int = 200) -> Iterator[StoredFlow]:
        """Every matching flow in full, oldest first, read in batches (memory stays bounded)."""
        after = 0
        while True:
            rows = self.list(filters, after_id=after, limit=batch)
            for row in rows:
                stored = self.get(row.id)
                if stored is not None:
                    yield stored
            if len(rows) < batch:
                return
            after = rows[-1].id

    def last_id(self) -> int:
        """The largest flow id so far (0 for none)."""
        return int(self._query("SELECT coalesce(max(id), 0) FROM flows", [])[0][0])

    def wait_for_new(self, after_id: int, timeout: float, *, poll: float = 0.1) -> bool:
        """Block until a flow with an id above ``after_id`` is committed (True) or ``timeout`` passes.

        It polls (the writer may be another process): one indexed lookup per ``poll`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.last_id() <= after_id:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))
        return True

    def integrity(self) -> str:
        """SQLite's integrity_check verdict: "ok" for a sound file."""
        return str(self._query("PRAGMA integrity_check", [])[0][0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: _Params) -> _Result:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot read {self.path}: {_explain(exc)}") from exc


def _row(row: tuple[Any, ...]) -> FlowRow:
    values = dict(zip(_ROW_COLUMNS, row, strict=True))
    values["bodies_dropped"] = bool(values["bodies_dropped"])
    return FlowRow(**values)


def _stored(row: tuple[Any, ...], bodies: dict[int, bytes]) -> StoredFlow:
    v = dict(zip(COLUMNS, row, strict=True))
    flow = Flow(kind=v["kind"], client=v["client"], method=v["method"], url=v["url"], status=v["status"],
                bytes_up=v["bytes_up"], bytes_down=v["bytes_down"], started=v["started"],
                duration_ms=v["duration_ms"], error=v["error"],
                upstream_reused=None if v["upstream_reused"] is None else bool(v["upstream_reused"]),
                host=v["host"], port=v["port"], path=v["path"],
                request_headers=_split(v["request_headers"]), response_headers=_split(v["response_headers"]),
                request_body=bodies.get(0, b""), response_body=bodies.get(1, b""),
                faults=[f for f in v["faults"].split(",") if f], http_version=v["http_version"],
                reason=v["reason"], error_kind=v["error_kind"], connect_ms=v["connect_ms"],
                send_ms=v["send_ms"], wait_ms=v["wait_ms"], receive_ms=v["receive_ms"],
                intercepted=bool(v["intercepted"]), upstream_tls=v["upstream_tls"],
                response_trailers=_split(v["response_trailers"]),
                rules=v["rules"].split("\n") if v["rules"] else [], parent=v["parent"])
    return StoredFlow(v["id"], flow, bool(v["bodies_dropped"]))

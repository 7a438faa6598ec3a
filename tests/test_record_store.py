"""The flow store on real SQLite files: opening rules, queries, redaction, the drop policy.

Flows here are plain values handed to the recorder (the end-to-end tests in
test_record.py record real traffic); the files, locks and WAL are real.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.record.command import parse_since
from proxy.record.flows import REDACTED, Flow
from proxy.record.spool import Queued, Spool
from proxy.record.store import (
    APPLICATION_ID,
    COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    Filters,
    Reader,
    Recorder,
    StoreError,
)

ROOT = Path(__file__).resolve().parent.parent


def flow(n: int = 0, **changes: object) -> Flow:
    made = Flow(kind="http", client="127.0.0.1:5000", method="GET", url=f"http://api.test/items/{n}",
                status=200, reason="OK", bytes_down=2, started=1_700_000_000.0 + n, duration_ms=1.5,
                host="api.test", port=80, path=f"/items/{n}",
                request_headers=[("Host", "api.test"), ("X-Dup", "1"), ("X-Dup", "2")],
                response_headers=[("Content-Type", "text/plain"), ("Content-Length", "2")],
                response_body=b"ok")
    for name, value in changes.items():
        setattr(made, name, value)
    return made


def record(path: Path, flows: list[Flow], **options: object) -> None:
    with Recorder(path, **options) as recorder:  # type: ignore[arg-type]
        for item in flows:
            recorder(item)
        assert recorder.flush()


# -- opening ------------------------------------------------------------------------


def test_a_path_in_a_missing_folder_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "flows.sqlite"
    with pytest.raises(StoreError, match=f"{path}: the folder {path.parent} does not exist"):
        Recorder(path)


def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    path.write_bytes(b"this is no database " * 500)
    with pytest.raises(StoreError, match=f"{path} is not a fwdproxy flow store: the file is corrupt"):
        Recorder(path)
    with pytest.raises(StoreError, match="corrupt"):
        Reader(path)


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(StoreError, match="an SQLite database but not a fwdproxy flow store"):
        Recorder(path)


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    record(path, [flow()])
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}; this fwdproxy reads"):
        Recorder(path)
    with pytest.raises(StoreError, match=str(path)):
        Reader(path)


def test_a_store_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from proxy.record.store import Recorder; r = Recorder(sys.argv[1]); "
         "print('ready', flush=True); sys.stdin.read()", str(path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with pytest.raises(StoreError, match=f"cannot record to {path}: another process is recording to it"):
            Recorder(path)
        with Reader(path) as reader:  # reading while another process records is fine
            assert reader.count() == 0
    finally:
        holder.communicate("", timeout=10)
    record(path, [flow()])  # and once it has gone, the file is free again


def test_reopening_appends_with_growing_ids(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    record(path, [flow(1), flow(2)])
    record(path, [flow(3)])
    with Reader(path) as reader:
        assert [row.id for row in reader.list()] == [1, 2, 3]
        assert [row.url[-1] for row in reader.list()] == ["1", "2", "3"]
        assert reader.integrity() == "ok"


def test_reading_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such flow store"):
        Reader(tmp_path / "absent.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()


# -- what is stored -------------------------------------------------------------------


def test_a_flow_round_trips_with_headers_in_order_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    original = flow(7, method="POST", request_body=b"\xff\x00binary", bytes_up=8, faults=["delay", "throttle"],
                    connect_ms=1.25, send_ms=0.5, wait_ms=3.0, receive_ms=0.25, upstream_reused=False,
                    http_version="HTTP/1.0", error="x", error_kind="destination_unavailable",
                    intercepted=True, upstream_tls="verified", response_trailers=[("X-Sum", "1")],
                    rules=["map-remote http://api.test/*=http://127.0.0.1:9/v2", "set-header *=X-A: 1, 2"],
                    parent="127.0.0.1:3128")
    record(path, [original])
    with Reader(path) as reader:
        stored = reader.get(1)
        assert stored is not None and not stored.bodies_dropped
        assert stored.flow == original
        assert reader.get(2) is None


def test_secrets_are_redacted_unless_asked_to_keep_them(tmp_path: Path) -> None:
    secret = flow(request_headers=[("Authorization", "Bearer abc"), ("Cookie", "sid=1"), ("X-Other", "kept")],
                  response_headers=[("Set-Cookie", "sid=2"), ("set-cookie", "b=3")])
    record(tmp_path / "a.sqlite", [secret])
    record(tmp_path / "b.sqlite", [secret], secrets=True)
    with Reader(tmp_path / "a.sqlite") as reader:
        stored = reader.get(1)
        assert stored is not None
        assert stored.flow.request_headers == [("Authorization", REDACTED), ("Cookie", REDACTED), ("X-Other", "kept")]
        assert stored.flow.response_headers == [("Set-Cookie", REDACTED), ("set-cookie", REDACTED)]
        assert reader.count(Filters(grep="Bearer")) == 0
    with Reader(tmp_path / "b.sqlite") as reader:
        stored = reader.get(1)
        assert stored is not None and stored.flow.request_headers[0] == ("Authorization", "Bearer abc")
        assert stored.flow.response_headers == [("Set-Cookie", "sid=2"), ("set-cookie", "b=3")]


# -- queries --------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Reader]:
    flows = []
    for n in range(1, 31):
        host = "a.example.com" if n % 3 else "b.test"
        flows.append(flow(n, host=host, url=f"http://{host}/items/{n}", method="POST" if n % 5 == 0 else "GET",
                          status=503 if n % 7 == 0 else 200,
                          request_headers=[("X-Trace", f"trace-{n}")] if n == 11 else []))
    path = tmp_path / "mixed.sqlite"
    record(path, flows)
    with Reader(path) as reader:
        yield reader


def test_filters_select_by_host_method_status_grep_and_since(mixed: Reader) -> None:
    def ids(filters: Filters) -> list[int]:
        return [row.id for row in mixed.list(filters, limit=100)]

    assert ids(Filters(host="*.EXAMPLE.com")) == [n for n in range(1, 31) if n % 3]
    assert ids(Filters(host="b.test", method="get")) == [n for n in (3, 6, 9, 12, 18, 21, 24, 27)]
    assert ids(Filters(status="5xx")) == [7, 14, 21, 28]
    assert ids(Filters(status="200", method="POST")) == [5, 10, 15, 20, 25, 30]
    assert ids(Filters(grep="x-trace: TRACE-11")) == [11]  # header lines, any case
    assert ids(Filters(grep="items/2")) == [2, *range(20, 30)]  # URLs
    assert ids(Filters(grep="items_1")) == [] and ids(Filters(grep="items%1")) == []  # no LIKE wildcards
    assert ids(Filters(since=1_700_000_000.0 + 28)) == [28, 29, 30]
    assert mixed.count(Filters(status="5xx", host="a.*")) == 3
    assert mixed.count() == 30
    with pytest.raises(ValueError, match="status must be a code like 404 or a class like 5xx"):
        Filters(status="5x")


def test_paging_by_id_both_ways(mixed: Reader) -> None:
    newest = mixed.list(limit=10)
    assert [row.id for row in newest] == list(range(21, 31))
    before = mixed.list(before_id=newest[0].id, limit=10)
    assert [row.id for row in before] == list(range(11, 21))
    after = mixed.list(after_id=5, limit=3)
    assert [row.id for row in after] == [6, 7, 8]
    assert [row.id for row in mixed.list(Filters(status="5xx"), before_id=21, limit=10)] == [7, 14]
    assert mixed.list(after_id=30) == []
    everything = list(mixed.flows(Filters(host="b.test"), batch=3))
    assert [s.id for s in everything] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


def test_waiting_for_new_flows(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite"
    with Recorder(path) as recorder, Reader(path) as reader:
        assert reader.last_id() == 0
        assert reader.wait_for_new(0, timeout=0.2, poll=0.05) is False  # negative control: nothing came
        seen = []
        waiter = threading.Thread(target=lambda: seen.append(reader.wait_for_new(0, timeout=10, poll=0.02)))
        waiter.start()
        recorder(flow(1))
        waiter.join(15)
        assert seen == [True] and reader.last_id() == 1


# -- the queue -----------------------------------------------------------------------


def test_a_slow_writer_costs_bodies_first_then_whole_flows(caplog: pytest.LogCaptureFixture) -> None:
    """With the writer stuck, bodies are dropped once the body budget or half the queue is used,
    then whole flows once the queue is full; nothing waits, and each drop is counted."""
    taken, gate, written = threading.Event(), threading.Event(), []

    def write(batch: list[Queued]) -> None:
        taken.set()
        gate.wait(10)
        written.extend(batch)

    spool = Spool(write, name="test spool", max_flows=10, max_body_bytes=100, linger=0)
    try:
        spool.offer(flow(0))
        assert taken.wait(5)  # the writer holds flow 0 and is stuck
        for n in range(1, 16):  # the writer is stuck until the gate opens: an offer that waited would hang here
            spool.offer(flow(n, response_body=b"x" * 40))
        assert spool.stats() == {"written": 0, "queued": 11, "dropped_flows": 5, "dropped_bodies": 8,
                                 "failed": 0}
        gate.set()
        assert spool.flush(5)
    finally:
        gate.set()
        spool.close()
    kept = {q.flow.url.rsplit("/", 1)[1]: q.bodies for q in written}
    assert kept == {"0": True, "1": True, "2": True, **{str(n): False for n in range(3, 11)}}
    assert sum("cannot keep up" in r.getMessage() for r in caplog.records) == 1  # once a minute, not per drop


def test_a_locked_file_fills_the_queue_then_the_flows_land_marked(tmp_path: Path) -> None:
    """A real lock on the file stalls the writer; what was queued lands once it lifts, bodies dropped marked."""
    path = tmp_path / "flows.sqlite"
    with Recorder(path, max_flows=20, max_body_bytes=1 << 20) as recorder:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer waits (busy_timeout)
        for n in range(1, 51):
            recorder(flow(n, response_body=b"b" * 100, bytes_down=100))
        stats = recorder.stats()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert recorder.flush(15)
        final = recorder.stats()
    assert stats["dropped_flows"] > 0 and stats["dropped_bodies"] > 0
    with Reader(path) as reader:
        assert reader.count() + final["dropped_flows"] == 50
        rows = reader.list(limit=100)
        dropped = [row for row in rows if row.bodies_dropped]
        assert len(dropped) == final["dropped_bodies"]
        stored = reader.get(dropped[0].id)
        assert stored is not None and stored.bodies_dropped and stored.flow.response_body == b""
        assert stored.flow.bytes_down == 100  # the true size is still known
        whole = reader.get(rows[0].id)
        assert whole is not None and whole.flow.response_body == b"b" * 100 and not whole.bodies_dropped


def test_line_breaks_in_values_and_empty_field_lists_are_stored_safely(tmp_path: Path) -> None:
    """A fault rule may answer with any value; a line break must not split one field into two."""
    odd = flow(request_headers=[], response_headers=[("X-A", "one\ntwo"), ("X-B", "b")])
    record(tmp_path / "odd.sqlite", [odd])
    with Reader(tmp_path / "odd.sqlite") as reader:
        stored = reader.get(1)
    assert stored is not None and stored.flow.request_headers == []
    assert stored.flow.response_headers == [("X-A", "one two"), ("X-B", "b")]


def test_since_takes_durations_times_and_unix_seconds() -> None:
    now = 1_800_000_000.0
    assert parse_since("90s", now) == now - 90 and parse_since("10m", now) == now - 600
    assert parse_since("2h", now) == now - 7200 and parse_since("1d", now) == now - 86400
    assert parse_since("1700000000.5") == 1_700_000_000.5
    assert parse_since("2023-11-14T22:13:20+00:00") == 1_700_000_000.0
    with pytest.raises(ValueError, match="--since takes 30s, 10m"):
        parse_since("yesterday")


def test_a_version_1_store_is_read_and_upgraded_when_recorded_to(tmp_path: Path) -> None:
    """Version 1 had no TLS columns: readers fill in their defaults, a recorder adds them."""
    record(tmp_path / "v2.sqlite", [flow(1)])
    path = tmp_path / "v1.sqlite"
    v1_schema = SCHEMA.replace("error_kind TEXT NOT NULL,", "error_kind TEXT NOT NULL")
    v1_schema = "\n".join(line for line in v1_schema.splitlines() if "(v2)" not in line and "(v3)" not in line)
    v1_columns = ", ".join(c for c in COLUMNS if c not in ("intercepted", "upstream_tls", "response_trailers",
                                                            "rules", "parent"))
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"{v1_schema}\nPRAGMA application_id = {APPLICATION_ID};\nPRAGMA user_version = 1;")
    db.execute("ATTACH DATABASE ? AS v2", [str(tmp_path / "v2.sqlite")])
    db.execute(f"INSERT INTO flows ({v1_columns}) SELECT {v1_columns} FROM v2.flows")
    db.execute("INSERT INTO bodies SELECT * FROM v2.bodies")
    db.execute("DETACH DATABASE v2")
    db.close()
    with Reader(path) as reader:
        old = reader.get(1)
        assert old is not None and old.flow == flow(1)
    record(path, [flow(2, intercepted=True, url="https://api.test/items/2")])
    with Reader(path) as reader:
        assert [s.flow.intercepted for s in reader.flows()] == [False, True]
        assert reader.integrity() == "ok"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_a_version_2_store_gains_the_rules_and_parent_columns_when_recorded_to(tmp_path: Path) -> None:
    """Version 2 had no rules or parent: a reader shows none, a recorder adds the columns and fills them."""
    path = tmp_path / "v2.sqlite"
    v2_schema = "\n".join(line for line in SCHEMA.splitlines() if "(v3)" not in line)
    v2_schema = v2_schema.replace("DEFAULT '', -- of a chunked response", "DEFAULT ''  -- of a chunked response")
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"{v2_schema}\nPRAGMA application_id = {APPLICATION_ID};\nPRAGMA user_version = 2;")
    columns = [c for c in COLUMNS if c not in ("rules", "parent")]
    values = {"id": 1, "started": 1.0, "kind": "http", "client": "c", "method": "GET", "url": "http://a.test/",
              "http_version": "HTTP/1.1", "host": "a.test", "port": 80, "path": "/", "status": 200,
              "reason": "OK", "request_headers": "Host: a.test", "response_headers": "", "faults": "",
              "error": "", "error_kind": "", "upstream_tls": "", "response_trailers": "", "upstream_reused": None}
    db.execute(f"INSERT INTO flows ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
               [values.get(c, 0) for c in columns])
    db.close()
    with Reader(path) as reader:
        old = reader.get(1)
        assert old is not None and old.flow.rules == [] and old.flow.parent == ""
        assert old.flow.url == "http://a.test/"
    record(path, [flow(2, rules=["block *.ads.test"], parent="127.0.0.1:3128")])
    with Reader(path) as reader:
        assert [(s.flow.rules, s.flow.parent) for s in reader.flows()] == [
            ([], ""), (["block *.ads.test"], "127.0.0.1:3128")]
        assert reader.integrity() == "ok"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


# -- rows for a list page ---------------------------------------------------------------


def test_rows_carry_host_path_and_the_response_content_type(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    record(path, [
        flow(1, response_headers=[("Content-Length", "2"), ("content-type", "application/json; charset=utf-8"),
                                  ("X-Note", "content-type: not this one")]),
        flow(2, response_headers=[("X-Content-Type", "text/html")]),  # a look-alike name is not it
        flow(3, response_headers=[("Content-Type", "image/png")]),  # the last line, no newline after it
    ])
    with Reader(path) as reader:
        rows = reader.list()
    assert [(r.host, r.path, r.content_type) for r in rows] == [
        ("api.test", "/items/1", "application/json; charset=utf-8"),
        ("api.test", "/items/2", ""),
        ("api.test", "/items/3", "image/png"),
    ]


def test_min_id_keeps_flows_from_that_id_on(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite"
    record(path, [flow(n) for n in range(1, 6)])
    with Reader(path) as reader:
        assert [r.id for r in reader.list(Filters(min_id=4))] == [4, 5]
        assert reader.count(Filters(min_id=4)) == 2
        assert [s.id for s in reader.flows(Filters(min_id=5))] == [5]
        assert reader.count(Filters()) == 5  # the control: without it, all of them

"""The page's two long answers, written straight to the socket: live rows (Server-Sent Events) and HAR.

Both read the store through a Reader of their own (its polling and batches must
not wait behind the page's queries), hold no more than one batch of flows, and
end when the client goes away (a ConnectionError the server ignores) or the
page stops. The handler has sent the head; these write the body.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..record.har import write_har
from ..record.store import Filters, Reader, StoreError
from . import views

EVENT_ROWS = 500  # rows one live event carries at most; more follow at once
HEARTBEAT = 15.0  # seconds between comments on an idle event stream (keeps proxies from closing it)
POLL = 0.25  # seconds between looks for new flows: new flows appear well within a second
LOOK = 1.0  # seconds one wait lasts, so a stopping page ends its streams this soon


def events(out: BinaryIO, store: Path, filters: Filters, cursor: int, stopping: threading.Event) -> None:
    """Each event is the matching rows past the cursor, with the new total; its id is the cursor,
    so a reconnecting EventSource resumes after it (Last-Event-ID)."""
    out.write(b"retry: 1000\n\n")
    out.flush()
    idle = 0.0
    try:
        with Reader(store) as reader:
            while not stopping.is_set():
                if not reader.wait_for_new(cursor, timeout=LOOK, poll=POLL):
                    idle += LOOK
                    if idle >= HEARTBEAT:
                        out.write(b": idle\n\n")
                        out.flush()
                        idle = 0.0
                    continue
                idle = 0.0
                cursor, event = _next_event(reader, filters, cursor)
                if event is not None:
                    out.write(f"id: {cursor}\ndata: {json.dumps(event)}\n\n".encode())
                    out.flush()
    except StoreError:
        return  # the store went away (a temporary one at exit): the browser reconnects or stops


def _next_event(reader: Reader, filters: Filters, cursor: int) -> tuple[int, dict[str, Any] | None]:
    """The new cursor and the event to send (None: new flows, none of which match)."""
    newest = reader.last_id()  # read first: every id up to it is committed
    rows = [row for row in reader.list(filters, after_id=cursor, limit=EVENT_ROWS) if row.id <= newest]
    cursor = rows[-1].id if len(rows) == EVENT_ROWS else newest
    if not rows:
        return cursor, None
    return cursor, {"rows": [views.row_json(row) for row in rows], "total": reader.count(filters)}


def har(out: BinaryIO, store: Path, filters: Filters) -> None:
    """The matching flows as one HAR document, read from the store in batches."""
    with Reader(store) as reader:
        text = io.TextIOWrapper(cast(Any, out), encoding="utf-8")
        write_har(views.har_pairs(reader.flows(filters)), text,
                  comment=f"exported by fwdproxy from {store.name}")
        text.flush()
        text.detach()

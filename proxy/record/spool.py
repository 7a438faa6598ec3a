"""Spool: a bounded queue of finished flows and the one thread that writes them out.

A sink must never hold up an exchange: ``offer`` only appends to a queue
under a lock. When the writer falls behind, new flows first lose their
bodies (marked, so readers know they were dropped, not empty), then, once
the queue holds ``max_flows``, are dropped whole and counted. Drops are
logged at most once a minute. The writer takes what is queued in batches
(waiting up to ``linger`` seconds for a batch to fill), so a busy proxy
costs one write per batch, not one per flow.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .flows import Flow

log = logging.getLogger("fwdproxy.record")

# Queue limits: flows waiting, and body bytes waiting, before flows go in without bodies.
MAX_FLOWS = 20000
MAX_BODY_BYTES = 64 << 20
BATCH = 1000
LINGER = 0.05
WARN_EVERY = 60.0


class Queued(NamedTuple):
    """A flow waiting to be written; ``bodies`` is False when its bodies were dropped.

    ``flow`` is the Flow, or what the spool's ``prepare`` made of it; ``size`` the body
    bytes it holds against ``max_body_bytes`` (0 once its bodies were dropped).
    """

    flow: Any
    bodies: bool
    size: int = 0


Write = Callable[[list[Queued]], None]
Prepare = Callable[[Flow], Any]


class Spool:
    """Flows in, batches out on a writer thread; see the module docstring for the drop policy."""

    def __init__(self, write: Write, *, name: str, max_flows: int = MAX_FLOWS,
                 max_body_bytes: int = MAX_BODY_BYTES, linger: float = LINGER,
                 prepare: Prepare | None = None) -> None:
        self.name = name
        self._write = write
        self._prepare = prepare
        self.max_flows, self.max_body_bytes, self.linger = max_flows, max_body_bytes, linger
        self._queue: collections.deque[Queued] = collections.deque()
        self._body_bytes = 0
        self._changed = threading.Condition()
        self._closing = False
        self._writing = 0  # flows taken off the queue, not yet written
        self.accepted = self.written = self.dropped_flows = self.dropped_bodies = self.failed = 0
        self._warned = 0.0
        self._thread = threading.Thread(target=self._run, name=f"fwdproxy-{name}", daemon=True)
        self._thread.start()

    def offer(self, flow: Flow) -> None:
        """Queue a finished flow (the FlowLog sink); never blocks on the writer.

        With ``prepare``, what is queued is ``prepare(flow)``, made here, outside the
        lock: a compact value (a tuple of strings and numbers) rather than the Flow with
        its lists, so the flows waiting for the writer do not keep the garbage collector
        busy (a queue of Flows made it run a collection every few dozen requests).
        """
        size = len(flow.request_body) + len(flow.response_body)
        item: Any = flow
        if self._prepare is not None and len(self._queue) < self.max_flows:  # not for a flow to drop
            item = self._prepare(flow)
        with self._changed:
            if self._closing or len(self._queue) >= self.max_flows:
                self.dropped_flows += 1
                self._warn_locked()
                return
            bodies = size == 0 or (self._body_bytes + size <= self.max_body_bytes
                                   and len(self._queue) < self.max_flows // 2)
            if not bodies:
                self.dropped_bodies += 1
                self._warn_locked()
            else:
                self._body_bytes += size
            self._queue.append(Queued(item, bodies, size if bodies else 0))
            self.accepted += 1
            if len(self._queue) == 1 or len(self._queue) >= BATCH:
                self._changed.notify_all()

    __call__ = offer

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been written (or failed); False on timeout."""
        with self._changed:
            target = self.accepted
            return self._changed.wait_for(lambda: self.written + self.failed >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then stop the writer thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        with self._changed:
            return {"written": self.written, "queued": len(self._queue) + self._writing,
                    "dropped_flows": self.dropped_flows, "dropped_bodies": self.dropped_bodies,
                    "failed": self.failed}

    def _warn_locked(self) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY or not self._warned:
            self._warned = now
            log.warning("%s cannot keep up: %d flows stored without bodies, %d flows dropped so far; "
                        "traffic is unaffected", self.name, self.dropped_bodies, self.dropped_flows)

    def _take(self) -> list[Queued]:
        with self._changed:
            self._changed.wait_for(lambda: self._queue or self._closing)
            if len(self._queue) < BATCH and not self._closing:
                self._changed.wait_for(lambda: len(self._queue) >= BATCH or self._closing, self.linger)
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._body_bytes -= sum([q.size for q in batch])
            self._writing = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return  # closing and nothing left
            error: Exception | None = None
            try:
                self._write(batch)
            except Exception as exc:  # a full disk or a broken file must not stop the proxy
                error = exc
            with self._changed:  # counted before it is logged: a reader of the log sees the count
                if error is None:
                    self.written += len(batch)
                else:
                    self.failed += len(batch)
                self._writing = 0
                self._changed.notify_all()
                now = time.monotonic()
                warn = error is not None and (now - self._warned >= WARN_EVERY or not self._warned)
                if warn:
                    self._warned = now
            if warn:
                log.error("%s: %d flows lost: %s", self.name, len(batch), error)

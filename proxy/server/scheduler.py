"""Scheduler: a few runnable threads serve many connections, leader/followers on one epoll.

A thread per connection makes every busy connection a runnable thread, and
runnable threads queue for the GIL: at 64 busy clients each request waits for
dozens of others to take and drop it, and every hand-off is a context switch.
Here at most ``target`` threads (one by default) run work at a time:

- between two requests a keep-alive connection is *parked*: its socket waits in
  one epoll, and no thread holds it;
- one idle thread at a time (the leader) waits in ``epoll.poll``; when sockets
  turn readable it queues them, wakes followers for the work there are slots
  for, and serves one itself. At one client the thread that parked a connection
  is the one that wakes up with its next request: no hand-off at all;
- new connections from the accept loop join the same queue, and a connection
  whose next request is already here goes behind the others (``requeue``), so a
  fast client cannot keep a thread to itself.

Threads still do the blocking work of an exchange (http.server's design): a
slow origin, a large body, a fault's delay or a TLS handshake holds its
thread. A work item running longer than ``long`` seconds is taken to be
waiting rather than computing: the monitor stops counting it against the
target and lets another thread take the queue's head. So a blocked exchange
delays the others by at most ``long``, and as many threads run as there are
exchanges waiting plus ``target``. A handler about to wait a long time on
purpose (an intercepted TLS connection between requests) calls ``detached()``
to say so at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

log = logging.getLogger("fwdproxy")

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP | select.EPOLLONESHOT
_IDLE_EXIT_SECONDS = 30.0  # an idle thread (beyond one) ends after this long
_HARVEST_SECONDS = 0.001  # how stale the queue may be while no thread waits in the epoll
_GLANCE_SECONDS = 0.01  # how often the monitor looks while work runs and nothing is queued


class Parked(Protocol):
    """What the scheduler needs of a handler: the descriptor it waits on."""

    def fileno(self) -> int: ...


Work = Callable[[], None]


class Scheduler:
    """Run queued work and woken parked connections with at most ``target`` threads computing."""

    def __init__(self, wake: Callable[[Parked], None], *, target: int = 1, name: str = "fwdproxy-worker",
                 long: float = 0.002) -> None:
        self._wake = wake  # called on a scheduler thread with a parked connection that turned readable
        self._target = max(1, target)
        self._name = name
        self.long = long
        self._lock = threading.Lock()
        self._followers = threading.Condition(self._lock)  # idle threads wait here
        self._watch = threading.Condition(self._lock)  # the monitor waits here
        self._ready: deque[Work] = deque()
        self._parked: dict[int, Parked] = {}
        self._epoll: select.epoll | None = None
        self._eventfd = -1
        self._threads = 0  # alive, or about to start
        self._idle = 0  # followers waiting for work
        self._polling = False  # a leader is in epoll.poll
        self._running: dict[int, float] = {}  # thread id -> when its current work began
        self._waiting: set[int] = set()  # running threads taken to be waiting (not computing)
        self._starting = 0  # threads started that have not yet asked for work
        self._harvested = 0.0  # when the epoll's ready connections were last queued
        self._monitor: threading.Thread | None = None
        self._monitor_waiting = False
        self._listen_fd = -1  # the listening socket, watched in the same epoll (level-triggered)
        self._accept: Callable[[], list[Work]] = list
        self._accepting = threading.Lock()  # one thread accepts at a time
        self._parking = True  # until stop()
        self._stopped = False  # close(): threads end once the queue is empty

    # -- what the server calls ---------------------------------------------

    def submit(self, work: Work) -> None:
        """Run ``work`` on a scheduler thread, as soon as a slot is free."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("scheduler closed")
            self._ready.append(work)
            spawn = self._dispatch()
        self._spawn(spawn)

    def listen(self, fd: int, accept: Callable[[], list[Work]]) -> None:
        """Watch a listening socket: when it is readable a scheduler thread calls ``accept``, which
        takes what connections it can without blocking and returns the work of serving them.

        New connections are accepted by a thread that could serve them, not handed over
        by an accept loop of its own; while every slot is busy they wait in the backlog.
        """
        with self._lock:
            epoll = self._start()
            self._listen_fd, self._accept = fd, accept
            epoll.register(fd, select.EPOLLIN)
            spawn = 0 if self._polling else self._dispatch()
        self._spawn(spawn)

    def unlisten(self) -> None:
        """Stop watching the listening socket (before it is closed)."""
        with self._lock:
            fd, self._listen_fd = self._listen_fd, -1
            if fd >= 0 and self._epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)

    def requeue(self, handler: Parked) -> None:
        """Serve ``handler`` (whose input is already here) after the work queued before it."""
        with self._lock:
            self._ready.append(_Wake(self._wake, handler))
            spawn = self._dispatch()
        self._spawn(spawn)

    def park(self, handler: Parked) -> bool:
        """Hold ``handler`` until its socket is readable; False once stopped (the caller closes it)."""
        fd = handler.fileno()
        with self._lock:
            if not self._parking:
                return False
            epoll = self._start()
            try:
                try:
                    epoll.modify(fd, _EVENTS)  # parked before, and disarmed by its one-shot event
                except FileNotFoundError:
                    epoll.register(fd, _EVENTS)
            except (OSError, ValueError):
                return False  # the socket is closed already
            self._parked[fd] = handler
            spawn = 0 if self._polling else self._dispatch()
        self._spawn(spawn)
        return True

    def others_waiting(self) -> bool:
        """Whether other connections wait for a thread: then one with input ready takes its turn
        behind them (``requeue``) rather than keep its thread.

        While every thread is busy nobody waits in the epoll; its ready connections
        are gathered here, at most once per ``_HARVEST_SECONDS``.
        """
        if self._ready:
            return True
        if self._polling or self._epoll is None or time.monotonic() - self._harvested < _HARVEST_SECONDS:
            return False
        self._harvest()
        return bool(self._ready)

    def _harvest(self) -> None:
        """Queue what is ready in the epoll without waiting, new connections included (lock not held)."""
        with self._lock:
            if self._polling or self._epoll is None:
                return
            self._harvested = time.monotonic()
            try:
                events = self._epoll.poll(0)
            except (OSError, ValueError):
                events = []
            accepting = self._queue_events(events)
        if accepting:
            self._queue_accepted()

    def _queue_accepted(self) -> None:
        """Accept what connections are waiting, and queue serving them (lock not held)."""
        if not self._accepting.acquire(blocking=False):
            return  # another thread is accepting them now
        try:
            work = self._accept()  # may back off for a while when out of descriptors
        except Exception:
            log.exception("unhandled error accepting connections")
            work = []
        finally:
            self._accepting.release()
        if work:
            with self._lock:
                self._ready.extend(work)

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Around a long wait on a scheduler thread: it stops counting against the target at once."""
        me = threading.get_ident()
        with self._lock:
            counted = me in self._running and me not in self._waiting
            if counted:
                self._waiting.add(me)
            spawn = self._dispatch() if counted else 0
        self._spawn(spawn)
        try:
            yield
        finally:
            if counted:
                with self._lock:
                    self._waiting.discard(me)

    def count(self) -> int:
        """Connections parked now."""
        with self._lock:
            return len(self._parked)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"threads": self._threads, "idle": self._idle + int(self._polling),
                    "running": len(self._running), "waiting": len(self._waiting),
                    "queued": len(self._ready), "parked": len(self._parked)}

    def stop(self) -> list[Parked]:
        """Stop parking; returns the connections still parked, for the caller to close.

        Queued work still runs; threads end when ``close`` is called.
        """
        with self._lock:
            self._parking = False
            left, self._parked = list(self._parked.values()), {}
            epoll, self._epoll = self._epoll, None
            leading = self._polling
        if epoll is not None:
            for handler in left:
                with contextlib.suppress(OSError, ValueError):
                    epoll.unregister(handler.fileno())
            if leading:
                self._poke()  # the leader closes it when its wait returns
            else:
                epoll.close()
        return left

    def close(self) -> None:
        """End every thread once the queued work is done."""
        with self._lock:
            self._stopped = True
            self._followers.notify_all()
            self._watch.notify_all()
        self._poke()

    # -- slots ---------------------------------------------------------------

    def _free_slot(self) -> bool:
        """Whether one more thread may start work: fewer than target are computing (lock held)."""
        return len(self._running) - len(self._waiting) + self._starting < self._target

    def _dispatch(self) -> int:
        """Queued work (or an unwatched epoll) needs a thread: wake one, or say how many to start
        (-1: interrupt the leader, who then serves the queue) (lock held)."""
        if not self._free_slot():
            return 0  # the monitor, awake while work runs, frees a slot if that work is waiting
        if self._idle:
            self._followers.notify()
            return 0
        if self._polling:
            return -1 if self._ready else 0
        self._threads += 1
        self._starting += 1
        return 1

    def _spawn(self, count: int) -> None:
        if count < 0:
            self._poke()
            return
        for _ in range(count):
            threading.Thread(target=self._run, name=self._name, daemon=True).start()
        if count and self._monitor is None:
            with self._lock:
                if self._monitor is None:
                    self._monitor = threading.Thread(target=self._monitor_run, name=f"{self._name}-monitor",
                                                     daemon=True)
                    self._monitor.start()

    def _poke(self) -> None:
        """Interrupt the leader's epoll wait."""
        if self._eventfd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._eventfd, 1)

    def _start(self) -> select.epoll:
        """The epoll, made on first use with an eventfd that interrupts the leader's wait (lock held)."""
        if self._epoll is None:
            self._epoll = select.epoll()
            if self._eventfd < 0:
                self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll.register(self._eventfd, select.EPOLLIN)
        return self._epoll

    # -- the threads -------------------------------------------------------

    def _run(self) -> None:
        me = threading.get_ident()
        with self._lock:
            self._starting -= 1
        while True:
            with self._lock:
                work = self._next(me)
            if work is None:
                return
            if work is _POLL:
                self._poll()
                continue
            try:
                work()
            except Exception:
                log.exception("unhandled error in a scheduled task")

    def _next(self, me: int) -> Work | None:
        """What this thread does next: queued work, leading the epoll, or None to end (lock held)."""
        if self._running.pop(me, None) is not None:
            self._waiting.discard(me)
        idle_since = None
        while True:
            if self._ready and self._free_slot():
                self._running[me] = time.monotonic()
                work = self._ready.popleft()
                if self._monitor_waiting:  # work runs: the monitor watches over it
                    self._watch.notify()
                if self._ready and self._idle and self._free_slot():
                    self._followers.notify()
                return work
            if self._stopped and not self._ready:
                self._threads -= 1
                return None
            if not self._polling and self._epoll is not None and self._free_slot():
                # Only a thread that could take what it finds leads: one that could not would
                # just wake up to compete with the running one for the GIL.
                self._polling = True
                return _POLL
            now = time.monotonic()
            if idle_since is None:
                idle_since = now
            elif now - idle_since >= _IDLE_EXIT_SECONDS and self._threads > 1:
                self._threads -= 1
                return None
            self._idle += 1
            self._followers.wait(_IDLE_EXIT_SECONDS)
            self._idle -= 1

    def _poll(self) -> None:
        """Lead: wait for parked connections to turn readable, queue them, wake followers for them."""
        epoll = self._epoll
        events: list[tuple[int, int]] = []
        if epoll is not None:
            try:
                events = epoll.poll()
            except (OSError, ValueError):  # closed by stop()
                events = []
        if any(fd == self._listen_fd for fd, _ in events):
            self._queue_accepted()  # still leading: nobody else waits in the epoll meanwhile
        spawn = 0
        with self._lock:
            self._polling = False
            if epoll is not None and epoll is not self._epoll:
                epoll.close()  # stop() let go of it while we waited
            self._harvested = time.monotonic()
            self._queue_events(events)
            # This thread takes one; followers take the rest there are slots for, and one leads next.
            slots = self._target - (len(self._running) - len(self._waiting))
            wanted = min(len(self._ready), max(slots, 0))
            woken = min(wanted, self._idle)
            if woken:
                self._followers.notify(woken)
            if wanted > woken + 1:
                spawn = wanted - woken - 1
                self._threads += spawn
                self._starting += spawn
        self._spawn(spawn)

    def _queue_events(self, events: list[tuple[int, int]]) -> bool:
        """Queue the parked connections that turned readable; whether new connections wait (lock held)."""
        accepting = False
        for fd, _ in events:
            if fd == self._eventfd:
                with contextlib.suppress(OSError):
                    os.eventfd_read(fd)
            elif fd == self._listen_fd:
                accepting = True
            else:
                handler = self._parked.pop(fd, None)
                if handler is not None:
                    self._ready.append(_Wake(self._wake, handler))
        return accepting

    def _monitor_run(self) -> None:
        """While work runs: gather what turns ready when nobody waits in the epoll, and treat
        work running longer than ``long`` as waiting, letting another thread take the queue.

        It looks every ``long / 2`` while work is queued, every ``_GLANCE_SECONDS``
        while work runs with nothing queued (a long download, say), and sleeps once
        nothing has run for a second (the next work to start wakes it).
        """
        quiet_since = time.monotonic()
        while True:
            with self._lock:
                if self._stopped:
                    return
                now = time.monotonic()
                if not self._running:
                    if now - quiet_since >= 1.0:
                        self._monitor_waiting = True
                        self._watch.wait()
                        self._monitor_waiting = False
                        quiet_since = time.monotonic()
                    else:
                        self._watch.wait(_GLANCE_SECONDS)
                    continue
                quiet_since = now
                harvest = (not self._polling and self._epoll is not None
                           and now - self._harvested >= _HARVEST_SECONDS)
            if harvest:
                self._harvest()
            spawn = 0
            with self._lock:
                now = time.monotonic()
                if self._ready and not self._free_slot():
                    for ident, began in self._running.items():
                        if now - began >= self.long:
                            self._waiting.add(ident)
                if self._ready and self._free_slot():
                    spawn = self._dispatch()
                queued = bool(self._ready)
            if spawn:
                self._spawn(spawn)
            time.sleep(self.long / 2 if queued else _GLANCE_SECONDS)


class _Wake:
    """Queued work: serve a parked connection that turned readable."""

    __slots__ = ("_handler", "_wake")

    def __init__(self, wake: Callable[[Parked], None], handler: Parked) -> None:
        self._wake, self._handler = wake, handler

    def __call__(self) -> None:
        self._wake(self._handler)


def _poll_marker() -> None:
    raise AssertionError("the poll marker is never run")


_POLL: Work = _poll_marker

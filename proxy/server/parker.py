"""Parker: idle keep-alive client connections wait in one epoll, not in a thread each.

Between two requests a keep-alive connection has nothing to do. Rather than a
thread blocked in the next read, its handler (with an empty read buffer, so no
byte is held anywhere but the kernel) is parked here, and the thread goes back
to the server's idle workers. When the client sends again, hangs up, or the
watchdog cuts the read side at the client idle timeout (which the handler
armed before parking), the socket turns readable, leaves the epoll, and the
handler is given to a worker thread that reads the next request as before.
So the runnable threads number the exchanges in progress, not the connections.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from typing import Protocol


class Parked(Protocol):
    """What the parker needs of a handler: the descriptor it waits on."""

    def fileno(self) -> int: ...


_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP


class Parker:
    """One thread and one epoll holding parked connections; ``wake`` is called with each that turns ready."""

    def __init__(self, wake: Callable[[Parked], None]) -> None:
        self._wake = wake
        self._parked: dict[int, Parked] = {}
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def park(self, handler: Parked) -> bool:
        """Hold ``handler`` until its socket is readable; False if the parker is stopped (caller closes)."""
        fd = handler.fileno()
        with self._lock:
            if self._stopped:
                return False
            epoll = self._start()
            self._parked[fd] = handler
            epoll.register(fd, _EVENTS | select.EPOLLONESHOT)
        return True

    def count(self) -> int:
        with self._lock:
            return len(self._parked)

    def stop(self) -> list[Parked]:
        """Stop the thread; returns the handlers still parked, for the caller to close."""
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
            left, self._parked = list(self._parked.values()), {}
            pipe, thread = self._pipe, self._thread
        if pipe is not None:
            os.write(pipe[1], b"x")
        if thread is not None:
            thread.join(5.0)
        return left

    def _start(self) -> select.epoll:
        if self._epoll is None:  # lock held
            self._epoll = select.epoll()
            self._pipe = os.pipe()
            self._epoll.register(self._pipe[0], select.EPOLLIN)
            self._thread = threading.Thread(target=self._run, args=(self._epoll, self._pipe),
                                            name="fwdproxy-parker", daemon=True)
            self._thread.start()
        return self._epoll

    def _run(self, epoll: select.epoll, pipe: tuple[int, int]) -> None:
        try:
            while True:
                ready = epoll.poll()
                woken = []
                with self._lock:
                    if self._stopped:
                        return
                    for fd, _ in ready:
                        if fd == pipe[0]:
                            continue
                        handler = self._parked.pop(fd, None)
                        if handler is not None:
                            epoll.unregister(fd)
                            woken.append(handler)
                for handler in woken:
                    self._wake(handler)
        finally:
            epoll.close()
            os.close(pipe[0])
            os.close(pipe[1])

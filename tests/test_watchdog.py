"""The watchdog's deadlines on real sockets: what each arming cuts, and that a blocked send wakes.

A peer that never reads fills the socket buffers, so a send blocks; only a
deadline armed for writing (both sides cut) ends it. Cutting the read side
alone leaves it blocked: that was how a deaf client pinned a handler thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from proxy.server.watchdog import Watchdog


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog(interval=0.05)
    yield dog
    dog.stop()


@pytest.fixture
def deaf_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair whose far end never reads."""
    near, far = socket.socketpair()
    yield near, far
    near.close()
    far.close()


def blocked_send(sock: socket.socket) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(b"x" * (64 << 20))
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, errors


def test_arm_write_wakes_a_send_blocked_on_a_peer_that_never_reads(watchdog: Watchdog, deaf_pair: tuple[socket.socket, socket.socket]) -> None:
    near, _far = deaf_pair
    deadline = watchdog.watch(near)
    deadline.arm_write(0.2)
    start = time.monotonic()
    thread, errors = blocked_send(near)
    thread.join(10)
    assert not thread.is_alive() and errors, "the send was not woken"
    assert deadline.fired and time.monotonic() - start < 8  # 0.2 s, plus room for a loaded machine


def test_arm_read_does_not_wake_a_blocked_send(watchdog: Watchdog, deaf_pair: tuple[socket.socket, socket.socket]) -> None:
    """Why sends arm for writing: cutting the read side leaves a blocked send blocked."""
    near, _far = deaf_pair
    deadline = watchdog.watch(near)
    deadline.arm_read(0.1)
    thread, errors = blocked_send(near)
    thread.join(0.6)
    assert deadline.fired and thread.is_alive() and not errors
    near.shutdown(socket.SHUT_RDWR)  # end it here
    thread.join(5)
    assert not thread.is_alive()


def test_arm_read_cuts_only_reading_so_an_answer_can_follow(watchdog: Watchdog, deaf_pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = deaf_pair
    deadline = watchdog.watch(near)
    deadline.arm_read(0.1)
    assert near.recv(10) == b""  # the cut read returns as if the peer had closed
    near.sendall(b"408")  # writing still works
    assert far.recv(10) == b"408"


def test_clear_after_a_read_phase_leaves_no_read_only_cut_behind(watchdog: Watchdog, deaf_pair: tuple[socket.socket, socket.socket]) -> None:
    """The header phase arms for reading; extend() after clear() must cut both sides."""
    near, _far = deaf_pair
    deadline = watchdog.watch(near)
    deadline.arm_read(30)
    deadline.clear()
    deadline.extend(0.2)
    thread, errors = blocked_send(near)
    thread.join(5)
    assert not thread.is_alive() and errors


def test_cleared_deadline_never_fires(watchdog: Watchdog, deaf_pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = deaf_pair
    past_due = threading.Event()
    ticks_after: list[float] = []

    def tick() -> None:  # a chore runs after its tick's expiry check: the 2nd one's check was past due
        if time.monotonic() > due:
            ticks_after.append(time.monotonic())
            if len(ticks_after) >= 2:
                past_due.set()

    deadline = watchdog.watch(near)
    due = time.monotonic() + 0.05
    deadline.arm_write(0.05)
    deadline.clear()
    watchdog.every_tick(tick)
    assert past_due.wait(10)
    assert not deadline.fired
    far.sendall(b"ok")
    assert near.recv(2) == b"ok"

"""The one bounded wait for what only polling can observe (another process's /proc, a socket's state).

Prefer an event: a Condition, ``RunningProxy.wait_flows``, ``FlowStore.wait_for``,
a semaphore the origin releases. Use this only where the code under test offers no hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = INTERVAL) -> T:
    """``check()``'s first truthy value, polled every ``interval`` s for at most ``timeout`` s.

    On timeout it returns the last (falsy) value, so ``assert wait_until(...)`` fails
    with what was last seen; ``check`` runs at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

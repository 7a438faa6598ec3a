"""File descriptors: lift the soft limit, and size the proxy's limits to what is left.

Every client connection holds a socket, and usually one to its origin; a
tunnel that waits on a slow side holds a pipe (two descriptors) as well, and
the upstream pool keeps idle connections open. A proxy that accepts more
clients than it has descriptors for fails in the worst way: accept() returns
EMFILE while the listening socket stays readable, so the accept loop spins and
the clients in the listen queue get neither an answer nor a close. This
module owns the arithmetic; the server applies it and answers the overflow.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Listener, watchdog and relay internals, spare pipes, log files, a margin.
RESERVED = 64
# Of what is left: a quarter for client sockets, a quarter for their
# upstream connections, a quarter for idle pooled ones, a quarter for pipes.
SHARES = 4


def raise_soft_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit, as nginx and squid do; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
        except (ValueError, OSError):
            pass  # keep what we have
    return soft_limit()


def soft_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class Budget:
    """How many clients and idle pooled connections the descriptor limit allows."""

    limit: int
    max_clients: int
    max_idle: int

    @classmethod
    def for_limit(cls, limit: int, max_clients: int, max_idle: int) -> Budget:
        share = max(1, (limit - RESERVED) // SHARES)
        return cls(limit, min(max_clients, share), min(max_idle, share))

    def note(self, wanted_clients: int) -> str | None:
        """A line for the log when the limit cut --max-clients, else None."""
        if self.max_clients >= wanted_clients:
            return None
        return (f"max-clients lowered from {wanted_clients} to {self.max_clients}: the descriptor "
                f"limit (RLIMIT_NOFILE) is {self.limit}, and each client may need its own, one "
                f"upstream and a share of pipes and pooled connections; raise it with ulimit -n")

"""The proxy as a user starts it: ``python -m proxy`` in a child process, its address read from the startup line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Running:
    """``python -m proxy *flags``; ``address`` comes from its "listening on" line.

    That line must be the first on stderr unless ``preamble`` (lines such as the CA being
    created or a limit being lowered may come before it; ``head`` holds them all, banner included).
    """

    def __init__(self, *flags: str, env: dict[str, str] | None = None, preamble: bool = False,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", *flags], cwd=ROOT, text=True,
                                     stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                                     preexec_fn=preexec_fn)
        assert self.proc.stderr is not None
        lines: list[str] = []
        while True:
            lines.append(self.proc.stderr.readline())
            match = re.search(r"listening on http://([\d.]+):(\d+)", lines[-1])
            if match or not preamble or not lines[-1]:
                break
        self.banner = lines[-1]
        self.head = "".join(lines)
        if not match:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        assert match, self.head
        self.address = (match.group(1), int(match.group(2)))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, err


def churn_proxy() -> Iterator[tuple[int, tuple[str, int]]]:
    """Body of the stress fixtures: one worker, short timeouts; yields (pid, address), terminated after."""
    r = Running("--port", "0", "--workers", "1", "--log-level", "warning", "--timeout", "2", "--header-timeout", "2")
    yield r.proc.pid, r.address
    r.proc.terminate()
    r.proc.communicate(timeout=10)

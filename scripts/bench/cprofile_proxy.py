"""Run ``python -m proxy`` with cProfile in every thread; merged stats go to a file at exit.

Used by ``scripts/bench.py --profile``: ``python cprofile_proxy.py OUT.pstats cpu|wall [proxy flags]``.
With ``cpu`` the clock is each thread's CPU time (where the CPU goes); with
``wall`` it is the wall clock (where threads wait: locks, the GIL, sockets).
cProfile only follows the thread that enables it, so Thread.run is wrapped to
give each connection thread its own profiler; at exit (after SIGTERM makes the
proxy shut down) all of them are merged into one pstats file.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import runpy
import sys
import threading
import time
from collections.abc import Callable

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()
_original_run = threading.Thread.run
_timer: Callable[[], float] = time.perf_counter


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile(_timer)
    with _lock:
        _profiles.append(profile)
    profile.enable()
    try:
        _original_run(self)
    finally:
        profile.disable()


def main() -> None:
    global _timer
    out, clock, sys.argv = sys.argv[1], sys.argv[2], ["proxy", *sys.argv[3:]]
    _timer = time.thread_time if clock == "cpu" else time.perf_counter
    sys.path.insert(0, os.getcwd())  # the checkout, where the proxy package is
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    main_profile = cProfile.Profile(_timer)
    main_profile.enable()
    try:
        runpy.run_module("proxy", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profile.disable()
        with _lock:
            profiles = list(_profiles)
        stats = pstats.Stats(main_profile)
        for profile in profiles:
            try:
                stats.add(profile)
            except (TypeError, ValueError):
                continue  # a thread still running: its numbers are partial anyway
        stats.dump_stats(out)


if __name__ == "__main__":
    main()

"""The C allocator's settings for a long-running threaded proxy (glibc only; elsewhere nothing).

Python hands every allocation above 512 bytes (read buffers, bodies, header
sections) to malloc. glibc gives each thread that allocates its own arena,
up to eight per core, and memory freed into one arena is not reused by
threads on another: with dozens of handler threads each holding on to the
pieces of 64 KiB-256 KiB body buffers in its own arena, the resident size
settles well above what the proxy uses. Two arenas lower that plateau by
about a sixth (figures in docs/design-notes.md); fewer arenas cost little
contention, since the GIL already serialises the allocating threads.

The mmap threshold is left to glibc: holding it at 128 KiB lowered memory a
little more but made every 256 KiB body read an mmap and a munmap, and large
downloads slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_ARENA_MAX = -8
ARENAS = 2


def tune_allocator() -> bool:
    """Apply the setting above at start, before threads exist; False where it does not apply."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, ARENAS) == 1)

"""The C allocator's settings for a long-running threaded proxy (glibc only; elsewhere nothing).

Python hands every allocation above 512 bytes (read buffers, bodies, header
sections) to malloc. glibc gives each thread that allocates its own arena,
up to eight per core, and raises its mmap threshold each time a large block
is freed, so 64 KiB-256 KiB body buffers, once served by mmap and returned
to the system on free, end up carved out of those arenas and stay resident.
Two arenas and a fixed mmap threshold lower the plateau the resident size
reaches under churn by about a fifth (figures in docs/design-notes.md); fewer
arenas cost little contention, since the GIL already serialises the threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's starting value, held fixed
TRIM_THRESHOLD = 256 * 1024


def tune_allocator() -> bool:
    """Apply the settings above at start, before threads exist; False where they do not apply."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, ARENAS), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))

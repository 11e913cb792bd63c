"""Keep freed memory in the process for reuse, so CPU inference does not page-fault on every tensor.

Why: a PyTorch forward pass on the CPU allocates each activation afresh. With glibc's defaults, blocks of a
few megabytes are handed back to the operating system when freed (``munmap`` or a heap trim) and the next
batch faults every page in again, zero-filled by the kernel. For SMICNet's sweep that was about 100 page
faults per patch and two thirds of the run time: on 2 cores the network scored ~3,900 patches/s, and
~10,000 patches/s once freed memory stays in the process (measured with ``benchmarks/bench_landmarks.py``).

:func:`retain_freed_memory` raises glibc's mmap threshold to its maximum (32 MiB: smaller blocks come from
the heap) and its trim threshold (freed heap memory up to this size is kept for reuse instead of being
returned). It is process-wide and idempotent, does nothing outside glibc (macOS, Windows, musl) and can be
turned off with ``COCHLEA_TOOLKIT_KEEP_FREED_MEMORY=0``. The cost is at most ``keep_mb`` of resident memory
that the process would otherwise have given back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: Environment switch: "0" leaves the allocator alone.
ENV_SWITCH = "COCHLEA_TOOLKIT_KEEP_FREED_MEMORY"

_applied: int | None = None


def retain_freed_memory(keep_mb: int = 512) -> bool:
    """Ask glibc to keep up to ``keep_mb`` MiB of freed memory for reuse; True when the settings are in force.

    Call before CPU inference. Later calls with the same or a smaller ``keep_mb`` do nothing.
    """
    global _applied
    if _applied is not None and _applied >= keep_mb:
        return True
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, int(keep_mb) * 1024 * 1024) == 1
    if ok:
        _applied = int(keep_mb)
    return ok

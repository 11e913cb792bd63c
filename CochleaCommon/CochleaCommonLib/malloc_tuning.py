"""Keep glibc's malloc from handing batch-sized buffers back to the kernel after every use (the ``cochlea`` CLI).

Why: inference allocates and frees buffers of 1-30 MB per batch (patches, activations). With glibc's defaults,
blocks above a threshold that adapts as the process runs are mapped fresh from the kernel and unmapped when
freed, and the heap's top is trimmed as soon as 128 kB lie free; every new batch then touches fresh pages. In a
new process, before the threshold has adapted, a SMICNet fast sweep on 2 CPU cores took 230,000 to 1,000,000
minor page faults and up to 1 s longer than the same sweep run a second time; with the thresholds below, 80,000
faults and no first-run penalty (measured with ``/usr/bin/time``; see issue #4's notes). Memory is reused,
not grown: the peak is that of the largest batch either way.

Only the command line calls this, in its own process. A library must not retune the allocator of the
application hosting it (Slicer), and a user who sets ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
keeps their settings. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap, which is reused (a fixed value also stops the adaptive threshold); 32 MiB
#: is glibc's documented maximum on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20
#: Free memory at the heap's top returned to the kernel only above this.
TRIM_THRESHOLD_BYTES = 256 * 2 ** 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc_for_batches() -> bool:
    """Set glibc's mmap and trim thresholds for batch inference; ``True`` when they were set.

    Does nothing (``False``) off Linux, without glibc's ``mallopt``, or when the user set either threshold in
    the environment.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1


__all__ = ["tune_malloc_for_batches"]

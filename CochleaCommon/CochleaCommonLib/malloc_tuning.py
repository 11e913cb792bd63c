"""Keep glibc's malloc from handing batch-sized buffers back to the kernel after every use (the ``cochlea`` CLI).

Why: inference allocates and frees buffers of 1-30 MB per batch (patches, activations). With glibc's defaults,
blocks above a threshold that adapts as the process runs are mapped fresh from the kernel and unmapped when
freed, and the heap's top is trimmed as soon as 128 kB lie free; a batch can then touch fresh pages.

History and what it does: an earlier version of this setting (``cpu_allocator.py``, applied for every CPU
classifier) was dropped in 15ef950 because, with batches of 64, three CLI runs each showed no difference.
Measured again over ten CLI runs each on the same 16,000-patch CT (2 cores, ``/usr/bin/time``): the typical run
is the same (median 2.5-2.6 s of compute either way), but without the setting 3 of 10 runs hit 0.86-1.1 million
minor page faults and took 3.1-4.7 s; with it, every run had 74,000-81,000 faults and the slowest took 3.2 s (on
a loaded machine). So it removes an intermittent tail, not a steady cost. Memory is reused, not grown: the
peak of the 512x512x400 CT benchmark is 650 MB with it.

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

"""Keep large frame buffers in the heap instead of mapping and unmapping them per frame.

Every decoded and colour-converted frame is a fresh multi-megabyte allocation
(6 MB at 1080p). glibc serves those with ``mmap`` and returns them with
``munmap`` (or trims the heap after a few are freed), so each frame's pages are
faulted in and zeroed by the kernel again: measured on a 2-core VM, 600,000
page faults and 1.6 s of system time for 600 frames of 1080p, in about half of
the runs (it depends on the order threads free memory). Raising glibc's mmap
and trim thresholds once per process makes those buffers recycled: 11,000 faults.

The setting is process-wide. Its cost: up to ``TRIM`` bytes of freed memory per
malloc arena may stay mapped to the process (reused by the next frames). Frames
larger than ``MMAP_THRESHOLD`` (e.g. 4K RGB, 25 MB) keep glibc's behaviour. Set
``SAMTRACK_MALLOC_TUNING=0`` to leave the allocator alone. A no-op where the C
library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 16 << 20  # frames up to 16 MB (1080p RGB is 6 MB) come from the heap; 30 MB chunk blocks are still mapped
TRIM = 64 << 20  # freed heap kept for the next frames (per arena), then returned
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False
_lock = threading.Lock()


def keep_large_buffers() -> bool:
    """Once per process: raise glibc's mmap/trim thresholds. True when they were set."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
        if os.environ.get("SAMTRACK_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
                return False  # musl and others: not glibc's allocator
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM) == 1
        except OSError:
            return False
        log.debug("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)",
                  MMAP_THRESHOLD >> 20, TRIM >> 20, "set" if ok else "refused")
        return ok

"""Keep freed host memory for reuse: fewer page faults for NumPy's temporaries (glibc only).

A training step allocates and frees thousands of temporary arrays of a few recurring sizes.
glibc's malloc serves large blocks with fresh ``mmap`` pages and gives them back on ``free``,
and trims the top of its heap once more than 128 KiB there is free, so each step gets its
arrays as new pages again and every first touch of a page is a fault: about 28,000 faults per
28x28 U-Net step at batch 64, some 9% of its CPU time. Raising the mmap threshold to its
ceiling (32 MiB on 64-bit glibc; larger blocks are still mapped and unmapped) and the trim
threshold to 1 GiB lets blocks up to 32 MiB come from the heap and stay there between steps:
about 100-200 faults per step (docs/engine.md has the measurements). Both settings are
needed; either alone makes it worse (a fixed threshold turns off glibc's adaptive one). The process
keeps up to 1 GiB of freed memory instead of returning it, which a training process would
have asked for again at the next step anyway.

``REFGEN_MALLOC=system`` leaves glibc's defaults alone (and explicit ``MALLOC_*_`` environment
variables always win: nothing is changed when one is set).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module doc); True if they were set."""
    if (not sys.platform.startswith("linux") or os.environ.get("REFGEN_MALLOC") == "system"
            or any(k in os.environ for k in _ENV)):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

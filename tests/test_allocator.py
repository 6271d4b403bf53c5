"""refgen.allocator: importing refgen makes glibc keep freed blocks up to 32 MiB in the heap
for reuse (fewer page faults per training step), unless told not to."""
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# In a fresh process: free a 20 MiB array and report how much free memory glibc keeps
# (mallinfo2's fordblks) and whether refgen set the thresholds.
PROBE = """
import ctypes, numpy as np, refgen.allocator as al
import refgen
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
a = np.ones(20 << 18, np.float32)  # 20 MiB
del a
print(libc.mallinfo2().fordblks >> 20)
"""


def _glibc_with_mallinfo2():
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def _kept_mib(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "REFGEN_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=dict(clean, **env),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_freed_blocks_stay_in_the_heap_unless_refgen_malloc_is_system():
    assert _kept_mib() >= 20                       # the freed 20 MiB is kept for reuse
    assert _kept_mib(REFGEN_MALLOC="system") < 20  # glibc's default unmaps it at once


def test_explicit_settings_win(monkeypatch):
    from refgen import allocator
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("REFGEN_MALLOC", "system")
    assert allocator.keep_freed_memory() is False

"""Keep freed memory in the process (glibc), so each training step reuses pages instead of faulting in new ones.

glibc's malloc serves blocks over its mmap threshold (128 KiB, adjusted up to 32 MiB) with a fresh ``mmap`` and
hands the heap's free top back to the kernel past its trim threshold.  A CPU training step allocates and frees
the same feature maps and gradients every step, so by default every step touches fresh pages, each a page
fault that zeroes 4 KiB: 6,300 faults per step for 8 Myrtle-5 members of width 32 on 8x8 digits, a third of
the step on this machine (26 ms; 18 ms without them).  This is what jemalloc or tcmalloc buy PyTorch users on
CPU, done with glibc's own ``mallopt``: blocks up to ``MMAP_THRESHOLD`` come from the heap, and the heap keeps
what is freed.  Peak memory is unchanged; the process keeps its high-water mark instead of returning it.

Set ``WIDTHKIT_MALLOC=system`` to leave malloc as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks over 1 GiB still get their own mapping
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim below 2 GiB of free heap top


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process as the module says; True if it is (now or already) tuned.

    False where there is nothing to tune (not Linux with glibc) or the user opted out (``WIDTHKIT_MALLOC=system``).
    """
    if os.environ.get("WIDTHKIT_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

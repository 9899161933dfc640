"""Keep freed memory in the process on CPU (glibc's malloc), so tensors stop paying page faults.

Every training step allocates and frees the same few-megabyte tensors (hidden states, logits, their
gradients). By default glibc hands blocks above its mmap threshold to the kernel and back, and trims the heap
top whenever it exceeds its trim threshold, so each step faults its activations in page by page: on the
default run that was a quarter of a GRPO step (perf/profile_step.py: 1.53-1.75 s a step by default,
1.2 s with the memory kept). `keep_freed_memory` raises both thresholds at run time (`mallopt`), which is what
the MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ environment variables would do from the
start. The price: memory freed after a peak stays with the process instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: blocks up to this size come from the heap: the logits of a default training micro-batch and their gradients
#: are 30-60 MiB, above glibc's own dynamic threshold (at most 32 MiB on 64-bit), which older glibc versions
#: also cap mallopt at, hence the fallback
MMAP_THRESHOLDS = (512 << 20, 32 << 20)
#: the heap top is returned to the system only above this much free memory
TRIM_THRESHOLD = 1 << 30
#: extra memory requested from the system with each heap growth
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False (and nothing changed) where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl has mallopt as a no-op stub
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, value) == 1 for value in MMAP_THRESHOLDS):
        return False
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(_M_TOP_PAD, TOP_PAD) == 1

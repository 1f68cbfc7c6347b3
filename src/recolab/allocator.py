"""Keeping the C allocator's memory between training steps (glibc's `mallopt`), on Linux.

Every training step allocates and frees the same large tensors (activations and gradients of a
few MB). By default glibc serves blocks above a threshold with fresh `mmap` pages and returns
them to the kernel when they are freed, and it trims the top of its heap once more than 128 KiB
there is free; its threshold adapts to the sizes it sees, but with many sizes in flight some
blocks keep going back and forth. Each round trip costs page faults and zeroed pages in the next
step: over a thousand faults per step in the Census-Income MMoE benchmark, none after tuning
(experiments/bench/speed.md measures the step with and without). `tune_malloc` raises both
thresholds, so the step's blocks stay in the process and are reused. Blocks larger than the
mmap threshold (whole data columns) are still mapped and unmapped as before.

`python -m recolab train` calls it before reading data unless `malloc_tuning=false`. It is a
no-op (returning False) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # the upper limit `man mallopt` gives for 64-bit systems
TRIM_THRESHOLD = 256 * 2**20


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve blocks up to `mmap_threshold` bytes from the heap and keep up to `trim_threshold`
    free bytes at its top. Returns whether glibc accepted both settings."""
    if not sys.platform.startswith("linux"):
        return False
    # The symbols already loaded into this process (no `ctypes.util.find_library`, which would
    # start a subprocess: a fork of a process that may already hold gigabytes).
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it
        log.info("malloc tuning skipped: the C library is not glibc")
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) & bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )
    if not ok:
        log.warning(
            "glibc refused mallopt(mmap_threshold=%d, trim_threshold=%d)",
            mmap_threshold,
            trim_threshold,
        )
    return ok

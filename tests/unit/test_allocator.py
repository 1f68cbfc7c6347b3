"""recolab.allocator.tune_malloc: after tuning, glibc serves a training step's blocks from its heap."""

from __future__ import annotations

import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# In a fresh interpreter: allocate a 16 MiB tensor and print whether its block lies below the
# program break, i.e. in the heap. Untuned, glibc maps a block that large with mmap (above its
# initial 128 KiB threshold), far from the heap; tuned (threshold 32 MiB), it carves it from
# the heap, where freed blocks stay for the next step.
IN_HEAP = """
import ctypes, resource, sys, torch
from recolab.allocator import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
    # no child process either (a fork of a large training process would count in its memory)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss == 0
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
block = torch.ones(4 * 2**20)
print(block.data_ptr() < libc.sbrk(0))
"""


def in_heap(mode: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", IN_HEAP, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "True"


@glibc
def test_tuned_malloc_serves_large_blocks_from_the_heap_and_the_default_maps_them() -> None:
    assert in_heap("tuned")
    assert not in_heap("default")

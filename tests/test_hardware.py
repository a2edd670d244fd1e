"""The machine facts and settings in efficientad_plugin.hardware."""

from __future__ import annotations

import subprocess
import sys

import pytest

from efficientad_plugin.hardware import large_allocations_to_mmap

# In a fresh interpreter: free a 64 MB buffer (glibc then raises its own mmap threshold to 32 MB), so a 2 MB tensor
# lands on the heap; inside large_allocations_to_mmap() a 2 MB tensor gets a mapping of its own, after it the heap.
_PROBE = """
import torch
from efficientad_plugin.hardware import large_allocations_to_mmap

def on_heap(tensor):
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(part, 16) for part in line.split()[0].split("-"))
            if start <= address < end:
                return True
    return False

big = torch.empty(16 << 20, dtype=torch.float32); del big
before = torch.empty(512 << 10, dtype=torch.float32)
print(on_heap(before))
with large_allocations_to_mmap(1 << 20) as changed:
    print(changed)
    inside = torch.empty(512 << 10, dtype=torch.float32)
    print(on_heap(inside))
after = torch.empty(512 << 10, dtype=torch.float32)
print(on_heap(after))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc/self/maps are Linux's")
def test_large_allocations_to_mmap_moves_megabyte_buffers_off_the_heap() -> None:
    lines = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True).stdout.split()
    assert lines == ["True", "True", "False", "True"]


def test_large_allocations_to_mmap_rejects_a_non_positive_threshold() -> None:
    with pytest.raises(ValueError, match="threshold_bytes"), large_allocations_to_mmap(0):
        pass

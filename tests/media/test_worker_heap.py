"""agent.worker_heap: after ``keep_arrays_on_heap`` a render-sized array (4 MiB) comes from
glibc's heap, not from a fresh mmap (which costs a page fault per 4 KiB each time), and its
memory is kept for the next one. Checked with glibc's own accounting (mallinfo2) in a fresh
interpreter, so this process's allocator is left alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = r"""
import ctypes, sys
import numpy as np
from agent.worker_heap import keep_arrays_on_heap

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info

def mapped_and_heap(n_bytes):
    a = np.ones(n_bytes // 8)
    info = libc.mallinfo2()
    return info.hblkhd, info.arena

if sys.argv[1] == "tuned":
    assert keep_arrays_on_heap()
mapped_before, _ = mapped_and_heap(0)
mapped_during, _ = mapped_and_heap(4 << 20)
_, heap_after = mapped_and_heap(0)          # the 4 MiB array is freed by now
print(mapped_during - mapped_before, heap_after >= 4 << 20)
"""


def _probe(mode: str) -> tuple[int, bool]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    mapped, kept = out.stdout.split()
    return int(mapped), kept == "True"


def test_render_sized_arrays_come_from_a_kept_heap():
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("not glibc >= 2.33")
    mapped, _kept = _probe("default")
    assert mapped >= 4 << 20            # glibc's default: the array is a fresh mapping
    mapped, kept = _probe("tuned")
    assert mapped == 0 and kept          # from the heap, which keeps it once freed

"""glibc malloc settings for a render worker: its arrays come from a heap it keeps.

A render allocates and frees arrays of a few megabytes all the time (a call's header
columns, decoded samples, each direction's PCM, the DTMF scan's blocks). glibc serves every
block above its mmap threshold (128 KiB at start, adjusted as blocks are freed) with a fresh
``mmap`` and returns it with ``munmap`` on free, so the worker pays a page fault for each 4 KiB
of such an array, call after call: with the thresholds below, ``bench/render_rate.py`` (40
calls of 60 s, G.711 to WAV, same run) used 0.44 -> 0.36 CPU-s. The heap keeps up to
``TRIM_THRESHOLD_BYTES`` of freed memory for the next call; blocks above
``MMAP_THRESHOLD_BYTES`` (a very long call's PCM) are still mapped, and given back, as before.

Only for the worker processes: the capture process's allocation pattern is another one.
"""

from __future__ import annotations

import ctypes

__all__ = ["keep_arrays_on_heap", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES"]

MMAP_THRESHOLD_BYTES = 32 << 20    # glibc's own ceiling for its adjusted threshold
TRIM_THRESHOLD_BYTES = 64 << 20
_M_TRIM_THRESHOLD = -1             # mallopt parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_arrays_on_heap() -> bool:
    """Set the thresholds (see the module docstring); False where the C library has no
    ``mallopt`` or refuses (not glibc): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))

"""Fixed-width rows of bytes at many offsets of one buffer, in one numpy call.

The capture reader (record headers), the RTP fast path (frame headers), the media log
(payloads) and the renderer (G.711 payloads) all cut ``width`` bytes at each of many offsets.
``sliding_window_view(data, width)[starts]`` does it, but numpy copies such rows byte by byte;
seen as ``width``-byte void items the same gather is one memcpy per row: 2-7x faster
(measured 20,000 rows of 12-28 bytes, 6,000 of 160).
"""

from __future__ import annotations

import numpy as np

__all__ = ["byte_rows"]


def byte_rows(data, starts: np.ndarray, width: int) -> np.ndarray:
    """A new, writable (len(starts), width) uint8 array whose row i is
    ``data[starts[i] : starts[i] + width]``. ``data``: a contiguous uint8 array or a bytes-like
    object; every row must lie inside it."""
    size = len(data)
    if width <= 0 or size < width:
        if width > 0 and len(starts):
            raise IndexError(f"rows of {width} bytes do not fit in {size} bytes")
        return np.zeros((len(starts), max(width, 0)), dtype=np.uint8)
    items = np.ndarray(shape=(size - width + 1,), dtype=np.dtype((np.void, width)), buffer=data, strides=(1,))
    return items[starts].view(np.uint8).reshape(-1, width)

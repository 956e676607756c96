"""byte_rows gathers the same bytes as numpy's sliding window, for every width the agent
uses and at the edges of the buffer."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from agent.byterows import byte_rows


@pytest.mark.parametrize("width", [1, 4, 12, 16, 28, 160, 172])
def test_rows_equal_the_sliding_window(width):
    rng = np.random.default_rng(width)
    data = rng.integers(0, 256, 5000).astype(np.uint8)
    starts = np.concatenate(([0, len(data) - width], rng.integers(0, len(data) - width + 1, 300)))
    expected = sliding_window_view(data, width)[starts]
    got = byte_rows(data, starts, width)
    assert got.dtype == np.uint8 and got.shape == (len(starts), width)
    assert np.array_equal(got, expected)
    assert np.array_equal(byte_rows(data.tobytes(), starts, width), expected)   # from bytes too
    got[0, 0] ^= 0xFF                                                            # a copy, writable
    assert data[0] == expected[0, 0]


def test_no_rows_and_rows_past_the_end():
    data = np.arange(10, dtype=np.uint8)
    assert byte_rows(data, np.zeros(0, dtype=np.int64), 12).shape == (0, 12)
    with pytest.raises(IndexError):
        byte_rows(data, np.array([0]), 12)
    with pytest.raises(IndexError):
        byte_rows(data, np.array([5]), 6)

"""Helpers shared by the tests/net modules: decode frames into datagrams, lay frames out
as a batch."""

from collections import Counter

import numpy as np

from agent.net.decode import FrameDecoder

T0_NS = 1_700_000_000_000_000_000


def decode_all(frames, linktype=1, step_ns=1_000_000, **kw):
    """Decode ``frames`` (bytes or scapy packets) 1 ms apart; return (datagrams, counters)."""
    c: Counter = Counter()
    dec = FrameDecoder(c, **kw)
    out = []
    for i, f in enumerate(frames):
        d = dec.decode(T0_NS + i * step_ns, linktype, bytes(f))
        if d is not None:
            out.append(d)
    return out, c


def as_batch(frames: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Frames back to back in one buffer, as a FrameBatch holds them: (buffer, starts, lengths)."""
    buf = b"".join(frames)
    lens = np.array([len(f) for f in frames], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
    return buf, starts, lens

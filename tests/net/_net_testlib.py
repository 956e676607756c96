"""Helpers shared by the tests/net modules: decode frames into datagrams."""

from collections import Counter

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

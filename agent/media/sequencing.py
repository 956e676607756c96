"""Whole-stream sequencing: the reorder window of ``CallMedia`` over a stream's packets as arrays.

Owns the pure decision, for ONE RTP stream given as arrays in arrival order, of which packets
are accepted, which are duplicates or late, which slots are lost, and when each accepted
packet is released to the ordered log: the same decisions ``CallMedia._accept`` /
``_too_old`` / ``_drain`` make packet by packet (reorder window of N packets / T ns,
``skipped`` slots that tell a late packet from a duplicate), with the same counters.

Cost: a stretch in which every packet continues the stream (extended sequence number one
above the highest so far, nothing held back) is taken at once with array operations; only
an *episode* (from a packet out of order, a gap or a copy until the window is empty again)
is stepped in Python, packet by packet, exactly as ``CallMedia`` does. With 1 % loss and
1 % reordering about one packet in ten is in an episode, and the rest costs a few array
operations per stretch, so loss and reordering do not change the cost per packet much.

Does not own sequence-number restarts, SSRC changes, relay hops or RFC 4733 events: the
caller (``CallMedia.take_whole``) takes a stream here only when it has none of the first
three, and hands the accepted event packets to the tracker itself.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SequenceStart", "StreamSequence", "extend_seq", "jumps_within", "sequence_stream"]


def extend_seq(seq: np.ndarray) -> np.ndarray:
    """Extended sequence numbers (int64) of 16-bit ones, each packet unwrapped against the
    one before it; the first keeps its value."""
    seq = np.asarray(seq, dtype=np.int64)
    step = np.empty_like(seq)
    if not seq.size:
        return step
    step[0] = seq[0]
    d = (seq[1:] - seq[:-1]) & 0xFFFF
    d[d >= 0x8000] -= 0x10000
    step[1:] = d
    return np.cumsum(step)


def jumps_within(ext: np.ndarray, max_dropout: int, max_misorder: int, highest_before: int | None = None) -> bool:
    """True when no packet jumps more than ``max_dropout`` ahead of the highest number before
    it, nor ``max_misorder`` or more behind it: then neither unwrapping against the previous
    packet nor ``CallMedia``'s restart rule (RFC 3550 A.1) can tell a packet apart from what
    ``CallMedia`` computes. ``highest_before``: the stream's highest number before ``ext[0]``
    (None: ``ext`` starts the stream)."""
    if highest_before is not None:
        ext = np.concatenate(([highest_before], ext))
    if ext.size < 2:
        return True
    highest = np.maximum.accumulate(ext)[:-1]
    d = ext[1:] - highest
    return bool(d.max() <= max_dropout and d.min() > -max_misorder)


@dataclass(slots=True)
class SequenceStart:
    """Where a stream's sequencing stands before the packets given: ``CallMedia``'s
    ``StreamState`` fields, with each packet still held in the window as its arrival time."""
    first_ext: int
    next_ext: int
    max_ext: int
    held_arrival_ns: dict[int, int]      # ext -> arrival time, in the window's order
    window_since_ns: int
    skipped: set[int]


@dataclass(slots=True)
class StreamSequence:
    accepted: np.ndarray                 # bool per packet (arrival order)
    released: np.ndarray                 # positions of released packets, in release order
    trigger: np.ndarray                  # per released packet: position of the packet whose arrival released it
    next_ext: int
    max_ext: int
    window: dict[int, int]               # still held at the end: ext -> position (n + i: the
                                         # i-th packet of ``SequenceStart.held_arrival_ns``)
    window_since_ns: int
    skipped: set[int] = field(default_factory=set)
    lost: int = 0
    duplicated: int = 0
    late: int = 0
    reordered: int = 0


def sequence_stream(ext: np.ndarray, arrival_ns: np.ndarray, *, window_packets: int, window_ns: int,
                    max_misorder: int, start: SequenceStart | None = None) -> StreamSequence:
    """Sequence one stream's packets (see the module docstring), from its first packet or,
    with ``start``, from where it stands. ``ext``: extended sequence numbers in arrival order
    (``extend_seq``, checked with ``jumps_within``). Positions ``n + i`` in ``released`` and
    ``window`` are the packets ``start`` held (n = len(ext))."""
    n = int(ext.size)
    highest_before = np.empty(n, dtype=np.int64)
    highest_before[0] = ext[0] - 1 if start is None else start.max_ext
    if n > 1:
        highest_before[1:] = np.maximum.accumulate(ext)[:-1]
        if start is not None:
            np.maximum(highest_before, start.max_ext, out=highest_before)
    irregular = np.flatnonzero(ext != highest_before + 1)
    if not irregular.size and (start is None or not start.held_arrival_ns):
        # All in order: every packet released as it arrives.
        everyone = np.arange(n, dtype=np.int64)
        return StreamSequence(accepted=np.ones(n, dtype=bool), released=everyone, trigger=everyone,
                              next_ext=int(ext[-1]) + 1, max_ext=int(ext[-1]), window={}, window_since_ns=0,
                              skipped=set() if start is None else set(start.skipped))
    ext_l = ext.tolist()
    arr_l = arrival_ns.tolist()
    highest_l = highest_before.tolist()
    accepted = np.ones(n, dtype=bool)
    rel_parts: list[np.ndarray] = []
    trig_parts: list[np.ndarray] = []
    rel: list[int] = []            # releases made inside episodes (positions), with their triggers
    trig: list[int] = []
    if start is None:
        first_ext = next_ext = ext_l[0]
        window: dict[int, int] = {}
        since = 0
        skipped: set[int] = set()
    else:
        first_ext, next_ext, since = start.first_ext, start.next_ext, start.window_since_ns
        window = {e: n + i for i, e in enumerate(start.held_arrival_ns)}
        arr_l += start.held_arrival_ns.values()
        skipped = set(start.skipped)
    lost = duplicated = late = reordered = 0
    scan_gaps = window_packets > 0 and window_ns >= 0    # else _drain fires on the gap's own packet
    irregular_l = irregular.tolist()
    i = 0
    while i < n:
        h = bisect_left(irregular_l, i)
        j = i if window else irregular_l[h] if h < len(irregular_l) else n
        if j > i:
            # In order, nothing held: each packet is released as it arrives.
            if rel:
                rel_parts.append(np.array(rel, dtype=np.int64))
                trig_parts.append(np.array(trig, dtype=np.int64))
                rel, trig = [], []
            stretch = np.arange(i, j, dtype=np.int64)
            rel_parts.append(stretch)
            trig_parts.append(stretch)
            next_ext = ext_l[j - 1] + 1
            i = j
            if i == n:
                break
        # An episode: step packet by packet until nothing is held back.
        k = i
        while k < n:
            e = ext_l[k]
            if e < next_ext or e in window:
                accepted[k] = False
                if e in skipped:
                    skipped.discard(e)
                    late += 1
                    lost -= 1
                elif e < first_ext:
                    late += 1
                else:
                    duplicated += 1
            else:
                if e <= highest_l[k]:
                    reordered += 1
                if not window and e > next_ext and scan_gaps:
                    # A gap opens with nothing held (a loss, most often): the packets that
                    # follow one by one are held until _drain's rule fires (the window full or
                    # too old). A plain scan finds where, instead of a dict insert and a drain
                    # per packet; what it leaves is what stepping them would.
                    since = arr_l[k]
                    deadline = since + window_ns
                    full_at = k + window_packets          # the window is too full there
                    j, follow = k + 1, e + 1
                    while j < n and j < full_at and ext_l[j] == follow and arr_l[j] <= deadline:
                        j += 1
                        follow += 1
                    if j < n and ext_l[j] == follow and (j == full_at or arr_l[j] > deadline):
                        # Fires at j: the gap's slots are given up, k..j released in order.
                        lost += e - next_ext
                        skipped.update(range(max(next_ext, e - max_misorder), e))
                        rel.extend(range(k, j + 1))
                        trig.extend([j] * (j + 1 - k))
                        next_ext = follow + 1
                        if len(skipped) > 4 * max_misorder:
                            floor = next_ext - max_misorder
                            skipped = {s for s in skipped if s >= floor}
                        k = j + 1
                        break
                    window.update(zip(ext_l[k:j], range(k, j)))     # held; j goes step by step
                    k = j
                    continue
                if e == next_ext and not window:
                    rel.append(k)
                    trig.append(k)
                    next_ext += 1
                else:
                    now = arr_l[k]
                    if not window:
                        since = now
                    window[e] = k
                    # CallMedia._drain, not forced.
                    released = False
                    while window:
                        p = window.pop(next_ext, None)
                        if p is not None:
                            rel.append(p)
                            trig.append(k)
                            next_ext += 1
                            released = True
                            continue
                        if len(window) > window_packets or now - since > window_ns:
                            lo = min(window)
                            lost += lo - next_ext
                            skipped.update(range(max(next_ext, lo - max_misorder), lo))
                            next_ext = lo
                            continue
                        break
                    if window and released:
                        since = min(arr_l[p] for p in window.values())
                    if len(skipped) > 4 * max_misorder:
                        floor = next_ext - max_misorder
                        skipped = {s for s in skipped if s >= floor}
            k += 1
            if not window:
                break
        i = k
    if rel:
        rel_parts.append(np.array(rel, dtype=np.int64))
        trig_parts.append(np.array(trig, dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return StreamSequence(
        accepted=accepted,
        released=np.concatenate(rel_parts) if rel_parts else empty,
        trigger=np.concatenate(trig_parts) if trig_parts else empty,
        next_ext=next_ext, max_ext=max(highest_l[-1], ext_l[-1]), window=window, window_since_ns=since,
        skipped=skipped, lost=lost, duplicated=duplicated, late=late, reordered=reordered)

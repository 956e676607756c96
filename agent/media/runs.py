"""RTP of many calls from one capture batch, as arrays grouped by call and direction.

Owns ``RtpRun`` (routed RTP packets of a batch as arrays over the batch's buffer) and
``RunGroups`` (a run sorted by call and direction, with what the media classes check for a
group, computed for all groups at once with numpy reductions). The engine's batch path
builds them; ``CallMedia.take_groups`` (sequencer_bulk.py) and ``MediaCapture.take_groups`` (stream.py) consume
them, so the per-call cost of a batch is a few attribute reads, not a string of numpy calls.
Does not own any media state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agent.byterows import byte_rows

__all__ = ["RtpRun", "RunGroups"]


@dataclass(slots=True)
class RtpRun:
    """RTP packets as arrays. Every packet looks like RTP (version 2, not RTCP) and is
    ``size`` bytes of UDP payload at ``buf[data_start:]``. Addresses are integer keys that
    ``label`` turns into "ip:port" text (the engine's packed ``ip << 16 | port``; label
    numbers when sequencing a raw log). The per-packet path names a destination only when it
    is a known media endpoint (``dst_known``), else "". ``order`` is the arrival order."""
    order: np.ndarray              # int64
    side: np.ndarray          # int64: 0 caller→callee, 1 callee→caller
    arrival_ns: np.ndarray         # int64
    src_key: np.ndarray
    dst_key: np.ndarray
    b0: np.ndarray                 # uint8: version, padding, extension, CSRC count
    b1: np.ndarray                 # uint8: marker | payload type
    seq: np.ndarray                # int64
    rtp_ts: np.ndarray             # int64
    ssrc: np.ndarray               # int64
    size: np.ndarray               # int64 bytes of UDP payload (the whole RTP packet)
    buf: bytes
    data_start: np.ndarray         # int64 offsets of the payloads in buf
    dst_known: np.ndarray          # bool
    label: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.arrival_ns)

    def data(self, i: int) -> bytes:
        start = int(self.data_start[i])
        return self.buf[start:start + int(self.size[i])]

    def each(self, on_rtp: Callable[[int, int, str, str, bytes], bool], positions: np.ndarray) -> int:
        """Feed the packets at ``positions`` one by one to ``on_rtp``; returns how many were
        not RTP."""
        not_rtp = 0
        label = self.label
        for i in positions.tolist():
            dst = label(int(self.dst_key[i])) if self.dst_known[i] else ""
            if not on_rtp(int(self.side[i]), int(self.arrival_ns[i]), label(int(self.src_key[i])), dst,
                          self.data(i)):
                not_rtp += 1
        return not_rtp


class RunGroups:
    """A run sorted by (call, direction), arrival order kept inside each; group ``g`` is run
    positions ``start[g]:end[g]``. Per group (as Python lists): whether every packet has one
    source, SSRC, payload type and size, plain 12-byte headers (first byte 0x80) and
    consecutive sequence numbers, the first values, and the last arrival and RTP timestamp."""

    __slots__ = ("run", "start", "end", "side", "one_src", "src_key", "one_ssrc", "ssrc",
                 "one_pt", "pt", "one_size", "size", "bytes", "plain", "in_seq", "seq",
                 "first_arrival_ns", "first_rtp_ts", "last_arrival_ns", "last_rtp_ts", "deviation",
                 "_tails")

    TAIL = 64                      # newest packets a stream's hop remembers (stream_state.Hop.KEEP)

    def __init__(self, run: RtpRun, starts: np.ndarray) -> None:
        self.run = run
        n = len(run)
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1] = n
        self.start = starts.tolist()
        self.end = ends.tolist()
        self.side = run.side[starts].tolist()
        last = ends - 1

        def one(values: np.ndarray) -> list[bool]:
            return (np.minimum.reduceat(values, starts) == np.maximum.reduceat(values, starts)).tolist()

        pt = (run.b1 & 0x7F).astype(np.int64)
        self.one_src, self.src_key = one(run.src_key), run.src_key[starts].tolist()
        self.one_ssrc, self.ssrc = one(run.ssrc), run.ssrc[starts].tolist()
        self.one_pt, self.pt = one(pt), pt[starts].tolist()
        self.one_size, self.size = one(run.size), run.size[starts].tolist()
        self.bytes = np.add.reduceat(run.size, starts).tolist()
        self.plain = (np.add.reduceat((run.b0 != 0x80).astype(np.int64), starts) == 0).tolist()
        broken = np.zeros(n, dtype=np.int64)
        broken[1:] = ((run.seq[1:] - run.seq[:-1]) & 0xFFFF) != 1
        broken[starts] = 0                     # a group's first packet continues nothing here
        self.in_seq = (np.add.reduceat(broken, starts) == 0).tolist()
        self.seq = run.seq[starts].tolist()
        self.first_arrival_ns = run.arrival_ns[starts].tolist()
        self.first_rtp_ts = run.rtp_ts[starts].tolist()
        self.last_arrival_ns = run.arrival_ns[last].tolist()
        self.last_rtp_ts = run.rtp_ts[last].tolist()
        self.deviation: list[float] = []
        self._tails: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.start)

    def prepare(self, clock_hz: list[int]) -> None:
        """For the groups with a clock rate (0: not taken at once): every packet's RFC 3550
        |D| against its predecessor in the group, ``(arrival step) * clock / 1e9 - (RTP
        timestamp step)`` in RTP ticks, with the float operations of ``CallMedia._accept``;
        and the newest TAIL packets of each group as rows (``tail_rows``)."""
        run = self.run
        counts = np.array(self.end) - np.array(self.start)
        clocks = np.repeat(np.array(clock_hz, dtype=np.int64), counts)
        step = np.zeros(len(run), dtype=np.int64)
        step[1:] = run.arrival_ns[1:] - run.arrival_ns[:-1]
        ticks = np.zeros(len(run), dtype=np.int64)
        ticks[1:] = (run.rtp_ts[1:] - run.rtp_ts[:-1]) & 0xFFFFFFFF
        ticks[ticks >= 0x80000000] -= 0x100000000
        self.deviation = np.abs(step * clocks / 1e9 - ticks).tolist()
        # Tails: one gather per payload size for every group taken at once.
        tails: dict[int, np.ndarray] = {}
        data = np.frombuffer(run.buf, dtype=np.uint8)
        by_width: dict[int, list[int]] = {}
        for g, clock in enumerate(clock_hz):
            if clock and self.one_size[g]:
                by_width.setdefault(self.size[g], []).append(g)
        for width, members in by_width.items():
            spans = [(max(self.start[g], self.end[g] - self.TAIL), self.end[g]) for g in members]
            positions = np.concatenate([np.arange(lo, hi) for lo, hi in spans])
            rows = byte_rows(data, run.data_start[positions], width)
            at = 0
            for g, (lo, hi) in zip(members, spans):
                # A copy: a hop keeps its tail for as long as its stream is quiet (hold), and a
                # view would keep every group's rows of this batch alive with it.
                tails[g] = rows[at:at + hi - lo].copy()
                at += hi - lo
        self._tails = tails

    def tail_rows(self, g: int) -> np.ndarray | None:
        """The newest TAIL packets of group ``g`` as rows of one array (``prepare`` made them for
        a group of one payload size), else None."""
        return self._tails.get(g) if self._tails is not None else None

    def newest_packets(self, g: int) -> Callable[[], list[bytes]]:
        """The newest TAIL packets of group ``g`` as bytes, when asked (a group of several
        payload sizes has no ``tail_rows``)."""
        lo, hi = max(self.start[g], self.end[g] - self.TAIL), self.end[g]
        return lambda: [self.run.data(i) for i in range(lo, hi)]

    def positions(self, g0: int, g1: int) -> np.ndarray:
        """Run positions of groups ``g0:g1`` (one call) in arrival order."""
        lo, hi = self.start[g0], self.end[g1 - 1]
        positions = np.arange(lo, hi)
        if g1 - g0 > 1:
            positions = positions[np.argsort(self.run.order[lo:hi], kind="stable")]
        return positions

"""Per-stream state of a call's sequencer (``sequencer.CallMedia``): the counters a stream
record carries, the mutable state of one stream, the hop a direction's media is taken from,
and the RFC 3550 interarrival jitter, computed in one place for the per-packet and the
whole-array paths (the same float operations in the same order, so both give equal numbers).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agent.media.dtmf import TelephoneEventTracker

__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "CN_PT", "StreamStats", "StreamInfo", "StreamState", "Hop",
           "jitter_deviations", "jitter_after", "jitter_steps"]

# RFC 3550 A.1: a forward jump beyond MAX_DROPOUT or a backward one beyond MAX_MISORDER is
# not loss or reordering but a sequence restart (confirmed by the next packet following it).
MAX_DROPOUT = 3000
MAX_MISORDER = 100
CN_PT = 13


@dataclass(slots=True)
class StreamStats:
    ssrc: int = 0
    src: str = ""                  # "ip:port" the first packet came from
    dst: str = ""
    packets: int = 0               # packets accepted (neither duplicate nor late)
    bytes: int = 0                 # payload bytes of accepted packets
    lost: int = 0                  # sequence slots that never arrived
    duplicated: int = 0            # copies of a packet already accepted (dropped)
    reordered: int = 0             # accepted after a higher sequence number
    late: int = 0                  # arrived after its slot was released as lost (dropped)
    jitter_ms: float = 0.0         # RFC 3550 interarrival jitter at the end, in ms
    first_arrival_ns: int = 0
    last_arrival_ns: int = 0
    payload_types: dict[int, int] = field(default_factory=dict)  # pt -> accepted packets


@dataclass(slots=True)
class StreamInfo:
    index: int                     # stream_index in the media log
    side: int                 # 0 = caller→callee, 1 = callee→caller
    ssrc: int
    stats: StreamStats



class StreamState:
    """Mutable per-stream state (one per SSRC and direction; not a per-packet object)."""

    __slots__ = ("index", "side", "ssrc", "stats", "next_ext", "max_ext", "first_ext",
                 "seq_offset", "window", "window_since_ns", "skipped", "pending",
                 "clock_hz", "jitter_ticks", "prev_arrival_ns", "prev_ts", "event_pts",
                 "dtmf")

    def __init__(self, index: int, side: int, ssrc: int, seq: int) -> None:
        self.index = index
        self.side = side
        self.ssrc = ssrc
        self.stats = StreamStats(ssrc=ssrc)
        self.next_ext = seq          # next extended sequence number to release to the log
        self.max_ext = seq - 1       # highest extended sequence number accepted
        self.first_ext = seq
        self.seq_offset = 0          # added to wire seq after a confirmed restart
        self.window: dict[int, tuple[int, int, int, bool, bytes]] = {}
        self.window_since_ns = 0
        self.skipped: set[int] = set()   # recent slots released as lost (to tell late from dup)
        self.pending: tuple[int, int, int, int, bool, bytes] | None = None  # restart probation
        self.clock_hz = 0
        self.jitter_ticks = 0.0
        self.prev_arrival_ns = -1
        self.prev_ts = 0
        self.event_pts: dict[int, int] = {}     # telephone-event pt -> clock rate (Hz)
        self.dtmf: TelephoneEventTracker | None = None



class Hop:
    """The source a direction's media is taken from, with its most recent packets (kept by
    reference: the active hop pays one deque append; only a second source compares)."""

    __slots__ = ("src", "last_ns", "recent", "tail")
    KEEP = 64           # packets remembered: > 1 s of 20 ms packets

    def __init__(self, src: str) -> None:
        self.src = src
        self.last_ns = 0
        self.recent: deque[bytes] = deque(maxlen=self.KEEP)
        # The newest packets when a run was taken at once (rows of one array, after ``recent``):
        # turned into bytes only if ever compared, which is rare.
        self.tail: np.ndarray | None = None

    def unfold(self) -> None:
        self.recent.extend(row.tobytes() for row in self.tail)
        self.tail = None

    def push_rows(self, rows: np.ndarray) -> None:
        if len(rows) >= self.KEEP:
            self.recent.clear()            # the newest KEEP packets are all in rows
            rows = rows[-self.KEEP:]
        elif self.tail is not None:
            if self.tail.shape[1] == rows.shape[1]:
                rows = np.concatenate((self.tail, rows))[-self.KEEP:]
            else:
                self.unfold()
        self.tail = rows

    def repeats(self, data: bytes) -> bool:
        """Does ``data`` carry the payload of a recent packet of this hop (headers aside)?"""
        if self.tail is not None:
            self.unfold()
        payload = data[12:]
        return any(packet[12:] == payload for packet in self.recent)



def jitter_deviations(clock_hz: int, arrival_ns: np.ndarray, rtp_ts: np.ndarray) -> list[float]:
    """RFC 3550 |D| of each packet after the first against its predecessor, in RTP ticks,
    with the float operations of ``CallMedia._accept``."""
    d_ts = (rtp_ts[1:] - rtp_ts[:-1]) & 0xFFFFFFFF
    d_ts[d_ts >= 0x80000000] -= 0x100000000
    return np.abs((arrival_ns[1:] - arrival_ns[:-1]) * clock_hz / 1e9 - d_ts).tolist()


def jitter_after(st: "StreamState", first_arrival_ns: int, first_rtp_ts: int, deviations) -> float:
    """RFC 3550 jitter (RTP ticks) after the stream accepts, in order, a packet at
    (``first_arrival_ns``, ``first_rtp_ts``) and then packets with these ``deviations``:
    the same float operations as ``CallMedia._accept`` packet by packet."""
    dts = (first_rtp_ts - st.prev_ts) & 0xFFFFFFFF
    if dts >= 0x80000000:
        dts -= 0x100000000
    jitter = st.jitter_ticks
    dev = (first_arrival_ns - st.prev_arrival_ns) * st.clock_hz / 1e9 - dts
    jitter += ((dev if dev >= 0 else -dev) - jitter) / 16.0
    return jitter_steps(jitter, deviations)


def jitter_steps(jitter_ticks: float, deviations) -> float:
    """RFC 3550 6.4.1: J += (|D| - J) / 16 for each deviation in turn (a plain-float loop:
    the recurrence is sequential, and numpy scalars would cost more per step)."""
    for d in deviations:
        jitter_ticks += (d - jitter_ticks) / 16.0
    return jitter_ticks


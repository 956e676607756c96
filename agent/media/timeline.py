"""Where each RTP packet of a stream belongs on the call's wall-clock timeline.

Owns the mapping RTP timestamp → position (ns, same time base as packet arrival times):
a stream is anchored on its first packet's arrival; later packets sit at
``anchor + (rtp_ts - anchor_ts) / clock``, so network jitter never moves audio. The
anchor is moved back onto arrival time when the two disagree for real:

* immediately, when the RTP timestamp runs backwards (a PBX re-anchoring its clock) or
  puts the packet more than ``jump_ms`` *ahead* of its own arrival (impossible for a
  sender: a packet cannot arrive before it was sampled), and
* after a sustained disagreement of more than ``reanchor_ms`` (sender clock drift, or a
  sender that stopped its clock during a pause): ``confirm_packets`` packets over at least
  ``confirm_ms`` of arrival time whose offsets agree within ``tolerance_ms``; the new
  anchor uses the smallest offset seen (arrival = send time + delay ≥ send time).

A burst of late packets after a network stall does not re-anchor: their offsets shrink
packet by packet and never agree. Does not own decoding, gap filling or files
(``render.py``). Also holds the per-call record types the engine hands to the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CodecInfo", "StreamSpec", "StreamTimeline", "STATIC_PAYLOAD_TYPES"]


@dataclass(frozen=True, slots=True)
class CodecInfo:
    encoding: str               # rtpmap name, e.g. "PCMU", "telephone-event", "CN"
    clock_rate_hz: int          # RTP clock rate from the rtpmap
    channels: int = 1
    fmtp: str | None = None


@dataclass(slots=True)
class StreamSpec:
    index: int                  # stream_index in the media log (StreamInfo.index)
    side: int              # 0 = caller→callee, 1 = callee→caller
    codecs: dict[int, CodecInfo] = field(default_factory=dict)  # pt -> codec for this direction


# RFC 3551 static payload types: used when the SDP did not map a static PT we received.
STATIC_PAYLOAD_TYPES: dict[int, CodecInfo] = {
    0: CodecInfo("PCMU", 8000),
    3: CodecInfo("GSM", 8000),
    4: CodecInfo("G723", 8000),
    5: CodecInfo("DVI4", 8000),
    6: CodecInfo("DVI4", 16000),
    7: CodecInfo("LPC", 8000),
    8: CodecInfo("PCMA", 8000),
    9: CodecInfo("G722", 8000),
    10: CodecInfo("L16", 44100, 2),
    11: CodecInfo("L16", 44100),
    13: CodecInfo("CN", 8000),
    15: CodecInfo("G728", 8000),
    18: CodecInfo("G729", 8000),
}


class StreamTimeline:
    """Places one stream's packets (in sequence order) on the arrival-time axis."""

    __slots__ = ("clock_hz", "reanchor_ns", "jump_ns", "tolerance_ns", "confirm_packets",
                 "confirm_ns", "anchor_ts", "anchor_ns", "last_ts", "last_ext", "reanchors",
                 "_cand_n", "_cand_first", "_cand_min", "_cand_start")

    def __init__(self, clock_hz: int, *, reanchor_ms: int = 60, jump_ms: int = 1000,
                 tolerance_ms: int = 40, confirm_packets: int = 5, confirm_ms: int = 80) -> None:
        self.clock_hz = clock_hz if clock_hz > 0 else 8000
        self.reanchor_ns = reanchor_ms * 1_000_000
        self.jump_ns = jump_ms * 1_000_000
        self.tolerance_ns = tolerance_ms * 1_000_000
        self.confirm_packets = confirm_packets
        self.confirm_ns = confirm_ms * 1_000_000
        self.anchor_ts: int | None = None   # extended RTP timestamp of the anchor
        self.anchor_ns = 0
        self.last_ts = 0
        self.last_ext = 0
        self.reanchors = 0
        self._cand_n = 0
        self._cand_first = 0
        self._cand_min = 0
        self._cand_start = 0

    def place(self, rtp_ts: int, arrival_ns: int) -> int:
        """Position (ns, arrival time base) of a packet's first sample."""
        if self.anchor_ts is None:
            self.anchor_ts = self.last_ext = rtp_ts
            self.last_ts = rtp_ts
            self.anchor_ns = arrival_ns
            return arrival_ns
        d = (rtp_ts - self.last_ts) & 0xFFFFFFFF
        if d >= 0x80000000:
            d -= 0x100000000
        ext = self.last_ext + d
        self.last_ts = rtp_ts
        self.last_ext = ext
        pos = self.anchor_ns + (ext - self.anchor_ts) * 1_000_000_000 // self.clock_hz
        drift = arrival_ns - pos
        backwards_ns = -d * 1_000_000_000 // self.clock_hz
        if backwards_ns > self.reanchor_ns or drift < -self.jump_ns:
            return self._reanchor(ext, arrival_ns)
        if drift > self.reanchor_ns or drift < -self.reanchor_ns:
            if self._cand_n and abs(drift - self._cand_first) <= self.tolerance_ns:
                self._cand_n += 1
                if drift < self._cand_min:
                    self._cand_min = drift
            else:
                self._cand_n = 1
                self._cand_first = self._cand_min = drift
                self._cand_start = arrival_ns
            if (self._cand_n >= self.confirm_packets
                    and arrival_ns - self._cand_start >= self.confirm_ns):
                return self._reanchor(ext, pos + self._cand_min)
        else:
            self._cand_n = 0
        return pos

    # Largest |extended ts - anchor| whose ns product stays inside int64 (else: scalar path).
    _MAX_VECTOR_TICKS = (2 ** 62) // 1_000_000_000

    def place_many(self, rtp_ts: np.ndarray, arrival_ns: np.ndarray) -> np.ndarray:
        """``place`` for many packets of the stream at once (int64 arrays, in order).

        Same results as calling ``place`` per packet: stretches where the clock stays
        within the re-anchor tolerance (almost every packet) are computed with array
        arithmetic; a packet that starts a jump, a backwards step or a drift candidate is
        placed by ``place`` itself, then array placement resumes after it. The stretch
        tried at once starts small after such a packet and grows while it holds, so a
        stream that is out of tolerance for a long time costs no more than ``place``."""
        ts = np.asarray(rtp_ts, dtype=np.int64)
        arr = np.asarray(arrival_ns, dtype=np.int64)
        n = ts.size
        out = np.empty(n, dtype=np.int64)
        i = 0
        if n and self.anchor_ts is None:
            out[0] = self.place(int(ts[0]), int(arr[0]))
            i = 1
        window = 64
        while i < n:
            j = min(n, i + window)
            k = self._place_quiet(ts[i:j], arr[i:j], out[i:j])
            i += k
            if i >= n:
                break
            if i == j:                  # the whole window held: try a longer one
                window = min(window * 4, 1 << 16)
                continue
            out[i] = self.place(int(ts[i]), int(arr[i]))
            i += 1
            window = 64
        return out

    def _place_quiet(self, ts: np.ndarray, arr: np.ndarray, out: np.ndarray) -> int:
        """Place the leading packets that need no re-anchor decision; returns their count.

        For those packets ``place`` only extends the timestamp and resets the drift
        candidate, so they are computed together; ``out`` receives their positions."""
        prev = np.empty_like(ts)
        prev[0] = self.last_ts
        prev[1:] = ts[:-1]
        d = (ts - prev) & 0xFFFFFFFF
        d[d >= 0x80000000] -= 0x100000000
        ext = self.last_ext + np.cumsum(d)
        rel = ext - self.anchor_ts
        if np.abs(rel).max() > self._MAX_VECTOR_TICKS:
            return 0                    # ns products would overflow int64: place one by one
        pos = self.anchor_ns + rel * 1_000_000_000 // self.clock_hz
        drift = arr - pos
        backwards_ns = -d * 1_000_000_000 // self.clock_hz
        event = ((backwards_ns > self.reanchor_ns) | (drift < -self.jump_ns)
                 | (drift > self.reanchor_ns) | (drift < -self.reanchor_ns))
        hit = np.flatnonzero(event)
        k = int(hit[0]) if hit.size else ts.size
        if k:
            out[:k] = pos[:k]
            self.last_ts = int(ts[k - 1])
            self.last_ext = int(ext[k - 1])
            self._cand_n = 0
        return k

    def _reanchor(self, ext: int, pos_ns: int) -> int:
        self.anchor_ts = ext
        self.anchor_ns = pos_ns
        self.reanchors += 1
        self._cand_n = 0
        return pos_ns

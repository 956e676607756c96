"""Voice quality of RTP streams: loss, jitter, delta and gap figures, and an E-model MOS.

Pure functions over whole arrays (one stream, arrival order): no I/O, no per-packet objects.
The sequencer hands them the arrays it already holds (``QualityCollector``), so quality costs
no second pass over the packets.

Jitter, delta and "max delta" follow Wireshark's RTP stream analysis (``tshark -z
rtp,streams``, ui/tap-rtp-analysis.c) operation by operation, so that the oracle agrees:

* a packet is *in time sequence* when its RTP timestamp is less than 2**31 ticks after the
  stream's first (a reordered packet still is); only those move anything below;
* each such packet with a clock moves the RFC 3550 estimate J = (15 J + D) / 16, where D is
  |arrival - expected arrival|; expected is the previous in-time packet's arrival plus the
  media time elapsed since the previous in-time packet *with a clock* (an RFC 4733 event's
  frozen timestamp does not move that reference, its arrival does);
* the clock is converted with an integer number of ticks per ms (``clock_rate // 1000``,
  Wireshark's unsigned division); packets without a clock (telephone-event) leave J alone;
* max delta, max jitter and mean jitter count only "regular" packets: not the first, no
  marker bit, not comfort noise nor right after it. The mean is Wireshark's running mean of
  J, whose weight is the count of *all* packets before it.

The MOS is the ITU-T G.107 E-model reduced to its defaults (R = 93.2 - Id - Ie,eff), with
each codec's equipment impairment Ie and packet-loss robustness Bpl (G.113 Appendix I where it
lists the codec), and the loss a listener would hear: network loss plus the packets a jitter
buffer would have discarded as too late. Two buffers are simulated, as VoIPmonitor does: a
fixed 50 ms one and an adaptive one that grows up to 500 ms. A passive tap cannot see one-way
delay, so the delay is assumed (``ASSUMED_PATH_DELAY_MS`` plus the buffer's depth) and stated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from agent.media.sequencing import extend_seq

__all__ = ["StreamQuality", "MosEstimate", "CodecImpairment", "stream_quality", "jitter_buffer_loss",
           "codec_impairment", "r_factor", "mos_from_r", "mos_estimate", "side_quality",
           "QualityCollector", "FIXED_BUFFER_MS", "ADAPTIVE_MAX_BUFFER_MS", "ASSUMED_PATH_DELAY_MS",
           "HEADLINE_BUFFER", "HISTOGRAMS", "observe_call", "summary"]

_CN_PTS = (13, 19)                 # comfort noise, and its pre-RFC 3389 number (Wireshark's PT_CN_OLD)
FIXED_BUFFER_MS = 50.0
ADAPTIVE_MAX_BUFFER_MS = 500.0
# One-way mouth-to-ear delay a tap cannot measure: assume a short managed path (LAN / metro
# trunk) and add the simulated buffer's depth on top.
ASSUMED_PATH_DELAY_MS = 20.0
HEADLINE_BUFFER = "adaptive_500ms"  # the figure inspect, metrics and mos_below use


@dataclass(slots=True)
class StreamQuality:
    expected: int = 0              # sequence slots from the lowest to the highest number seen
    received: int = 0              # packets seen, copies included
    lost: int = 0                  # slots never seen (expected - distinct numbers seen)
    duplicated: int = 0            # copies of a number already seen
    reordered: int = 0             # first copies that arrived after a higher number
    sequence_errors: int = 0       # packets whose number is not the successor of the highest before
    codec_changes: int = 0         # payload type changes (comfort noise and events not counted)
    jitter_mean_ms: float = 0.0
    jitter_max_ms: float = 0.0
    max_delta_ms: float = 0.0      # longest wait between consecutive regular packets
    longest_gap_ms: float = 0.0    # longest wait between any two consecutive packets (silence included)
    late_fixed: int = 0            # discarded by the fixed 50 ms buffer
    late_adaptive: int = 0         # discarded by the adaptive buffer
    adaptive_depth_ms: float = 0.0  # the adaptive buffer's depth at the end

    def as_record(self) -> dict:
        out = asdict(self)
        for key in ("jitter_mean_ms", "jitter_max_ms", "max_delta_ms", "longest_gap_ms", "adaptive_depth_ms"):
            out[key] = round(out[key], 3)
        return out


def _extend_ts(rtp_ts: np.ndarray) -> np.ndarray:
    """RTP timestamps unwrapped against the packet before (as the RTP dissector extends them)."""
    ts = np.asarray(rtp_ts, dtype=np.int64)
    if not ts.size:
        return ts
    d = (ts[1:] - ts[:-1]) & 0xFFFFFFFF
    d[d >= 0x80000000] -= 0x100000000
    out = np.empty_like(ts)
    out[0] = ts[0]
    out[1:] = ts[0] + np.cumsum(d)
    return out


def stream_quality(seq: np.ndarray, rtp_ts: np.ndarray, arrival_ns: np.ndarray, pt: np.ndarray,
                   marker: np.ndarray, clock_rate_hz: np.ndarray) -> StreamQuality:
    """Quality of ONE stream (one SSRC from one source) from its packets in arrival order:
    16-bit sequence numbers, 32-bit RTP timestamps, capture times (ns), payload types, marker
    bits and each packet's clock rate (Hz; 0 for packets without an audio clock, e.g.
    telephone-event). See the module docstring for the exact jitter arithmetic."""
    n = int(np.asarray(seq).size)
    q = StreamQuality(received=n)
    if not n:
        return q
    ext = extend_seq(seq)
    ts = _extend_ts(rtp_ts)
    arrival_ns = np.asarray(arrival_ns, dtype=np.int64)
    pt = np.asarray(pt, dtype=np.int64)
    marker = np.asarray(marker, dtype=bool)
    clock = np.asarray(clock_rate_hz, dtype=np.int64)

    # --- sequence figures
    highest_before = np.empty(n, dtype=np.int64)
    highest_before[0] = ext[0] - 1
    np.maximum.accumulate(ext[:-1], out=highest_before[1:])
    in_order = ext == highest_before + 1
    if in_order.all():
        # Every packet the successor of the highest before it (most streams): no copies,
        # no reordering, nothing to sort.
        q.expected = n
        first_copy = np.ones(n, dtype=bool)
    else:
        distinct, first_at = np.unique(ext, return_index=True)
        q.expected = int(distinct[-1] - distinct[0] + 1)
        q.lost = q.expected - int(distinct.size)
        q.duplicated = n - int(distinct.size)
        first_copy = np.zeros(n, dtype=bool)
        first_copy[first_at] = True
        q.reordered = int(np.count_nonzero(first_copy & (ext < highest_before)))
        q.sequence_errors = int(n - np.count_nonzero(in_order[1:]) - 1)
    comfort_noise = (pt == _CN_PTS[0]) | (pt == _CN_PTS[1])
    audio = ~comfort_noise & (clock > 0)
    audio_pt = pt[audio]
    q.codec_changes = int(np.count_nonzero(audio_pt[1:] != audio_pt[:-1]))

    # --- timing, as Wireshark 4.0 (see the module docstring)
    t_ms = (arrival_ns - arrival_ns[0]) / 1e6
    if n > 1:
        q.longest_gap_ms = float(np.max(np.diff(t_ms)))
    since_first = (np.asarray(rtp_ts, dtype=np.int64) - int(rtp_ts[0])) & 0xFFFFFFFF
    in_time = since_first < 0x80000000
    ticks_per_ms = clock // 1000          # Wireshark divides the clock rate as an integer
    clocked = ticks_per_ms > 0
    nominal_ms, ref, ref_clocked = _references(since_first, ticks_per_ms, in_time, clocked)
    delta_ms = t_ms - t_ms[ref]
    diff_ms = np.abs(t_ms - (t_ms[ref] + nominal_ms - nominal_ms[ref_clocked]))
    regular = in_time & ~marker & ~comfort_noise
    regular[1:] &= ~comfort_noise[:-1]          # nor right after comfort noise
    regular[0] = False
    if regular.any():
        q.max_delta_ms = max(0.0, float(delta_ms[regular].max()))
    steps = in_time & clocked
    steps[0] = False
    at = np.flatnonzero(steps)
    jitter = rfc3550_jitter(diff_ms[at])           # J after each step
    reg = regular[at]
    if reg.any():
        q.jitter_max_ms = float(jitter[reg].max())
        q.jitter_mean_ms = _running_mean(jitter[reg], at[reg])

    # --- jitter buffers: first copies of audio packets, by their transit time
    keep = first_copy & audio
    if keep.any():
        q.late_fixed, q.late_adaptive, q.adaptive_depth_ms = jitter_buffer_loss(
            t_ms[keep] - ts[keep] / (clock[keep] / 1000.0))
    return q


# J = (15 J + D) / 16 unrolled over blocks: inside a block J_t = a^t (a J_before + sum over
# u <= t of a^-u D_u / 16), a = 15/16. A block is short enough that a^-u stays far from
# overflow and the newest terms (the largest) dominate each sum, so the result is the
# sequential one to ~1e-14 relative: no per-packet Python step.
_JITTER_BLOCK = 512
_DECAY = (15 / 16) ** np.arange(_JITTER_BLOCK)
_GROW = (16 / 15) ** np.arange(_JITTER_BLOCK)


def rfc3550_jitter(deviation_ms: np.ndarray) -> np.ndarray:
    """The RFC 3550 estimate after each step of J = (15 J + D) / 16, from J = 0, for the
    deviations D in order (ms)."""
    d = np.asarray(deviation_ms, dtype=np.float64)
    out = np.empty(d.size)
    before = 0.0
    for start in range(0, d.size, _JITTER_BLOCK):
        block = d[start:start + _JITTER_BLOCK]
        n = block.size
        out[start:start + n] = _DECAY[:n] * (np.cumsum(block * _GROW[:n]) / 16 + before * (15 / 16))
        before = float(out[start + n - 1])
    return out


def _running_mean(jitter: np.ndarray, index: np.ndarray) -> float:
    """Wireshark's mean jitter: m = (m (i - 1) + J) / i at each regular packet, i its index in
    arrival order, from m = 0. Unrolled: the final m is the sum of J_p / i_p times the
    product of the later packets' (i - 1) / i."""
    i = index.astype(np.float64)
    weight = (i - 1) / i
    later = np.append(np.cumprod(weight[::-1])[::-1][1:], 1.0)
    return float(np.sum(jitter / i * later))


def _references(since_first: np.ndarray, ticks_per_ms: np.ndarray, in_time: np.ndarray,
                clocked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each packet's media time since the first (ms, 0 without a clock), its arrival reference
    (the last in-time packet before it) and its media-time reference (... that had a clock)."""
    if in_time.all() and clocked.all():
        # Most streams: every reference is the packet before, and no clock needs masking;
        # the general path's masked division and two scans cost as much again (3,000 packets:
        # stream_quality 470 -> 230 us).
        ref = np.arange(-1, in_time.size - 1)
        ref[0] = 0
        return since_first / ticks_per_ms, ref, ref
    nominal_ms = np.where(clocked, since_first / np.where(clocked, ticks_per_ms, 1), 0.0)
    return nominal_ms, _last_before(in_time), _last_before(in_time & clocked)


def _last_before(mask: np.ndarray) -> np.ndarray:
    """For each packet, the index of the last packet strictly before it with ``mask`` set
    (the first packet counts as set: it is every reference's start)."""
    at = np.where(mask, np.arange(mask.size), 0)
    at[0] = 0
    last = np.maximum.accumulate(at)
    return np.concatenate(([0], last[:-1]))


def jitter_buffer_loss(transit_ms: np.ndarray) -> tuple[int, int, float]:
    """Packets a playout buffer discards as too late, given each packet's transit time (arrival
    minus media time, ms, arrival order): (late with a fixed 50 ms buffer, late with the
    adaptive one, the adaptive depth at the end in ms).

    Both buffers are anchored on the fastest packet of the stream (the least transit), so a
    packet is late when it trails that one by more than the depth. The adaptive buffer starts
    at 50 ms and grows, never shrinks, to the largest lateness seen *before* each packet (the
    packet that shows a new delay is lost, the next ones are not), capped at 500 ms."""
    rel = transit_ms - transit_ms.min()
    late_fixed = int(np.count_nonzero(rel > FIXED_BUFFER_MS))
    seen_before = np.concatenate(([0.0], np.maximum.accumulate(rel)[:-1]))
    depth = np.clip(seen_before, FIXED_BUFFER_MS, ADAPTIVE_MAX_BUFFER_MS)
    late_adaptive = int(np.count_nonzero(rel > depth))
    final_depth = float(min(ADAPTIVE_MAX_BUFFER_MS, max(FIXED_BUFFER_MS, float(rel.max()))))
    return late_fixed, late_adaptive, final_depth


# ------------------------------------------------------------------ E-model (ITU-T G.107)

@dataclass(frozen=True, slots=True)
class CodecImpairment:
    ie: float        # equipment impairment factor
    bpl: float       # packet-loss robustness factor
    source: str      # where the figures come from


# G.113 Appendix I lists G.711 (with PLC), G.729A + VAD, G.723.1, GSM-EFR...; codecs it does
# not list carry the commonly used figures of the same family, marked "approx." (VoIPmonitor
# and most monitors do the same; a wideband codec is scored on the narrowband scale).
_CODECS: dict[str, CodecImpairment] = {
    "pcmu": CodecImpairment(0.0, 25.1, "G.113 I: G.711 with PLC"),
    "pcma": CodecImpairment(0.0, 25.1, "G.113 I: G.711 with PLC"),
    "g722": CodecImpairment(0.0, 25.1, "approx.: as G.711 (narrowband scale)"),
    "g729": CodecImpairment(11.0, 19.0, "G.113 I: G.729A + VAD"),
    "g729a": CodecImpairment(11.0, 19.0, "G.113 I: G.729A + VAD"),
    "g723": CodecImpairment(15.0, 16.1, "G.113 I: G.723.1 6.3 kbit/s"),
    "g726-32": CodecImpairment(7.0, 20.0, "approx.: G.113 I Ie, Bpl assumed"),
    "gsm": CodecImpairment(20.0, 10.0, "approx.: GSM-FR Ie (G.113 I), Bpl assumed"),
    "gsm-efr": CodecImpairment(5.0, 10.0, "G.113 I: GSM-EFR"),
    "ilbc": CodecImpairment(10.0, 32.0, "approx."),
    "opus": CodecImpairment(0.0, 30.0, "approx.: narrowband scale"),
    "speex": CodecImpairment(10.0, 20.0, "approx."),
}
_UNKNOWN = CodecImpairment(0.0, 25.1, "unknown codec: scored as G.711")


def codec_impairment(encoding: str) -> CodecImpairment:
    """Ie and Bpl for an SDP encoding name (case-insensitive); G.711's for unknown names."""
    return _CODECS.get(encoding.lower(), _UNKNOWN)


def delay_impairment(delay_ms: float) -> float:
    """Id at the E-model's default settings, as the usual closed form (Cole & Rosenbluth):
    0.024 d, plus 0.11 (d - 177.3) beyond 177.3 ms."""
    return 0.024 * delay_ms + (0.11 * (delay_ms - 177.3) if delay_ms > 177.3 else 0.0)


def r_factor(loss_pct: float, codec: CodecImpairment, delay_ms: float, burst_r: float = 1.0) -> float:
    """R = 93.2 - Id - Ie,eff with Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)
    (G.107 7.1: 93.2 is Ro - Is with every other parameter at its default)."""
    ie_eff = codec.ie + (95.0 - codec.ie) * loss_pct / (loss_pct / burst_r + codec.bpl)
    return 93.2 - delay_impairment(delay_ms) - ie_eff


def mos_from_r(r: float) -> float:
    """G.107 Annex B: MOS_CQE of R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


@dataclass(slots=True)
class MosEstimate:
    buffer: str                 # "fixed_50ms" | "adaptive_500ms"
    effective_loss_pct: float   # network loss plus the packets the buffer discarded
    assumed_delay_ms: float     # one-way, assumed (a tap cannot see it): path + buffer depth
    r: float
    mos: float

    def as_record(self) -> dict:
        return {"buffer": self.buffer, "effective_loss_pct": round(self.effective_loss_pct, 3),
                "assumed_delay_ms": round(self.assumed_delay_ms, 1), "r": round(self.r, 1),
                "mos": round(self.mos, 2)}


def mos_estimate(q: StreamQuality, encoding: str) -> dict[str, MosEstimate]:
    """Both buffers' MOS for a stream, keyed by buffer name."""
    codec = codec_impairment(encoding)
    out = {}
    for name, late, depth in (("fixed_50ms", q.late_fixed, FIXED_BUFFER_MS),
                              ("adaptive_500ms", q.late_adaptive, q.adaptive_depth_ms or FIXED_BUFFER_MS)):
        loss = 100.0 * (q.lost + late) / q.expected if q.expected else 0.0
        delay = ASSUMED_PATH_DELAY_MS + depth
        r = r_factor(loss, codec, delay)
        out[name] = MosEstimate(name, loss, delay, r, mos_from_r(r))
    return out


def side_quality(streams: list[tuple[StreamQuality, str]]) -> dict | None:
    """One direction's figures from its streams (quality, encoding): the worst stream's MOS
    per buffer (a listener hears the worst stretch), loss over all of them, SSRC changes."""
    scored = [(q, enc) for q, enc in streams if q.expected]
    if not scored:
        return None
    expected = sum(q.expected for q, _ in scored)
    lost = sum(q.lost for q, _ in scored)
    estimates = [mos_estimate(q, enc) for q, enc in scored]
    worst = {name: min((e[name] for e in estimates), key=lambda m: m.mos) for name in estimates[0]}
    return {
        "mos": round(worst[HEADLINE_BUFFER].mos, 2), "buffer": HEADLINE_BUFFER,
        "loss_pct": round(100.0 * lost / expected, 3),
        "jitter_max_ms": round(max(q.jitter_max_ms for q, _ in scored), 3),
        "ssrc_changes": len(streams) - 1,
        "estimates": [m.as_record() for m in worst.values()],
    }


# ------------------------------------------------------------------ the sequencer's arrays

class QualityCollector:
    """Gathers the header columns the sequencer already decoded for a call (never payloads),
    as arrays block by block or packet by packet, and computes each stream's quality at the
    end. A stream is one SSRC in one direction from one source: a relay's copy of it (same
    SSRC from another address) is not mixed in (the first source seen is the stream's).

    Memory is what grows with call length here, so each column is kept in the narrowest
    dtype its header field fits (``COLUMNS``: 24 bytes a packet, not 7 int64s), and the
    small blocks a batch gives each call (a few packets) are merged into chunks of at least
    ``CHUNK_PACKETS`` so per-array overhead does not dominate either."""

    # direction, source id, SSRC, sequence number, RTP timestamp, arrival (ns), marker|PT byte
    COLUMNS = (np.uint8, np.uint32, np.uint32, np.uint16, np.uint32, np.int64, np.uint8)
    CHUNK_PACKETS = 4096

    __slots__ = ("_chunks", "_blocks", "_block_rows", "_one", "_src_ids")

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, ...]] = []    # merged, CHUNK_PACKETS or more each
        self._blocks: list[tuple[np.ndarray, ...]] = []    # recent blocks, not merged yet
        self._block_rows = 0
        self._one: list[tuple[int, int, int, int, int, int, int]] = []
        self._src_ids: dict[str, int] = {}

    def src_id(self, label: str) -> int:
        """A small integer for a source "ip:port"."""
        return self._src_ids.setdefault(label, len(self._src_ids))

    def add(self, side: np.ndarray, src_id: np.ndarray, ssrc: np.ndarray, seq: np.ndarray,
            rtp_ts: np.ndarray, arrival_ns: np.ndarray, b1: np.ndarray) -> None:
        """Packets as arrays (arrival order); ``b1``: the header's marker|payload-type byte."""
        self._flush_one()
        self._add_block(tuple(np.asarray(c).astype(t, copy=False) for c, t in
                              zip((side, src_id, ssrc, seq, rtp_ts, arrival_ns, b1), self.COLUMNS)))

    def add_run(self, run, positions: np.ndarray | None = None) -> None:
        """The packets of an ``RtpRun`` (all, or those at ``positions``, arrival order)."""
        pos = np.arange(len(run)) if positions is None else positions
        keys, inverse = np.unique(run.src_key[pos], return_inverse=True)
        ids = np.array([self.src_id(run.label(int(k))) for k in keys.tolist()], dtype=np.int64)
        self.add(run.side[pos], ids[inverse.reshape(-1)], run.ssrc[pos], run.seq[pos], run.rtp_ts[pos],
                 run.arrival_ns[pos], run.b1[pos])

    def add_groups(self, groups, g0: int, g1: int, positions: np.ndarray) -> None:
        """The packets of ``RunGroups`` groups ``g0:g1`` at ``positions`` (their run positions in
        arrival order), as ``add_run``. When every group has a single source (the common case)
        the source ids come from the groups' first keys, in the order ``add_run`` gives them:
        a sort of every packet's key (``np.unique``) costs ~40 us a call of a batch."""
        if not all(groups.one_src[g0:g1]):
            self.add_run(groups.run, positions)
            return
        run = groups.run
        keys = groups.src_key[g0:g1]
        id_of = {k: self.src_id(run.label(k)) for k in sorted(set(keys))}
        counts = [end - start for start, end in zip(groups.start[g0:g1], groups.end[g0:g1])]
        ids = np.repeat(np.array([id_of[k] for k in keys], dtype=np.int64), counts)
        self.add(run.side[positions], ids[positions - groups.start[g0]], run.ssrc[positions],
                 run.seq[positions], run.rtp_ts[positions], run.arrival_ns[positions], run.b1[positions])

    def add_packet(self, side: int, src: str, ssrc: int, seq: int, rtp_ts: int, arrival_ns: int,
                   b1: int) -> None:
        self._one.append((side, self.src_id(src), ssrc, seq, rtp_ts, arrival_ns, b1))
        if len(self._one) >= self.CHUNK_PACKETS:
            self._flush_one()

    def _flush_one(self) -> None:
        """Single packets become a block, so blocks stay in the order packets were taken."""
        if self._one:
            self._add_block(tuple(np.array(c, dtype=t) for c, t in zip(zip(*self._one), self.COLUMNS)))
            self._one = []

    def _add_block(self, block: tuple[np.ndarray, ...]) -> None:
        self._blocks.append(block)
        self._block_rows += len(block[0])
        if self._block_rows >= self.CHUNK_PACKETS:
            self._merge_blocks()

    def _merge_blocks(self) -> None:
        if len(self._blocks) == 1:
            self._chunks.append(self._blocks[0])
        elif self._blocks:
            self._chunks.append(tuple(np.concatenate(c) for c in zip(*self._blocks)))
        self._blocks, self._block_rows = [], 0

    def nbytes(self) -> int:
        """Bytes the kept columns take (packets taken one by one and not flushed yet aside)."""
        return sum(c.nbytes for block in self._chunks + self._blocks for c in block)

    def streams(self, clock_rate_for_pt: Callable[[int, int], int]) -> dict[tuple[int, int], StreamQuality]:
        """{(direction, ssrc): quality}; ``clock_rate_for_pt(direction, pt)`` is a packet's
        clock in Hz (0 when it has none, e.g. telephone-event)."""
        self._flush_one()
        self._merge_blocks()
        if not self._chunks:
            return {}
        side, src, ssrc, seq, ts, arrival, b1 = (np.concatenate(c) for c in zip(*self._chunks))
        pt = b1 & 0x7F
        key = side.astype(np.int64) << 33 | ssrc
        out = {}
        for k in _distinct(key):
            idx = np.flatnonzero(key == k)
            idx = idx[src[idx] == src[idx[0]]]
            d = int(side[idx[0]])
            lut = np.zeros(128, dtype=np.int64)          # pt -> clock rate (Hz)
            for p in np.flatnonzero(np.bincount(pt[idx], minlength=128)).tolist():
                lut[p] = clock_rate_for_pt(d, p)
            out[(d, int(ssrc[idx[0]]))] = stream_quality(seq[idx], ts[idx], arrival[idx], pt[idx],
                                                          b1[idx] > 0x7F, lut[pt[idx]])
        return out


_PEEL_MAX = 8                     # distinct values peeled one at a time before np.unique


def _distinct(values: np.ndarray) -> list[int]:
    """The distinct values, ascending. A call usually has a few streams, so peeling one value
    at a time (a comparison and a selection each) is cheaper than ``np.unique``'s hash or sort
    of every packet's key; past _PEEL_MAX values (an SSRC per packet, say) np.unique takes
    the rest, so the cost stays bounded."""
    found = []
    while values.size and len(found) < _PEEL_MAX:
        found.append(int(values[0]))
        values = values[values != values[0]]
    if values.size:
        found += np.unique(values).tolist()
    return sorted(found)


# ------------------------------------------------------------------ record marking and metrics

# Histogram bounds (Prometheus "le"), observed once per call direction that has audio.
MOS_BOUNDS = (1.0, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4)
LOSS_PCT_BOUNDS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
JITTER_MS_BOUNDS = (1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0)
HISTOGRAMS = (("mos", "mos", MOS_BOUNDS), ("loss", "loss_pct", LOSS_PCT_BOUNDS),
              ("jitter", "jitter_max_ms", JITTER_MS_BOUNDS))


def observe_call(record: dict, counters, mos_below: float) -> bool:
    """Count a finished call's quality into ``counters`` (per direction: one observation per
    histogram, as ``quality.<name>.b<bucket>`` and ``quality.<name>.sum_milli``) and, when a
    direction's MOS is below ``mos_below`` (0: off), mark the record (``quality.mos_below``)
    and count it. Returns whether the call was marked."""
    sides = [side for side in (record.get("quality") or {}).values() if isinstance(side, dict)]
    for side in sides:
        for name, key, bounds in HISTOGRAMS:
            value = float(side.get(key, 0.0))
            bucket = next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))
            counters[f"quality.{name}.b{bucket}"] += 1
            counters[f"quality.{name}.sum_milli"] += round(value * 1000)
        counters["quality.observations"] += 1
    below = mos_below > 0 and any(side.get("mos", 5.0) < mos_below for side in sides)
    if below:
        record["quality"]["mos_below"] = mos_below
        counters["quality.mos_below"] += 1
    return below


def summary(quality: dict | None) -> str:
    """A call's quality in a few words: "MOS 4.3/4.1, loss 0.2 %" (caller's direction first,
    the worse direction's loss), "-" without audio, "!" appended when marked below threshold."""
    if not quality:
        return "-"
    sides = [quality.get(name) for name in ("caller", "callee")]
    mos = "/".join(f"{side['mos']:.1f}" if side else "-" for side in sides)
    loss = max(side["loss_pct"] for side in sides if side)
    return f"MOS {mos}, loss {loss:.1f} %" + (" !" if quality.get("mos_below") else "")

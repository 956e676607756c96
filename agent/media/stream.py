"""Media of one call: the capture-side raw log, and the sequencer (streams, reorder
windows, stats, RFC 4733 events, the ordered media log) that runs on it later.

Two stages, so the capture loop does as little as possible per packet:

1. ``MediaCapture`` (capture process, per packet): checks the packet is RTP and appends it,
   whole, with its arrival time and direction, to the call's raw log. Nothing else.
2. ``sequence_capture`` (when the call has ended, in a worker process for recordings, inline
   for ``inspect``): replays the raw log through ``CallMedia`` with the call's final codec map
   (``MediaPlan``), which writes the ordered media log that ``render.py`` reads.

``CallMedia`` owns per-stream sequence tracking (16-bit wrap, duplicates, bounded reordering, late
packets, loss, restarts), the RFC 3550 interarrival-jitter estimate and handing released
packets, in extended-sequence order per stream, to the call's ``MediaLogWriter``.
RFC 4733 telephone-events are recognised here as packets are accepted (the payload
types come from ``codecs_for_direction``: the receiver's rtpmap first) and handed to one
``dtmf.TelephoneEventTracker`` per stream; ``dtmf_events`` lists the key presses. With
``redact_dtmf`` the event payloads are dropped before the log (the record keeps its
sequence slot with an empty payload), so no digit ever reaches the disk.
Does not own routing datagrams to calls (the engine knows the call and the direction),
decoding or timing of audio (``render.py`` places packets by RTP timestamp later).

Per packet this is plain Python over ``struct``: one ``parse_rtp``, one dict lookup, a few
integer comparisons and an append to a bytearray; no logging and no per-packet objects on
the in-order path. A whole call's log is usually taken at once instead (``take_whole``:
``sequencing.py`` decides the reorder window over each stream's arrays).
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.media.codecs import is_telephone_event
from agent.media.dtmf import TelephoneEventTracker
from agent.media.medialog import MediaBlock, MediaLogMemory, MediaLogWriter, NullMediaLog, read_media_log_blocks
from agent.media.quality import QualityCollector
from agent.media.runs import RtpRun, RunGroups
from agent.media.sequencing import StreamSequence, extend_seq, jumps_within, sequence_stream
from agent.media.rtp import is_rtcp, is_zrtp, looks_like_rtp, parse_rtp

__all__ = ["StreamStats", "StreamInfo", "CallMedia", "MediaCapture", "MediaPlan", "sequence_capture",
           "MAX_DROPOUT", "MAX_MISORDER"]

# RFC 3550 A.1: a forward jump beyond MAX_DROPOUT or a backward one beyond MAX_MISORDER is
# not loss or reordering but a sequence restart (confirmed by the next packet following it).
MAX_DROPOUT = 3000
MAX_MISORDER = 100
_CN_PT = 13
_SEQ_TS_SSRC = struct.Struct("!HII").unpack_from


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
    direction: int                 # 0 = caller→callee, 1 = callee→caller
    ssrc: int
    stats: StreamStats


# sequence_capture reads a raw log up to this size whole, to sequence the call at once
# (~13 minutes of a two-way G.711 call; the worker then holds about four times this).
WHOLE_CALL_BYTES = 16 << 20
# feed_run looks for in-order stretches in windows that grow while they hold.
_BULK_MIN = 64
_BULK_MAX = 16_384


def _deviations(clock_hz: int, arrival_ns: np.ndarray, rtp_ts: np.ndarray) -> list[float]:
    """RFC 3550 |D| of each packet after the first against its predecessor, in RTP ticks,
    with the float operations of ``CallMedia._accept``."""
    d_ts = (rtp_ts[1:] - rtp_ts[:-1]) & 0xFFFFFFFF
    d_ts[d_ts >= 0x80000000] -= 0x100000000
    return np.abs((arrival_ns[1:] - arrival_ns[:-1]) * clock_hz / 1e9 - d_ts).tolist()


def _jitter(st: "_Stream", first_arrival_ns: int, first_rtp_ts: int, deviations) -> float:
    """RFC 3550 jitter (RTP ticks) after the stream accepts, in order, a packet at
    (``first_arrival_ns``, ``first_rtp_ts``) and then packets with these ``deviations``:
    the same float operations as ``CallMedia._accept`` packet by packet."""
    dts = (first_rtp_ts - st.prev_ts) & 0xFFFFFFFF
    if dts >= 0x80000000:
        dts -= 0x100000000
    jitter = st.jitter_ticks
    dev = (first_arrival_ns - st.prev_arrival_ns) * st.clock_hz / 1e9 - dts
    jitter += ((dev if dev >= 0 else -dev) - jitter) / 16.0
    for d in deviations:
        jitter += (d - jitter) / 16.0
    return jitter


class _Stream:
    """Mutable per-stream state (one per SSRC and direction; not a per-packet object)."""

    __slots__ = ("index", "direction", "ssrc", "stats", "next_ext", "max_ext", "first_ext",
                 "seq_offset", "window", "window_since_ns", "skipped", "pending",
                 "clock_hz", "jitter_ticks", "prev_arrival_ns", "prev_ts", "event_pts",
                 "dtmf")

    def __init__(self, index: int, direction: int, ssrc: int, seq: int) -> None:
        self.index = index
        self.direction = direction
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


class _Hop:
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


class CallMedia:
    """All RTP of one call, fed packet by packet, released in order to one media log."""

    def __init__(self, log_path: Path | MediaLogMemory | None, *,
                 clock_rate_for_pt: Callable[[int, int], int] | None = None,
                 codecs_for_direction: Callable[[int], dict] | None = None,
                 reorder_window_packets: int = 32,
                 reorder_window_ns: int = 200_000_000,
                 counters: Counter | None = None,
                 redact_dtmf: bool = False) -> None:
        self.codecs_for_direction = codecs_for_direction   # direction -> {pt: CodecInfo} (DTMF, event PTs)
        # log_path None: counters and key presses only, no audio kept (inspect); a
        # MediaLogMemory: the ordered records kept in memory for a render in this process.
        self.log = (NullMediaLog() if log_path is None else log_path if isinstance(log_path, MediaLogMemory)
                    else MediaLogWriter(log_path))
        self._clock_rate_for_pt = clock_rate_for_pt
        self.reorder_window_packets = reorder_window_packets
        self.reorder_window_ns = reorder_window_ns
        self.counters = counters
        self._by_key: dict[tuple[int, int], _Stream] = {}
        self._streams: list[_Stream] = []
        self.first_arrival_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.not_rtp = 0          # datagrams that were neither RTP, RTCP nor ZRTP
        self.rtcp = 0             # RTCP multiplexed on the RTP port (ignored)
        self.zrtp_packets = 0
        self.zrtp_seen = False    # the media is (about to be) SRTP-encrypted
        self.bad_seq = 0          # packets dropped as unconfirmed sequence jumps
        self.redact_dtmf = redact_dtmf
        self._hops: dict[int, _Hop] = {}   # per direction: the hop its media is taken from
        self.relay_copies = 0     # packets of a direction that came from a second hop
        self.closed = False
        # Header columns for voice quality (quality.py): set for media sequenced as it arrives
        # (inspect); sequence_capture hands over the columns of the raw log's blocks instead.
        self.quality: QualityCollector | None = None

    # ------------------------------------------------------------------ fast path
    def on_rtp(self, direction: int, arrival_ns: int, src: str, dst: str, data: bytes) -> bool:
        """Take one UDP payload of the call's media. False when it is not RTP.

        ZRTP returns True (it is media of the call) but is not logged. Each direction is
        taken from one hop: a tap beside a media relay sees the same audio twice (phone →
        relay, relay → phone), possibly with rewritten SSRCs; packets of a direction from
        another source while the active hop is sending are relay copies, counted and dropped.
        """
        hop = self._hops.get(direction)
        if hop is None or hop.src == src or arrival_ns - hop.last_ns > self.reorder_window_ns:
            if hop is None or hop.src != src:               # first hop, or the old one went quiet
                hop = self._hops[direction] = _Hop(src)
            hop.last_ns = arrival_ns
            if hop.tail is not None:
                hop.unfold()
            hop.recent.append(data)
        elif hop.repeats(data):
            # The same payload from a second source while the active hop is sending: the relay's
            # copy (SSRC or sequence possibly rewritten). Different payloads are a real stream.
            self.relay_copies += 1
            self._count("media.relay_copy")
            return True
        if len(data) >= 12 and data[0] == 0x80 and not 192 <= data[1] <= 223:
            # The plain header nearly every packet has (no CSRC, extension or padding).
            b1 = data[1]
            pt, marker = b1 & 0x7F, b1 > 0x7F
            seq, ts, ssrc = _SEQ_TS_SSRC(data, 2)
            ps, pe = 12, len(data)
        else:
            f = parse_rtp(data)
            if f is None:
                return self._not_rtp(data)
            pt, marker, seq, ts, ssrc, ps, pe = f
        if self.quality is not None:
            self.quality.add_packet(direction, src, ssrc, seq, ts, arrival_ns, marker << 7 | pt)
        st = self._by_key.get((direction, ssrc))
        if st is None:
            st = self._new_stream(direction, ssrc, seq, src, dst, arrival_ns)
        if self.last_arrival_ns is None or arrival_ns > self.last_arrival_ns:
            self.last_arrival_ns = arrival_ns

        seq = (seq + st.seq_offset) & 0xFFFF
        d = (seq - st.max_ext) & 0xFFFF
        if d >= 0x8000:
            d -= 0x10000
        ext = st.max_ext + d

        if ext > st.max_ext + MAX_DROPOUT or ext < st.next_ext - MAX_MISORDER:
            return self._big_jump(st, seq, ts, arrival_ns, pt, marker, data[ps:pe])
        if ext < st.next_ext or ext in st.window:
            self._too_old(st, ext)
            return True
        self._accept(st, ext, ts, arrival_ns, pt, marker, data, ps, pe)
        return True

    def feed_run(self, run: RtpRun) -> int:
        """``on_rtp`` for every packet of ``run``, in run order (arrival order), with the same
        results; returns how many were not RTP. Stretches in which every direction continues
        its stream in order (``_bulk_end``) are taken at once (``_take_bulk``); the packets
        around a loss, a reordering, a new SSRC or a telephone-event go one by one."""
        n = len(run)
        pos = 0
        window = _BULK_MIN
        not_rtp = 0
        while pos < n:
            limit = min(n, pos + window)
            end = self._bulk_end(run, pos, limit)
            if end > pos:
                self._take_bulk(run, pos, end)
                pos = end
                window = min(window * 4, _BULK_MAX) if end == limit else _BULK_MIN
                if end == limit:
                    continue
            label = run.label
            dst = label(int(run.dst_key[pos])) if run.dst_known[pos] else ""
            if not self.on_rtp(int(run.direction[pos]), int(run.arrival_ns[pos]), label(int(run.src_key[pos])),
                               dst, run.data(pos)):
                not_rtp += 1
            pos += 1
        return not_rtp

    def take_whole(self, run: RtpRun) -> bool:
        """``on_rtp`` for every packet of ``run`` (a whole call's raw log, arrival order) with
        the same results, each stream sequenced at once (``sequencing.sequence_stream``).
        Only for a fresh ``CallMedia`` and a call whose packets are all plain RTP headers,
        with one source and one SSRC per direction, no sequence jump that ``CallMedia`` would
        treat as a restart, and a first packet per stream that is not comfort noise; returns
        False, having changed nothing, for any other call (``feed_run`` takes it then)."""
        n = len(run)
        if self._streams or not n or bool(np.any(run.b0 != 0x80)) or bool(np.any((run.b1 >= 192) & (run.b1 <= 223))):
            return False
        plans = []
        for direction in (0, 1):
            idx = np.flatnonzero(run.direction == direction)
            if not idx.size:
                continue
            if (bool(np.any(run.src_key[idx] != run.src_key[idx[0]])) or bool(np.any(run.ssrc[idx] != run.ssrc[idx[0]]))
                    or int(run.b1[idx[0]]) & 0x7F == _CN_PT):
                return False
            ext = extend_seq(run.seq[idx])
            if not jumps_within(ext, MAX_DROPOUT, MAX_MISORDER):
                return False
            plans.append((int(idx[0]), direction, idx, ext))
        plans.sort()                                   # streams in order of first arrival
        label = run.label
        pt = (run.b1 & 0x7F).astype(np.int64)
        released, triggers, streams = [], [], []
        is_event = np.zeros(n, dtype=bool)
        for first, direction, idx, ext in plans:
            dst = label(int(run.dst_key[first])) if run.dst_known[first] else ""
            st = self._new_stream(direction, int(run.ssrc[first]), int(run.seq[first]), label(int(run.src_key[first])),
                                  dst, int(run.arrival_ns[first]))
            st.clock_hz = self._clock_for(direction, int(pt[first]))
            st.event_pts = self._event_pts(direction)
            if st.event_pts:
                is_event[idx] = np.isin(pt[idx], list(st.event_pts))
            seq = sequence_stream(ext, run.arrival_ns[idx], window_packets=self.reorder_window_packets,
                                  window_ns=self.reorder_window_ns, max_misorder=MAX_MISORDER)
            self._took_whole(st, run, idx, pt, is_event, seq)
            released.append(idx[seq.released])
            triggers.append(idx[seq.trigger])
            streams.append(np.full(seq.released.size, st.index, dtype=np.int64))
            st.window = {e: self._held(run, int(idx[p]), pt) for e, p in seq.window.items()}
            st.window_since_ns = seq.window_since_ns
        self.last_arrival_ns = int(run.arrival_ns.max())
        rows = np.concatenate(released)
        order = np.argsort(np.concatenate(triggers), kind="stable")
        rows = rows[order]
        stream_index = np.concatenate(streams)[order]
        ext_all = np.empty(n, dtype=np.int64)
        for _first, _direction, idx, ext in plans:
            ext_all[idx] = ext
        sizes = run.size[rows] - 12
        if self.redact_dtmf:
            sizes = np.where(is_event[rows], 0, sizes)      # the record keeps its slot, not the digit
        if isinstance(self.log, NullMediaLog):
            self.log.records += rows.size
        else:
            self.log.append_records(stream_index, ext_all[rows], run.rtp_ts[rows], run.arrival_ns[rows], pt[rows],
                                    run.b1[rows] > 0x7F, run.buf, run.data_start[rows] + 12, sizes)
        return True

    def _held(self, run: RtpRun, i: int, pt: np.ndarray) -> tuple[int, int, int, bool, bytes]:
        """A packet still in the reorder window after ``take_whole``, as ``_accept`` holds it."""
        payload = run.data(i)[12:]
        st = self._by_key[(int(run.direction[i]), int(run.ssrc[i]))]
        if self.redact_dtmf and int(pt[i]) in st.event_pts:
            payload = b""
        return int(run.rtp_ts[i]), int(run.arrival_ns[i]), int(pt[i]), bool(run.b1[i] > 0x7F), payload

    def _took_whole(self, st: _Stream, run: RtpRun, idx: np.ndarray, pt: np.ndarray, is_event: np.ndarray,
                    seq: StreamSequence) -> None:
        """The stream state and counters ``_accept`` / ``_too_old`` leave after ``seq``."""
        acc = idx[seq.accepted]
        stats = st.stats
        stats.packets = int(acc.size)
        stats.bytes = int(run.size[acc].sum()) - 12 * int(acc.size)
        stats.last_arrival_ns = int(run.arrival_ns[acc[-1]])
        kinds, firsts, counts = np.unique(pt[acc], return_index=True, return_counts=True)
        for k in np.argsort(firsts).tolist():
            stats.payload_types[int(kinds[k])] = int(counts[k])
        stats.lost, stats.duplicated, stats.late, stats.reordered = seq.lost, seq.duplicated, seq.late, seq.reordered
        st.next_ext, st.max_ext, st.skipped = seq.next_ext, seq.max_ext, seq.skipped
        arrival = run.arrival_ns[acc]
        rtp_ts = run.rtp_ts[acc]
        jitter = 0.0
        for d in _deviations(st.clock_hz, arrival, rtp_ts):
            jitter += (d - jitter) / 16.0
        st.jitter_ticks = jitter
        st.prev_arrival_ns = int(arrival[-1])
        st.prev_ts = int(rtp_ts[-1])
        if st.event_pts:
            for i in acc[is_event[acc]].tolist():
                self._on_event(st, int(pt[i]), int(run.rtp_ts[i]), int(run.arrival_ns[i]), run.data(i)[12:])

    def _ready(self, run: RtpRun, i: int) -> _Stream | None:
        """The stream packet ``i`` continues, if its state lets packets be taken at once."""
        direction = int(run.direction[i])
        hop = self._hops.get(direction)
        if hop is None or run.label(int(run.src_key[i])) != hop.src:
            return None
        st = self._by_key.get((direction, int(run.ssrc[i])))
        if (st is None or st.pending is not None or st.window or not st.clock_hz or st.prev_arrival_ns < 0
                or st.next_ext != st.max_ext + 1):
            return None
        return st

    def _bulk_end(self, run: RtpRun, lo: int, hi: int) -> int:
        """The first position in [lo, hi) the per-packet path must handle, else hi."""
        first = int(run.direction[lo])
        if self._ready(run, lo) is None:
            return lo
        directions = run.direction[lo:hi]
        stop = hi
        for direction in (first, 1 - first):
            sel = np.flatnonzero(directions == direction)
            if not len(sel):
                continue
            idx = lo + sel
            i0 = int(idx[0])
            st = self._ready(run, i0)
            if st is None:
                stop = min(stop, i0)
                continue
            takes = [pt for pt in st.stats.payload_types if pt not in st.event_pts]
            expected = (st.next_ext - st.seq_offset + np.arange(len(idx))) & 0xFFFF
            bad = ((run.src_key[idx] != run.src_key[i0]) | (run.ssrc[idx] != st.ssrc) | (run.b0[idx] != 0x80)
                   | (run.seq[idx] != expected) | ~np.isin(run.b1[idx] & 0x7F, takes))
            if bad.any():
                stop = min(stop, int(idx[int(np.argmax(bad))]))
        return stop

    def _take_bulk(self, run: RtpRun, lo: int, hi: int) -> None:
        """What ``_accept`` does for every packet of [lo, hi), all in order (see _bulk_end)."""
        directions = run.direction[lo:hi]
        count = hi - lo
        ext = np.empty(count, dtype=np.int64)
        stream_index = np.empty(count, dtype=np.int64)
        pt = (run.b1[lo:hi] & 0x7F).astype(np.int64)
        last_arrival = int(run.arrival_ns[lo:hi].max())
        for direction in (0, 1):
            sel = np.flatnonzero(directions == direction)
            if not len(sel):
                continue
            idx = lo + sel
            m = len(idx)
            st = self._by_key[(direction, int(run.ssrc[idx[0]]))]
            ext[sel] = st.next_ext + np.arange(m)
            stream_index[sel] = st.index
            arrival = run.arrival_ns[idx]
            rtp_ts = run.rtp_ts[idx]
            newest = idx[-_Hop.KEEP:]
            sizes = run.size[newest]
            rows = (sliding_window_view(np.frombuffer(run.buf, dtype=np.uint8), int(sizes[0]))[run.data_start[newest]]
                    if bool(np.all(sizes == sizes[0])) else None)
            kinds, counts = np.unique(pt[sel], return_counts=True)
            self._took(st, m, int(run.size[idx].sum()) - 12 * m, zip(kinds.tolist(), counts.tolist()),
                       int(arrival[-1]), int(rtp_ts[-1]),
                       _jitter(st, int(arrival[0]), int(rtp_ts[0]), _deviations(st.clock_hz, arrival, rtp_ts)),
                       rows, lambda: [run.data(i) for i in newest.tolist()])
        if isinstance(self.log, NullMediaLog):
            self.log.records += count
        else:
            self.log.append_records(stream_index, ext, run.rtp_ts[lo:hi], run.arrival_ns[lo:hi], pt,
                                    run.b1[lo:hi] > 0x7F, run.buf, run.data_start[lo:hi] + 12,
                                    run.size[lo:hi] - 12)
        if self.last_arrival_ns is None or last_arrival > self.last_arrival_ns:
            self.last_arrival_ns = last_arrival

    def take_groups(self, groups: RunGroups, g0: int, g1: int, later: list) -> int:
        """``on_rtp`` for this call's packets of a batch (groups ``g0:g1``, one per direction);
        returns how many were not RTP.

        The common case, each direction continuing its current stream in order from the hop
        it is taken from, with one payload type already seen (not a telephone-event), is
        planned here and taken later for every call of the batch at once (``accept_later``):
        what ``_accept`` does per packet, with exactly the same numbers (jitter included).
        Anything else goes packet by packet now, in arrival order."""
        if not isinstance(self.log, NullMediaLog):
            return groups.run.each(self.on_rtp, groups.positions(g0, g1))
        plans = []
        for g in range(g0, g1):
            st = self._continues(groups, g)
            if st is None:
                return groups.run.each(self.on_rtp, groups.positions(g0, g1))
            plans.append((st, g))
        if self.quality is not None:
            self.quality.add_run(groups.run, groups.positions(g0, g1))
        later.append((self, plans))
        return 0

    @staticmethod
    def accept_later(groups: RunGroups, later: list) -> None:
        """Take the groups ``take_groups`` planned: the jitter steps and each stream's newest
        packets are computed for all of them at once."""
        clocks = [0] * len(groups)
        for _media, plans in later:
            for st, g in plans:
                clocks[g] = st.clock_hz
        groups.prepare(clocks)
        for media, plans in later:
            for st, g in plans:
                media._accept_group(st, groups, g)

    def _continues(self, groups: RunGroups, g: int) -> _Stream | None:
        """The stream that takes every packet of group ``g`` in order, as they are; else None."""
        direction = groups.direction[g]
        hop = self._hops.get(direction)
        if (hop is None or not (groups.one_src[g] and groups.one_ssrc[g] and groups.plain[g]
                                and groups.in_seq[g] and groups.one_pt[g])
                or groups.run.label(groups.src_key[g]) != hop.src):
            return None
        st = self._by_key.get((direction, groups.ssrc[g]))
        if (st is None or st.pending is not None or st.window or not st.clock_hz or st.prev_arrival_ns < 0
                or st.next_ext != st.max_ext + 1 or groups.seq[g] != (st.next_ext - st.seq_offset) & 0xFFFF):
            return None
        pt = groups.pt[g]
        if pt not in st.stats.payload_types or pt in st.event_pts:
            return None
        return st

    def _accept_group(self, st: _Stream, groups: RunGroups, g: int) -> None:
        run = groups.run
        lo, hi = groups.start[g], groups.end[g]
        m = hi - lo
        last_arrival = groups.last_arrival_ns[g]
        self._took(st, m, groups.bytes[g] - 12 * m, ((groups.pt[g], m),), last_arrival, groups.last_rtp_ts[g],
                   _jitter(st, groups.first_arrival_ns[g], groups.first_rtp_ts[g], groups.deviation[lo + 1:hi]),
                   groups.tail_rows(g), lambda: [run.data(i) for i in range(max(lo, hi - _Hop.KEEP), hi)])
        self.log.records += m
        if self.last_arrival_ns is None or last_arrival > self.last_arrival_ns:
            self.last_arrival_ns = last_arrival

    def _took(self, st: _Stream, m: int, payload_bytes: int, pt_counts, last_arrival_ns: int,
              last_rtp_ts: int, jitter_ticks: float, newest_rows: np.ndarray | None,
              newest_packets: Callable[[], list[bytes]]) -> None:
        """The state ``_accept`` leaves after taking ``m`` packets of ``st`` in order: counters,
        sequence position, jitter, and its hop's newest packets (as rows when they all have one
        size, else as bytes)."""
        hop = self._hops[st.direction]
        hop.last_ns = last_arrival_ns
        if newest_rows is not None:
            hop.push_rows(newest_rows)
        else:
            if hop.tail is not None:
                hop.unfold()
            hop.recent.extend(newest_packets())
        stats = st.stats
        stats.packets += m
        stats.bytes += payload_bytes
        stats.last_arrival_ns = last_arrival_ns
        for pt, count in pt_counts:
            stats.payload_types[pt] += count
        st.max_ext += m
        st.next_ext += m
        st.jitter_ticks = jitter_ticks
        st.prev_arrival_ns = last_arrival_ns
        st.prev_ts = last_rtp_ts

    def _accept(self, st: _Stream, ext: int, ts: int, arrival_ns: int, pt: int,
                marker: bool, data: bytes, ps: int, pe: int) -> None:
        stats = st.stats
        stats.packets += 1
        stats.bytes += pe - ps
        stats.last_arrival_ns = arrival_ns
        pts = stats.payload_types
        seen = pts.get(pt)
        if seen is None:
            # First packet of this PT in the stream (rare): learn whether it is an event PT.
            seen = 0
            st.event_pts = self._event_pts(st.direction)
        pts[pt] = seen + 1
        if pt in st.event_pts:
            self._on_event(st, pt, ts, arrival_ns, data[ps:pe])
            if self.redact_dtmf:
                data, ps, pe = b"", 0, 0
        if ext > st.max_ext:
            st.max_ext = ext
        else:
            stats.reordered += 1

        # RFC 3550 6.4.1 interarrival jitter, in RTP ticks, over packets in arrival order.
        clock = st.clock_hz
        if not clock and pt != _CN_PT:
            clock = st.clock_hz = self._clock_for(st.direction, pt)
        if clock:
            if st.prev_arrival_ns >= 0:
                dts = (ts - st.prev_ts) & 0xFFFFFFFF
                if dts >= 0x80000000:
                    dts -= 0x100000000
                dev = (arrival_ns - st.prev_arrival_ns) * clock / 1e9 - dts
                if dev < 0:
                    dev = -dev
                st.jitter_ticks += (dev - st.jitter_ticks) / 16.0
            st.prev_arrival_ns = arrival_ns
            st.prev_ts = ts

        if ext == st.next_ext and not st.window:
            # Fast path: in order, nothing held back.
            self.log.append(st.index, ext, ts, arrival_ns, pt, marker, data[ps:pe])
            st.next_ext = ext + 1
            return
        if not st.window:
            st.window_since_ns = arrival_ns
        st.window[ext] = (ts, arrival_ns, pt, marker, data[ps:pe])
        self._drain(st, arrival_ns, force=False)

    # ------------------------------------------------------------------ slow paths
    def _not_rtp(self, data: bytes) -> bool:
        if is_zrtp(data):
            self.zrtp_seen = True
            self.zrtp_packets += 1
            self._count("media.zrtp")
            return True
        if is_rtcp(data):
            self.rtcp += 1
            self._count("media.skip.rtcp_mux")
        else:
            self.not_rtp += 1
            self._count("media.skip.not_rtp")
        return False

    def _event_pts(self, direction: int) -> dict[int, int]:
        if self.codecs_for_direction is None:
            return {}
        try:
            codecs = self.codecs_for_direction(direction)
        except Exception:  # the engine's lookup must never break capture
            return {}
        return {pt: (info.clock_rate_hz or 8000) for pt, info in codecs.items()
                if is_telephone_event(info.encoding)}

    def _on_event(self, st: _Stream, pt: int, ts: int, arrival_ns: int, payload: bytes) -> None:
        tracker = st.dtmf
        if tracker is None:
            tracker = st.dtmf = TelephoneEventTracker(st.direction, st.event_pts.get(pt, 8000))
        tracker.on_packet(ts, arrival_ns, payload)

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters[name] += 1

    def _clock_for(self, direction: int, pt: int) -> int:
        if self._clock_rate_for_pt is None:
            return 8000
        try:
            rate = self._clock_rate_for_pt(direction, pt)
        except Exception:  # the engine's lookup must never break capture
            rate = 0
        return rate if rate and rate > 0 else 8000

    def _new_stream(self, direction: int, ssrc: int, seq: int, src: str, dst: str,
                    arrival_ns: int) -> _Stream:
        # A new SSRC in a direction (transfer, re-anchoring PBX) ends the reordering of
        # the older streams of that direction: release what they still hold.
        for other in self._streams:
            if other.direction == direction and other.window:
                self._drain(other, arrival_ns, force=True)
        st = _Stream(len(self._streams), direction, ssrc, seq)
        st.stats.src = src
        st.stats.dst = dst
        st.stats.first_arrival_ns = arrival_ns
        self._streams.append(st)
        self._by_key[(direction, ssrc)] = st
        if self.first_arrival_ns is None or arrival_ns < self.first_arrival_ns:
            self.first_arrival_ns = arrival_ns
        self._count("media.streams")
        return st

    def _too_old(self, st: _Stream, ext: int) -> None:
        stats = st.stats
        if ext in st.skipped:
            # Its slot was already given up as lost: it is late, not lost.
            st.skipped.discard(ext)
            stats.late += 1
            stats.lost -= 1
        elif ext < st.first_ext:
            stats.late += 1   # sent before the first packet we saw: never counted as lost
        else:
            stats.duplicated += 1

    def _big_jump(self, st: _Stream, seq: int, ts: int, arrival_ns: int, pt: int,
                  marker: bool, payload: bytes) -> bool:
        """A sequence jump too large for loss or reordering: restart only if confirmed."""
        pending = st.pending
        if pending is None or (pending[0] + 1) & 0xFFFF != seq:
            if pending is not None:
                self.bad_seq += 1
                self._count("media.skip.bad_seq")
            st.pending = (seq, ts, arrival_ns, pt, marker, payload)
            return True
        # Two consecutive packets agree: the sender restarted its sequence numbers.
        st.pending = None
        self._drain(st, arrival_ns, force=True)
        st.next_ext = st.max_ext + 1
        st.seq_offset = (st.seq_offset + st.next_ext - pending[0]) & 0xFFFF
        st.skipped.clear()
        p_seq, p_ts, p_arr, p_pt, p_marker, p_payload = pending
        self._accept(st, st.next_ext, p_ts, p_arr, p_pt, p_marker, p_payload, 0, len(p_payload))
        self._accept(st, st.next_ext, ts, arrival_ns, pt, marker, payload, 0, len(payload))
        self._count("media.seq_restart")
        return True

    def _drain(self, st: _Stream, now_ns: int, *, force: bool) -> None:
        """Release the window in sequence order; skip a gap when the window is full, has
        waited too long, or ``force`` (close / new SSRC)."""
        w = st.window
        log = self.log
        released = False
        while w:
            rec = w.pop(st.next_ext, None)
            if rec is not None:
                ts, arr, pt, marker, payload = rec
                log.append(st.index, st.next_ext, ts, arr, pt, marker, payload)
                st.next_ext += 1
                released = True
                continue
            if (force or len(w) > self.reorder_window_packets
                    or now_ns - st.window_since_ns > self.reorder_window_ns):
                lo = min(w)
                st.stats.lost += lo - st.next_ext
                st.skipped.update(range(max(st.next_ext, lo - MAX_MISORDER), lo))
                st.next_ext = lo
                continue
            break
        if w and released:
            st.window_since_ns = min(r[1] for r in w.values())
        if len(st.skipped) > 4 * MAX_MISORDER:
            floor = st.next_ext - MAX_MISORDER
            st.skipped = {e for e in st.skipped if e >= floor}

    # ------------------------------------------------------------------ queries
    @property
    def streams(self) -> list[StreamInfo]:
        out = []
        for st in self._streams:
            if st.clock_hz:
                st.stats.jitter_ms = round(st.jitter_ticks * 1000.0 / st.clock_hz, 3)
            out.append(StreamInfo(st.index, st.direction, st.ssrc, st.stats))
        return out

    @property
    def dtmf_events(self) -> list[dict]:
        """RFC 4733 key presses of every stream, in time order: dicts with digit,
        direction (0/1), ts_ns (key start, packet time), duration_ms, source "rfc4733"."""
        events = []
        for st in self._streams:
            if st.dtmf is not None:
                events += st.dtmf.events()
        events.sort(key=lambda e: (e.ts_ns, e.direction))
        return [e.as_dict() for e in events]

    @property
    def packets(self) -> int:
        return sum(st.stats.packets for st in self._streams)

    @property
    def log_path(self) -> Path:
        return self.log.path

    @property
    def ordered_media(self) -> Path | list[MediaBlock]:
        """What ``render.render_recording`` reads: the ordered log's blocks when they were kept
        in memory, else its path."""
        return self.log.blocks if isinstance(self.log, MediaLogMemory) else self.log.path

    def close(self) -> None:
        """Release every window and flush the log (idempotent)."""
        if self.closed:
            return
        for st in self._streams:
            if st.window:
                self._drain(st, self.last_arrival_ns or 0, force=True)
            if st.pending is not None:
                self.bad_seq += 1
                self._count("media.skip.bad_seq")
                st.pending = None
        self.log.close()
        self.closed = True
        if self.counters is not None:
            for st in self._streams:
                if st.dtmf is not None:
                    self.counters["media.dtmf.rfc4733_presses"] += len(st.dtmf.events())
                    if st.dtmf.other_events:
                        self.counters["media.dtmf.other_events"] += st.dtmf.other_events
                    if st.dtmf.malformed:
                        self.counters["media.dtmf.malformed"] += st.dtmf.malformed


# ---------------------------------------------------------------------- capture stage

@dataclass(slots=True)
class MediaPlan:
    """What the sequencer needs to finish a call's media later, possibly in another process."""
    codecs: dict[int, dict]              # direction -> {pt: CodecInfo}, the call's final SDP view
    labels: list[tuple[int, int, str, str]] = field(default_factory=list)  # (record no, direction, src, dst)
    redact_dtmf: bool = False
    zrtp_seen: bool = False
    captured_packets: tuple[int, int] = (0, 0)   # per direction, as counted at capture time
    log_failures: int = 0                        # the raw log could not be written (disk full)


class MediaCapture:
    """Capture-side media of one call: appends each RTP packet, whole, to the raw log.

    Per packet: a version/RTCP check, an identity check of the source label, one append.
    ZRTP is noted (the media is about to be encrypted) and not logged. With ``redact_dtmf``
    the event code of telephone-event packets is zeroed before the log, so no digit ever
    reaches the disk while press times and durations (needed for masking) survive.
    """

    __slots__ = ("log", "labels", "_last_src", "first_arrival_ns", "last_arrival_ns", "not_rtp", "packets",
                 "rtcp", "zrtp_packets", "zrtp_seen", "redact_dtmf", "_is_event", "_codecs", "counters",
                 "write_audio")

    def __init__(self, log_path: Path, *, codecs_for_direction: Callable[[int], dict] | None = None,
                 redact_dtmf: bool = False, counters: Counter | None = None,
                 write_audio: bool = True) -> None:
        self.log = MediaLogWriter(log_path)
        self.write_audio = write_audio     # False: disk below the floor, count packets only
        self.labels: list[tuple[int, int, str, str]] = []
        self._last_src: list[str | None] = [None, None]
        self.packets = [0, 0]     # RTP packets captured per direction (kept even if the disk is full)
        self.first_arrival_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.not_rtp = 0
        self.rtcp = 0
        self.zrtp_packets = 0
        self.zrtp_seen = False
        self.redact_dtmf = redact_dtmf
        self._is_event: dict[int, bool] = {}
        self._codecs = codecs_for_direction
        self.counters = counters

    def on_rtp(self, direction: int, arrival_ns: int, src: str, dst: str, data: bytes) -> bool:
        """Take one UDP payload of the call's media. False when it is not RTP."""
        if not looks_like_rtp(data):
            return self._not_rtp(data)
        if src is not self._last_src[direction] and src != self._last_src[direction]:
            self._last_src[direction] = src
            self.labels.append((self.log.records, direction, src, dst))
        if self.redact_dtmf and self._event_pt(direction, data[1] & 0x7F):
            data = _without_event_code(data)
        if self.first_arrival_ns is None:
            self.first_arrival_ns = arrival_ns
        self.last_arrival_ns = arrival_ns
        self.packets[direction] += 1
        if self.write_audio:
            self.log.append(direction, 0, 0, arrival_ns, 0, False, data)
        return True

    def take_groups(self, groups: RunGroups, g0: int, g1: int, later: list) -> int:
        """``on_rtp`` for this call's packets of a batch (groups ``g0:g1``, all RTP-looking): one
        append of all of them, in arrival order, when each direction keeps its source label
        and nothing needs redacting; else packet by packet. Returns how many were not RTP."""
        run = groups.run
        positions = groups.positions(g0, g1)
        for g in range(g0, g1):
            direction = groups.direction[g]
            if (not groups.one_src[g] or run.label(groups.src_key[g]) != self._last_src[direction]
                    or (self.redact_dtmf and (not groups.one_pt[g] or self._event_pt(direction, groups.pt[g])))):
                return run.each(self.on_rtp, positions)
        for g in range(g0, g1):
            self.packets[groups.direction[g]] += groups.end[g] - groups.start[g]
        if self.first_arrival_ns is None:
            self.first_arrival_ns = int(run.arrival_ns[positions[0]])
        self.last_arrival_ns = int(run.arrival_ns[positions[-1]])
        if self.write_audio:
            self.log.append_run(run.direction[positions], run.arrival_ns[positions], run.buf,
                                run.data_start[positions], run.size[positions])
        return 0

    def _not_rtp(self, data: bytes) -> bool:
        if is_zrtp(data):
            self.zrtp_seen = True
            self.zrtp_packets += 1
            return True
        if is_rtcp(data):
            self.rtcp += 1
        else:
            self.not_rtp += 1
        return False

    def _event_pt(self, direction: int, pt: int) -> bool:
        key = direction << 8 | pt
        known = self._is_event.get(key)
        if known is None:
            codecs = self._codecs(direction) if self._codecs is not None else {}
            info = codecs.get(pt)
            known = self._is_event[key] = info is not None and is_telephone_event(info.encoding)
        return known

    @property
    def log_path(self) -> Path:
        return self.log.path

    def close(self) -> None:
        self.log.close()
        if self.counters is not None and self.log.failures:
            self.counters["media.log.failures"] += self.log.failures
            self.counters["media.log.dropped_packets"] += self.log.dropped + self.log.lost_at_failure

    def plan(self, codecs: dict[int, dict]) -> MediaPlan:
        return MediaPlan(codecs=codecs, labels=list(self.labels), redact_dtmf=self.redact_dtmf,
                         zrtp_seen=self.zrtp_seen, captured_packets=tuple(self.packets),
                         log_failures=self.log.failures or (0 if self.write_audio else 1))


def _without_event_code(data: bytes) -> bytes:
    """The packet with the RFC 4733 event code (first payload byte) zeroed."""
    start = 12 + ((data[0] & 0x0F) << 2)
    if data[0] & 0x10 and start + 4 <= len(data):
        start += 4 + (int.from_bytes(data[start + 2:start + 4], "big") << 2)
    if start >= len(data):
        return data
    return data[:start] + b"\0" + data[start + 1:]


def sequence_capture(raw_path: Path, ordered_path: Path, plan: MediaPlan, *,
                     counters: Counter | None = None, bulk: bool = True,
                     in_memory: bool = False) -> CallMedia:
    """Run the raw log of a call through ``CallMedia``: reorder, stats, RFC 4733 events, and
    the ordered media log at ``ordered_path``. Returns the closed ``CallMedia``.
    ``in_memory``: a call whose raw log fits ``WHOLE_CALL_BYTES`` keeps its ordered log in
    memory (``CallMedia.ordered_media``: blocks for a render in this process, nothing written
    and read back); a longer call still goes to ``ordered_path`` (bounded memory).

    A log up to ``WHOLE_CALL_BYTES`` is read as one block and, when the call qualifies,
    sequenced stream by stream at once (``CallMedia.take_whole``); otherwise the log is read
    in blocks of records as arrays and fed with ``CallMedia.feed_run`` (``bulk`` False:
    packet by packet, the reference the tests compare both with)."""
    codecs = plan.codecs

    def clock_rate_for_pt(direction: int, pt: int) -> int:
        info = codecs.get(direction, {}).get(pt)
        return info.clock_rate_hz if info is not None and info.clock_rate_hz else 8000

    try:
        size = raw_path.stat().st_size
    except FileNotFoundError:
        size = 0
    keep = MediaLogMemory() if in_memory and size <= WHOLE_CALL_BYTES else ordered_path
    media = CallMedia(keep, clock_rate_for_pt=clock_rate_for_pt,
                      codecs_for_direction=lambda direction: codecs.get(direction, {}),
                      redact_dtmf=plan.redact_dtmf, counters=counters)
    # The source/destination labels as small integer keys: RtpRun's label() gives the text back.
    names = [""]
    ids: dict[str, int] = {"": 0}
    events: list[list[tuple[int, int, int]]] = [[], []]      # per direction: (record no, src, dst)
    for number, direction, src, dst in plan.labels:
        for text in (src, dst):
            if text not in ids:
                ids[text] = len(names)
                names.append(text)
        events[direction & 1].append((number, ids[src], ids[dst]))
    tables = [(np.array([e[0] for e in ev], dtype=np.int64), np.array([0] + [e[1] for e in ev], dtype=np.int64),
               np.array([0] + [e[2] for e in ev], dtype=np.int64)) for ev in events]
    done = 0
    quality = QualityCollector()
    # A call whose raw log fits WHOLE_CALL_BYTES is read as one block and, when it qualifies,
    # sequenced at once (CallMedia.take_whole); longer calls go block by block (bounded memory).
    chunk = size + 1 if bulk and size <= WHOLE_CALL_BYTES else 1 << 20
    for block in read_media_log_blocks(raw_path, chunk_bytes=chunk):
        n = len(block)
        direction = (block.stream & 1).astype(np.int64)
        numbers = done + np.arange(n, dtype=np.int64)
        src = np.zeros(n, dtype=np.int64)
        dst = np.zeros(n, dtype=np.int64)
        for d, (at, src_ids, dst_ids) in enumerate(tables):
            mine = direction == d
            k = np.searchsorted(at, numbers[mine], side="right")     # 0: before any label
            src[mine] = src_ids[k]
            dst[mine] = dst_ids[k]
        run = _raw_run(block, direction, src, dst, names.__getitem__)
        # Voice quality from the header columns decoded here (the packet path taps each packet).
        media.quality = quality if run is None or not bulk else None
        if run is not None and bulk:
            quality.add_run(run)
        if run is None or not bulk:
            _each_record(media, block, direction, src, dst, names)
        elif not (chunk > size and media.take_whole(run)):
            media.feed_run(run)
        done += n
    media.close()
    media.quality = quality
    if plan.zrtp_seen:
        media.zrtp_seen = True
    return media


def _raw_run(block: MediaBlock, direction: np.ndarray, src: np.ndarray, dst: np.ndarray,
             label: Callable[[int], str]) -> RtpRun | None:
    """A block of raw-log records (whole RTP packets) as an RtpRun; None if any is too short."""
    n = len(block)
    if not n or int(block.payload_len.min()) < 12 or len(block.data) < 12:
        return None
    header = np.ascontiguousarray(sliding_window_view(block.data, 12)[block.payload_at])
    words = header.view(">u4")
    return RtpRun(order=np.arange(n, dtype=np.int64), direction=direction, arrival_ns=block.arrival_ns,
                  src_key=src, dst_key=dst, b0=header[:, 0].copy(), b1=header[:, 1].copy(),
                  seq=header.view(">u2")[:, 1].astype(np.int64), rtp_ts=words[:, 1].astype(np.int64),
                  ssrc=words[:, 2].astype(np.int64), size=block.payload_len.astype(np.int64),
                  buf=block.data.tobytes(), data_start=block.payload_at.astype(np.int64),
                  dst_known=np.ones(n, dtype=bool), label=label)


def _each_record(media: CallMedia, block: MediaBlock, direction: np.ndarray, src: np.ndarray,
                 dst: np.ndarray, names: list[str]) -> None:
    data = block.data
    for i, (d, arrival, s, t, at, size) in enumerate(zip(
            direction.tolist(), block.arrival_ns.tolist(), src.tolist(), dst.tolist(),
            block.payload_at.tolist(), block.payload_len.tolist())):
        media.on_rtp(d, arrival, names[s], names[t], data[at:at + size].tobytes())

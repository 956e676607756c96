"""The sequencer of one call's media: ``CallMedia`` takes its RTP packets (per packet here,
many at once through ``sequencer_bulk.BulkIntake``) and releases them in order to one media
log.

``CallMedia`` owns per-stream sequence tracking (16-bit wrap, duplicates, bounded reordering, late
packets, loss, restarts), the RFC 3550 interarrival-jitter estimate (``stream_state``) and
handing released packets, in extended-sequence order per stream, to the call's media log
(``medialog``: a file, or blocks in memory for a render in the same process).
RFC 4733 telephone-events are recognised here as packets are accepted (the payload
types come from ``codecs_for_side``: the receiver's rtpmap first) and handed to one
``dtmf.TelephoneEventTracker`` per stream; ``dtmf_events`` lists the key presses. With
``redact_dtmf`` the event payloads are dropped before the log (the record keeps its
sequence slot with an empty payload), so no digit ever reaches the disk.
Does not own routing datagrams to calls (the engine knows the call and the direction), the
capture-side raw log (``stream.py``), decoding or timing of audio (``render.py`` places
packets by RTP timestamp later).

Per packet this is plain Python over ``struct``: one ``parse_rtp``, one dict lookup, a few
integer comparisons and an append to a bytearray; no logging and no per-packet objects on
the in-order path. A whole call's log is usually taken at once instead (``take_whole``:
``sequencing.py`` decides the reorder window over each stream's arrays).
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Callable

from agent.media.codecs import is_telephone_event
from agent.media.dtmf import TelephoneEventTracker
from agent.media.medialog import MediaBlock, MediaLogMemory, MediaLogWriter, NullMediaLog
from agent.media.quality import QualityCollector
from agent.media.rtp import count_not_rtp, parse_rtp
from agent.media.sequencer_bulk import BulkIntake
from agent.media.stream_state import (CN_PT, MAX_DROPOUT, MAX_MISORDER, Hop, StreamInfo, StreamState)

__all__ = ["CallMedia"]

_SEQ_TS_SSRC = struct.Struct("!HII").unpack_from


class CallMedia(BulkIntake):
    """All RTP of one call, fed packet by packet, released in order to one media log."""

    def __init__(self, log_path: Path | MediaLogMemory | None, *,
                 clock_rate_for_pt: Callable[[int, int], int] | None = None,
                 codecs_for_side: Callable[[int], dict] | None = None,
                 reorder_window_packets: int = 32,
                 reorder_window_ns: int = 200_000_000,
                 counters: Counter | None = None,
                 redact_dtmf: bool = False) -> None:
        self.codecs_for_side = codecs_for_side   # direction -> {pt: CodecInfo} (DTMF, event PTs)
        # log_path None: counters and key presses only, no audio kept (inspect); a
        # MediaLogMemory: the ordered records kept in memory for a render in this process.
        self.log = (NullMediaLog() if log_path is None else log_path if isinstance(log_path, MediaLogMemory)
                    else MediaLogWriter(log_path))
        self._clock_rate_for_pt = clock_rate_for_pt
        self.reorder_window_packets = reorder_window_packets
        self.reorder_window_ns = reorder_window_ns
        self.counters = counters
        self._by_key: dict[tuple[int, int], StreamState] = {}
        self._streams: list[StreamState] = []
        self.first_arrival_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.not_rtp = 0          # datagrams that were neither RTP, RTCP nor ZRTP
        self.rtcp = 0             # RTCP multiplexed on the RTP port (ignored)
        self.zrtp_packets = 0
        self.zrtp_seen = False    # the media is (about to be) SRTP-encrypted
        self.bad_seq = 0          # packets dropped as unconfirmed sequence jumps
        self.redact_dtmf = redact_dtmf
        self._hops: dict[int, Hop] = {}   # per direction: the hop its media is taken from
        self.relay_copies = 0     # packets of a direction that came from a second hop
        self.closed = False
        # Header columns for voice quality (quality.py): set for media sequenced as it arrives
        # (inspect); sequence_capture hands over the columns of the raw log's blocks instead.
        self.quality: QualityCollector | None = None

    # ------------------------------------------------------------------ fast path
    def on_rtp(self, side: int, arrival_ns: int, src: str, dst: str, data: bytes) -> bool:
        """Take one UDP payload of the call's media. False when it is not RTP.

        ZRTP returns True (it is media of the call) but is not logged. Each direction is
        taken from one hop: a tap beside a media relay sees the same audio twice (phone →
        relay, relay → phone), possibly with rewritten SSRCs; packets of a direction from
        another source while the active hop is sending are relay copies, counted and dropped.
        """
        hop = self._hops.get(side)
        if hop is None or hop.src == src or arrival_ns - hop.last_ns > self.reorder_window_ns:
            if hop is None or hop.src != src:               # first hop, or the old one went quiet
                hop = self._hops[side] = Hop(src)
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
                return count_not_rtp(self, data, self.counters)
            pt, marker, seq, ts, ssrc, ps, pe = f
        if self.quality is not None:
            self.quality.add_packet(side, src, ssrc, seq, ts, arrival_ns, marker << 7 | pt)
        st = self._by_key.get((side, ssrc))
        if st is None:
            st = self._new_stream(side, ssrc, seq, src, dst, arrival_ns)
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

    def _accept(self, st: StreamState, ext: int, ts: int, arrival_ns: int, pt: int,
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
            st.event_pts = self._event_pts(st.side)
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
        if not clock and pt != CN_PT:
            clock = st.clock_hz = self._clock_for(st.side, pt)
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
    def _event_pts(self, side: int) -> dict[int, int]:
        if self.codecs_for_side is None:
            return {}
        try:
            codecs = self.codecs_for_side(side)
        except Exception:  # the engine's lookup must never break capture
            return {}
        return {pt: (info.clock_rate_hz or 8000) for pt, info in codecs.items()
                if is_telephone_event(info.encoding)}

    def _on_event(self, st: StreamState, pt: int, ts: int, arrival_ns: int, payload: bytes) -> None:
        tracker = st.dtmf
        if tracker is None:
            tracker = st.dtmf = TelephoneEventTracker(st.side, st.event_pts.get(pt, 8000))
        tracker.on_packet(ts, arrival_ns, payload)

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters[name] += 1

    def _clock_for(self, side: int, pt: int) -> int:
        if self._clock_rate_for_pt is None:
            return 8000
        try:
            rate = self._clock_rate_for_pt(side, pt)
        except Exception:  # the engine's lookup must never break capture
            rate = 0
        return rate if rate and rate > 0 else 8000

    def _new_stream(self, side: int, ssrc: int, seq: int, src: str, dst: str,
                    arrival_ns: int) -> StreamState:
        # A new SSRC in a direction (transfer, re-anchoring PBX) ends the reordering of
        # the older streams of that direction: release what they still hold.
        for other in self._streams:
            if other.side == side and other.window:
                self._drain(other, arrival_ns, force=True)
        st = StreamState(len(self._streams), side, ssrc, seq)
        st.stats.src = src
        st.stats.dst = dst
        st.stats.first_arrival_ns = arrival_ns
        self._streams.append(st)
        self._by_key[(side, ssrc)] = st
        if self.first_arrival_ns is None or arrival_ns < self.first_arrival_ns:
            self.first_arrival_ns = arrival_ns
        self._count("media.streams")
        return st

    def _too_old(self, st: StreamState, ext: int) -> None:
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

    def _big_jump(self, st: StreamState, seq: int, ts: int, arrival_ns: int, pt: int,
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

    def _drain(self, st: StreamState, now_ns: int, *, force: bool) -> None:
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
            out.append(StreamInfo(st.index, st.side, st.ssrc, st.stats))
        return out

    @property
    def dtmf_events(self) -> list[dict]:
        """RFC 4733 key presses of every stream, in time order: dicts with digit,
        direction (0/1), ts_ns (key start, packet time), duration_ms, source "rfc4733"."""
        events = []
        for st in self._streams:
            if st.dtmf is not None:
                events += st.dtmf.events()
        events.sort(key=lambda e: (e.ts_ns, e.side))
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

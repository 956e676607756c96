"""The whole-array intake of ``sequencer.CallMedia``: many packets of a call taken at once,
leaving exactly the state, counters, jitter and ordered log that ``CallMedia.on_rtp`` would
leave packet by packet (the tests compare both on every project capture and on damaged
traffic).

Three entry points, by what the caller holds:

* ``take_whole``: a whole call's raw log (``stream.sequence_capture``), each stream sequenced
  at once by ``sequencing.sequence_stream`` when the call qualifies (one source and SSRC per
  direction, plain headers, no restart);
* ``feed_run``: a block of a raw log in arrival order; in-order stretches of every direction
  are taken at once, the packets around a loss, reordering, new SSRC or event one by one;
* ``take_groups`` / ``accept_later``: the capture loop's batches (``inspect``), planned per
  call and taken for every call of the batch at once; a direction with loss, duplicates or
  reordering (or packets still held from the batch before) is sequenced from its stream's
  state as arrays (``sequencing.sequence_stream`` with a ``SequenceStart``), so impairment
  does not send the call's packets one by one.

A mixin: it works on ``CallMedia``'s state (streams, hops, log) and calls its per-packet
path for whatever it does not take.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from agent.byterows import byte_rows
from agent.media.medialog import NullMediaLog
from agent.media.runs import RtpRun, RunGroups
from agent.media.sequencing import SequenceStart, StreamSequence, extend_seq, jumps_within, sequence_stream
from agent.media.stream_state import (CN_PT, MAX_DROPOUT, MAX_MISORDER, Hop, StreamState, jitter_after,
                                      jitter_deviations, jitter_steps)

__all__ = ["BulkIntake"]

# What accept_later does for a group take_groups planned: take it (_accept_group), or, for a
# group _take_resumed sequenced, remember its hop's newest packets (and step the jitter).
_PLANNED, _HOP, _HOP_AND_JITTER = 0, 1, 2

# feed_run looks for in-order stretches in windows that grow while they hold.
_BULK_MIN = 64
_BULK_MAX = 16_384


class BulkIntake:
    """``CallMedia``'s many-packets-at-once methods (see the module docstring)."""

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
            if not self.on_rtp(int(run.side[pos]), int(run.arrival_ns[pos]), label(int(run.src_key[pos])),
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
        for side in (0, 1):
            idx = np.flatnonzero(run.side == side)
            if not idx.size:
                continue
            if (bool(np.any(run.src_key[idx] != run.src_key[idx[0]])) or bool(np.any(run.ssrc[idx] != run.ssrc[idx[0]]))
                    or int(run.b1[idx[0]]) & 0x7F == CN_PT):
                return False
            ext = extend_seq(run.seq[idx])
            if not jumps_within(ext, MAX_DROPOUT, MAX_MISORDER):
                return False
            plans.append((int(idx[0]), side, idx, ext))
        plans.sort()                                   # streams in order of first arrival
        label = run.label
        pt = (run.b1 & 0x7F).astype(np.int64)
        released, triggers, streams = [], [], []
        is_event = np.zeros(n, dtype=bool)
        for first, side, idx, ext in plans:
            dst = label(int(run.dst_key[first])) if run.dst_known[first] else ""
            st = self._new_stream(side, int(run.ssrc[first]), int(run.seq[first]), label(int(run.src_key[first])),
                                  dst, int(run.arrival_ns[first]))
            st.clock_hz = self._clock_for(side, int(pt[first]))
            st.event_pts = self._event_pts(side)
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
        for _first, _side, idx, ext in plans:
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
        st = self._by_key[(int(run.side[i]), int(run.ssrc[i]))]
        if self.redact_dtmf and int(pt[i]) in st.event_pts:
            payload = b""
        return int(run.rtp_ts[i]), int(run.arrival_ns[i]), int(pt[i]), bool(run.b1[i] > 0x7F), payload

    def _took_whole(self, st: StreamState, run: RtpRun, idx: np.ndarray, pt: np.ndarray, is_event: np.ndarray,
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
        st.jitter_ticks = jitter_steps(0.0, jitter_deviations(st.clock_hz, arrival, rtp_ts))
        st.prev_arrival_ns = int(arrival[-1])
        st.prev_ts = int(rtp_ts[-1])
        if st.event_pts:
            for i in acc[is_event[acc]].tolist():
                self._on_event(st, int(pt[i]), int(run.rtp_ts[i]), int(run.arrival_ns[i]), run.data(i)[12:])

    def _ready(self, run: RtpRun, i: int) -> StreamState | None:
        """The stream packet ``i`` continues, if its state lets packets be taken at once."""
        side = int(run.side[i])
        hop = self._hops.get(side)
        if hop is None or run.label(int(run.src_key[i])) != hop.src:
            return None
        st = self._by_key.get((side, int(run.ssrc[i])))
        if (st is None or st.pending is not None or st.window or not st.clock_hz or st.prev_arrival_ns < 0
                or st.next_ext != st.max_ext + 1):
            return None
        return st

    def _bulk_end(self, run: RtpRun, lo: int, hi: int) -> int:
        """The first position in [lo, hi) the per-packet path must handle, else hi."""
        first = int(run.side[lo])
        if self._ready(run, lo) is None:
            return lo
        sides = run.side[lo:hi]
        stop = hi
        for side in (first, 1 - first):
            sel = np.flatnonzero(sides == side)
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
        sides = run.side[lo:hi]
        count = hi - lo
        ext = np.empty(count, dtype=np.int64)
        stream_index = np.empty(count, dtype=np.int64)
        pt = (run.b1[lo:hi] & 0x7F).astype(np.int64)
        last_arrival = int(run.arrival_ns[lo:hi].max())
        for side in (0, 1):
            sel = np.flatnonzero(sides == side)
            if not len(sel):
                continue
            idx = lo + sel
            m = len(idx)
            st = self._by_key[(side, int(run.ssrc[idx[0]]))]
            ext[sel] = st.next_ext + np.arange(m)
            stream_index[sel] = st.index
            arrival = run.arrival_ns[idx]
            rtp_ts = run.rtp_ts[idx]
            newest = idx[-Hop.KEEP:]
            sizes = run.size[newest]
            rows = (byte_rows(run.buf, run.data_start[newest], int(sizes[0]))
                    if bool(np.all(sizes == sizes[0])) else None)
            kinds, counts = np.unique(pt[sel], return_counts=True)
            self._took(st, m, int(run.size[idx].sum()) - 12 * m, zip(kinds.tolist(), counts.tolist()),
                       int(arrival[-1]), int(rtp_ts[-1]),
                       jitter_after(st, int(arrival[0]), int(rtp_ts[0]), jitter_deviations(st.clock_hz, arrival, rtp_ts)),
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
        A direction that is the same but for loss, duplicates, reordering or a window still
        held is sequenced here from its stream's state (``_take_resumed``). Anything else
        (a new SSRC or source, a restart, events, another payload type) goes packet by packet
        now, in arrival order."""
        if not isinstance(self.log, NullMediaLog):
            return groups.run.each(self.on_rtp, groups.positions(g0, g1))
        plans = []
        resumed = []
        for g in range(g0, g1):
            st = self._continues(groups, g)
            if st is not None:
                plans.append((st, g, _PLANNED))
                continue
            resume = self._resumes(groups, g)
            if resume is None:
                return groups.run.each(self.on_rtp, groups.positions(g0, g1))
            resumed.append((g, *resume))
        if self.quality is not None:
            self.quality.add_groups(groups, g0, g1, groups.positions(g0, g1))
        for g, st, ext in resumed:
            plans.append((st, g, self._take_resumed(st, groups, g, ext)))
        later.append((self, plans))
        return 0

    @staticmethod
    def accept_later(groups: RunGroups, later: list) -> None:
        """Take the groups ``take_groups`` planned: the jitter steps and each stream's newest
        packets are computed for all of them at once."""
        clocks = [0] * len(groups)
        for _media, plans in later:
            for st, g, _left in plans:
                clocks[g] = st.clock_hz
        groups.prepare(clocks)
        for media, plans in later:
            for st, g, left in plans:
                if left == _PLANNED:
                    media._accept_group(st, groups, g)
                    continue
                # Sequenced by _take_resumed: its hop's newest packets are left, and with
                # every packet accepted, the jitter steps (the deviations of the whole group).
                media._push_newest(st.side, groups.tail_rows(g), groups.newest_packets(g))
                if left == _HOP_AND_JITTER:
                    lo, hi = groups.start[g], groups.end[g]
                    st.jitter_ticks = jitter_after(st, groups.first_arrival_ns[g], groups.first_rtp_ts[g],
                                                   groups.deviation[lo + 1:hi])
                    st.prev_arrival_ns = groups.last_arrival_ns[g]
                    st.prev_ts = groups.last_rtp_ts[g]

    def _continues(self, groups: RunGroups, g: int) -> StreamState | None:
        """The stream that takes every packet of group ``g`` in order, as they are; else None."""
        st = self._taking_stream(groups, g)
        if (st is None or not groups.in_seq[g] or st.window or st.next_ext != st.max_ext + 1
                or groups.seq[g] != (st.next_ext - st.seq_offset) & 0xFFFF):
            return None
        return st

    def _taking_stream(self, groups: RunGroups, g: int) -> StreamState | None:
        """The stream of group ``g`` when every packet of it is plain RTP of that stream's
        SSRC, from the hop its direction is taken from, with one payload type the stream
        already carries (not an event); else None. A restart on probation (``pending``)
        does not matter: only a packet that jumps (which both callers refuse) looks at it."""
        side = groups.side[g]
        hop = self._hops.get(side)
        if (hop is None or not (groups.one_src[g] and groups.one_ssrc[g] and groups.plain[g] and groups.one_pt[g])
                or groups.run.label(groups.src_key[g]) != hop.src):
            return None
        st = self._by_key.get((side, groups.ssrc[g]))
        if st is None or not st.clock_hz or st.prev_arrival_ns < 0:
            return None
        pt = groups.pt[g]
        if pt not in st.stats.payload_types or pt in st.event_pts:
            return None
        return st

    def _resumes(self, groups: RunGroups, g: int) -> tuple[StreamState, np.ndarray] | None:
        """For a group ``_continues`` refuses only for its order: its stream and the extended
        sequence numbers ``on_rtp`` would give its packets, when none of them is a jump
        ``on_rtp`` would treat as a restart; else None."""
        st = self._taking_stream(groups, g)
        if st is None or (not st.window and st.next_ext != st.max_ext + 1):
            return None
        seq = (groups.run.seq[groups.start[g]:groups.end[g]] + st.seq_offset) & 0xFFFF
        first = (int(seq[0]) - st.max_ext) & 0xFFFF     # unwrapped against the highest so far
        ext = extend_seq(seq) + (st.max_ext + (first - 0x10000 if first >= 0x8000 else first) - int(seq[0]))
        if not jumps_within(ext, MAX_DROPOUT, MAX_MISORDER, st.max_ext):
            return None
        return st, ext

    def _take_resumed(self, st: StreamState, groups: RunGroups, g: int, ext: np.ndarray) -> int:
        """What ``on_rtp`` does for every packet of group ``g`` (see ``_resumes``), with the
        reorder window decided over the arrays from the stream's state, but what
        ``accept_later`` finishes (returned: ``_HOP`` or ``_HOP_AND_JITTER``)."""
        run = groups.run
        lo, hi = groups.start[g], groups.end[g]
        arrival = run.arrival_ns[lo:hi]
        held = list(st.window.items())
        seq = sequence_stream(ext, arrival, window_packets=self.reorder_window_packets,
                              window_ns=self.reorder_window_ns, max_misorder=MAX_MISORDER,
                              start=SequenceStart(st.first_ext, st.next_ext, st.max_ext,
                                                  {e: record[1] for e, record in held}, st.window_since_ns,
                                                  st.skipped))
        n = hi - lo
        window = {}
        for e, p in seq.window.items():
            if p >= n:
                window[e] = held[p - n][1]
            else:
                i = lo + p
                window[e] = (int(run.rtp_ts[i]), int(run.arrival_ns[i]), groups.pt[g], bool(run.b1[i] > 0x7F),
                             run.data(i)[12:])
        st.window = window
        st.window_since_ns = seq.window_since_ns
        st.skipped = seq.skipped
        stats = st.stats
        stats.lost += seq.lost
        stats.duplicated += seq.duplicated
        stats.late += seq.late
        stats.reordered += seq.reordered
        st.max_ext, st.next_ext = seq.max_ext, seq.next_ext
        self.log.records += seq.released.size
        # Every packet of the group passed the hop (rejected ones too: its newest packets
        # are pushed in accept_later, with the other groups'); only the accepted count,
        # move the jitter and the stream's last arrival.
        self._hops[st.side].last_ns = int(arrival[-1])
        last_arrival = int(arrival.max())
        if self.last_arrival_ns is None or last_arrival > self.last_arrival_ns:
            self.last_arrival_ns = last_arrival
        pt_counts = stats.payload_types
        if seq.accepted.all():          # loss and reordering only (no copies, nothing late)
            stats.packets += n
            stats.bytes += groups.bytes[g] - 12 * n
            stats.last_arrival_ns = groups.last_arrival_ns[g]
            pt_counts[groups.pt[g]] += n
            return _HOP_AND_JITTER
        acc = lo + np.flatnonzero(seq.accepted)
        m = int(acc.size)
        if m:
            acc_arrival = run.arrival_ns[acc]
            acc_ts = run.rtp_ts[acc]
            stats.packets += m
            stats.bytes += int(run.size[acc].sum()) - 12 * m
            stats.last_arrival_ns = int(acc_arrival[-1])
            pt_counts[groups.pt[g]] += m
            st.jitter_ticks = jitter_after(st, int(acc_arrival[0]), int(acc_ts[0]),
                                           jitter_deviations(st.clock_hz, acc_arrival, acc_ts))
            st.prev_arrival_ns = int(acc_arrival[-1])
            st.prev_ts = int(acc_ts[-1])
        return _HOP

    def _accept_group(self, st: StreamState, groups: RunGroups, g: int) -> None:
        lo, hi = groups.start[g], groups.end[g]
        m = hi - lo
        last_arrival = groups.last_arrival_ns[g]
        self._took(st, m, groups.bytes[g] - 12 * m, ((groups.pt[g], m),), last_arrival, groups.last_rtp_ts[g],
                   jitter_after(st, groups.first_arrival_ns[g], groups.first_rtp_ts[g], groups.deviation[lo + 1:hi]),
                   groups.tail_rows(g), groups.newest_packets(g))
        self.log.records += m
        if self.last_arrival_ns is None or last_arrival > self.last_arrival_ns:
            self.last_arrival_ns = last_arrival

    def _push_newest(self, side: int, newest_rows: np.ndarray | None,
                     newest_packets: Callable[[], list[bytes]]) -> None:
        """A direction's hop remembers the newest packets taken from it (as rows when they
        all have one size, else as bytes)."""
        hop = self._hops[side]
        if newest_rows is not None:
            hop.push_rows(newest_rows)
        else:
            if hop.tail is not None:
                hop.unfold()
            hop.recent.extend(newest_packets())

    def _took(self, st: StreamState, m: int, payload_bytes: int, pt_counts, last_arrival_ns: int,
              last_rtp_ts: int, jitter_ticks: float, newest_rows: np.ndarray | None,
              newest_packets: Callable[[], list[bytes]]) -> None:
        """The state ``_accept`` leaves after taking ``m`` packets of ``st`` in order: counters,
        sequence position, jitter, and its hop's newest packets (as rows when they all have one
        size, else as bytes)."""
        self._hops[st.side].last_ns = last_arrival_ns
        self._push_newest(st.side, newest_rows, newest_packets)
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

"""The batch router: a batch of frames at a time, RTP routed to calls with numpy.

Owns the sorted copy of the endpoint map (packed ``ip:port`` keys, one int64 each, with a
slot per call and sending side), the packets routed but not yet handed over, and the IPv6
address ids of the keys. ``net/fastpath.py`` reads every frame's fields at once; windows of
RTP are de-duplicated and routed on the sorted keys (``_window``), and each call's packets
are handed to its media at the end of the batch as arrays grouped by call and direction
(``media/runs.py``), or earlier: ``flush_call`` hands a call its packets just before
anything else touches it (the engine calls it for every tracker event and every packet that
takes the per-datagram path).

Every frame it cannot step over (signalling it cannot take in a window, fragments, tunnels
carrying IP, IPv6 extension headers, non-IP) and every frame at which packet time ticks or
leaps goes back to the engine's ``feed``, in order, after everything before it is committed.
The result is exactly that of feeding frame by frame: records, counters and media logs byte
for byte (tests/engine/test_engine_batch.py replays every capture both ways).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from agent.calls.call import Call, Side
from agent.calls.endpoints import EndpointMap
from agent.capture.batches import FrameBatch
from agent.media.runs import RtpRun, RunGroups
from agent.net.datagram import UDP, Datagram
from agent.net.decode import FrameDecoder
from agent.net.fastpath import TUNNEL_GRE, TUNNEL_VXLAN, V6_KEY, AddressIds, RtpFrames, rtp_frames
from agent.net.link import LINKTYPE_ETHERNET, parse_link
from agent.pipeline.clock import GAP_NS, PacketClock

# Smaller batches are fed frame by frame; runs are routed in windows that grow while they
# route cleanly; the slot table starts afresh when ended calls fill most of it.
BATCH_MIN = 64
RUN_WINDOW_MIN = 256
RUN_WINDOW_MAX = 16_384
SLOTS_MAX = 4096
BULK_MIN_PACKETS = 24              # a call's packets in a batch below this go one by one
HELD = -1                          # _route_run: RTP of no known endpoint (held for its SDP)
SLOW = -2                          # _route_run: a frame feed() must handle itself


class _Pending:
    """The packets routed in the batch and not yet handed to their calls, in arrival order:
    columns with room for every frame of the batch (a commit never copies what came before)
    and each packet's call number. A call handed its packets early (``take``) has them marked
    taken in place (call number -1), so the packets left are never copied either."""

    __slots__ = ("idx", "slots", "ts", "calls", "n", "taken", "calls_in")

    def __init__(self, capacity: int = 0) -> None:
        self.idx, self.slots, self.ts, self.calls = (np.empty(capacity, dtype=np.int64) for _ in range(4))
        self.n = 0                          # packets added
        self.taken = 0                      # of those, handed over early
        self.calls_in: set[int] = set()     # numbers of the calls with packets still here

    def add(self, idx: np.ndarray, slots: np.ndarray, ts: np.ndarray, calls: np.ndarray) -> None:
        a, b = self.n, self.n + len(idx)
        self.idx[a:b], self.slots[a:b], self.ts[a:b], self.calls[a:b] = idx, slots, ts, calls
        self.n = b

    def take(self, no: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(batch positions, slots, packet times) of call ``no``'s packets, now taken."""
        if no not in self.calls_in:
            return None
        self.calls_in.discard(no)
        mine = np.flatnonzero(self.calls[:self.n] == no)
        if not len(mine):
            return None
        self.calls[mine] = -1
        self.taken += len(mine)
        return self.idx[mine], self.slots[mine], self.ts[mine]

    def take_all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every packet not taken yet (and the list is empty after)."""
        n, taken = self.n, self.taken
        self.n = self.taken = 0
        self.calls_in.clear()
        if n == taken:
            return None
        if not taken:
            return self.idx[:n], self.slots[:n], self.ts[:n]
        left = np.flatnonzero(self.calls[:n] >= 0)
        return self.idx[left], self.slots[left], self.ts[left]


class BatchRouter:
    def __init__(self, counters, decoder: FrameDecoder, endpoints: EndpointMap, clock: PacketClock,
                 sip_ports: frozenset[int], *, feed: Callable[[int, int, bytes], None],
                 dispatch: Callable[[Datagram], None], tick: Callable[[int], None],
                 hold: Callable[[Datagram], None], media_of: Callable[[Call], Any],
                 batch_min: int = BATCH_MIN) -> None:
        """``feed``, ``dispatch`` and ``tick`` are the engine's per-frame path, its hand-over
        of a decoded datagram and its tick; ``hold`` keeps RTP of no known endpoint;
        ``media_of(call)`` is where a call's packets go."""
        self.counters = counters
        self.decoder = decoder
        self.clock = clock
        self.batch_min = batch_min
        self._endpoints = endpoints
        self._feed, self._dispatch, self._tick, self._hold = feed, dispatch, tick, hold
        self._media_of = media_of
        self._dedup = decoder.dedup_rtp              # RTP's own table (see FrameDecoder)
        self._sip_ports_np = np.array(sorted(sip_ports), dtype=np.int64)
        self._batch: FrameBatch | None = None        # the batch being fed
        self._fx: RtpFrames | None = None
        self._np_keys = np.zeros(0, dtype=np.int64)
        self._np_dst_slot = self._np_src_slot = self._np_keys
        self._v6_ids = AddressIds()                  # IPv6 addresses as small ids in media keys
        # What the batch path did (not counters: a batch must count exactly what frame by
        # frame counts): packets handed to calls in bulk, and fresh starts of the slot table.
        self.packets_routed = 0
        self.slot_table_resets = -1
        self._reset_slots()

    def mark_ready(self, call: Call, side: Side) -> None:
        """``side``'s first packet was seen (per datagram): the batch path may take the packets
        it sends from now on."""
        slot = self._slot_of.get((id(call), side))
        if slot is not None:
            self._slot_ready[slot] = True

    def feed_batch(self, batch: FrameBatch) -> None:
        """Feed every frame of ``batch`` in order, with the same result as ``feed`` frame by frame.

        Runs of plain RTP frames to or from known media endpoints (the bulk of a SPAN port)
        are de-duplicated and routed with numpy a window at a time (``_window``); their
        media is handed to each call at the end of the batch, or
        earlier, just before anything else touches that call (``flush_call``). Every other
        frame, and every frame at which packet time ticks or leaps, goes through ``feed``."""
        n = len(batch)
        if len(self._v6_ids) > AddressIds.MAX:
            # A new table of IPv6 address ids (a spray of sources): no key of the old one is
            # held between batches but in the slot cache, which starts afresh with it.
            self._v6_ids = AddressIds()
            self._reset_slots()
        fx = (rtp_frames(batch.buf, batch.starts, batch.lens, batch.linktype, self._v6_ids,
                         tunnels=self.decoder.max_tunnel_depth >= 1)
              if n >= self.batch_min else None)
        if fx is None:
            for i in range(n):
                self._feed(int(batch.ts_ns[i]), batch.linktype, batch.frame(i))
            return
        self._batch, self._fx = batch, fx
        self._pending = _Pending(n)
        try:
            self._run_batch(batch, fx)
        finally:
            self._flush_all()
            self._batch = self._fx = None

    def _run_batch(self, batch: FrameBatch, fx: RtpFrames) -> None:
        n = len(batch)
        offset = None
        pos = 0
        window = RUN_WINDOW_MIN
        while pos < n:
            if offset != self.clock.offset_ns:
                # Packet time from here on (again after a clock jump re-based it): the running
                # maximum is engine time, where ticks fall and where time leaps (GAP_NS).
                offset = self.clock.offset_ns
                base = pos
                ts = batch.ts_ns[base:] + offset if offset else batch.ts_ns[base:]
                running = np.maximum.accumulate(np.maximum(ts, self.clock.now_ns))
                before = np.empty_like(running)
                before[0] = self.clock.now_ns
                before[1:] = running[:-1]
                leaps = (ts - before > GAP_NS) & (before != 0)
                # Windows hold RTP the batch path takes and signalling it can step over (_window);
                # anything else, and a leap in time, is fed on its own.
                bounds = np.flatnonzero(~(fx.cand[base:] | fx.safe[base:]) | leaps) + base
            k = int(np.searchsorted(bounds, pos))
            stop = int(bounds[k]) if k < len(bounds) else n
            tick_at = base + int(np.searchsorted(running, self.clock.next_tick_ns))
            if tick_at <= pos < stop:
                # Packet time reaches the next tick at this frame: run it as ``feed`` would, then
                # the frame goes on as any other.
                tick_ns = int(ts[pos - base])
                self._tick(tick_ns)
                self.clock.now_ns = tick_ns
                continue
            stop = min(stop, tick_at)
            if stop <= pos:
                # Frames only the full path handles: feed them one after another (feed runs
                # ticks and leaps itself).
                while k < len(bounds) and int(bounds[k]) == pos and offset == self.clock.offset_ns:
                    self._feed(int(batch.ts_ns[pos]), batch.linktype, batch.frame(pos))
                    pos += 1
                    k += 1
                continue
            end = min(stop, pos + window)
            self._window(fx, ts, running, base, pos, end)
            window = min(window * 2, RUN_WINDOW_MAX) if end < stop else window
            pos = end

    def _window(self, fx: RtpFrames, ts: np.ndarray, running: np.ndarray, base: int, a: int, b: int) -> None:
        """Frames [a, b) in order, as ``feed`` would take them one by one: the RTP (``cand``) is
        de-duplicated at once (its own table: nothing else in the window touches it) and
        routed; the signalling between (``safe``) and the RTP the full path must see (SLOW) are
        events, handled in order after everything before them has been committed (``_commit``).
        An event that changes the endpoint map, or a party's first packet, re-routes the rest."""
        batch = self._batch
        cand = a + np.flatnonzero(fx.cand[a:b])
        events = (a + np.flatnonzero(~fx.cand[a:b])).tolist()
        tunnel = fx.tunnel[cand]
        if tunnel.any():
            # As the decoder counts each tunnelled frame it decodes (copies included).
            for kind, counter in ((TUNNEL_VXLAN, "net.tunnel.vxlan"), (TUNNEL_GRE, "net.tunnel.gre")):
                found = int(np.count_nonzero(tunnel == kind))
                if found:
                    self.counters[counter] += found
        t = ts[cand - base]
        if self._dedup is not None and len(cand):
            dup = self._dedup.check_many(t, fx.dedup_key[cand])
            dups = int(np.count_nonzero(dup))
            if dups:
                self.counters["net.duplicate"] += dups     # the same frame mirrored twice
        else:
            dup = np.zeros(len(cand), dtype=bool)
        slots = np.empty(len(cand), dtype=np.int64)
        done = 0                                       # cand[:done] are committed
        routed = 0                                     # cand[:routed] are routed with the map as it is
        for p in events + [b]:
            upto = int(np.searchsorted(cand, p))
            while done < upto:
                if routed < upto:
                    slots[routed:upto] = self._route_run(fx, cand[routed:upto])
                    routed = upto
                slow = np.flatnonzero(slots[done:upto] == SLOW)
                stop = done + int(slow[0]) if len(slow) else upto
                if stop > done:
                    self._commit(fx, cand[done:stop], t[done:stop], dup[done:stop], slots[done:stop])
                done = stop
                if done < upto:                        # a frame feed() would take the full path with
                    i = int(cand[done])
                    self.clock.now_ns = max(self.clock.now_ns, int(running[i - base]))
                    self._decoder_clock(t[done:done + 1])
                    if not dup[done]:
                        self._dispatch(self._datagram(fx, i, int(t[done])))
                    done += 1
                    routed = done                      # its party is seen now: route the rest again
            if p < b:
                if p > base:
                    self.clock.now_ns = max(self.clock.now_ns, int(running[p - 1 - base]))
                version = self._endpoints.version
                self._feed(int(batch.ts_ns[p]), batch.linktype, batch.frame(p))
                if self._endpoints.version != version:
                    routed = done
        self.clock.now_ns = max(self.clock.now_ns, int(running[b - 1 - base]))

    def _sync_map(self) -> None:
        """The endpoint map as sorted packed keys with a slot per (call, sending side). Only the
        keys changed since the last look are replaced (a claim or a burst of endings costs
        what changed, in numpy, not a rebuild in Python)."""
        endpoints = self._endpoints
        if self._np_version == endpoints.version:
            return
        changed = endpoints.take_changed()
        packed = self._endpoints.packed
        if changed is None or self._np_version < 0:
            changed = packed.keys()
            keys = dst = src = np.zeros(0, dtype=np.int64)
        else:
            keys, dst, src = self._np_keys, self._np_dst_slot, self._np_src_slot
            if len(keys):
                keep = ~np.isin(keys, np.array([self._media_key(p) for p in changed], dtype=np.int64))
                keys, dst, src = keys[keep], dst[keep], src[keep]
        rows = [self._map_row(p, *packed[p]) for p in changed if p in packed]
        if rows:
            add = np.array(rows, dtype=np.int64).reshape(-1, 3)
            add = add[np.argsort(add[:, 0])]
            at = np.searchsorted(keys, add[:, 0])
            keys, dst, src = (np.insert(keys, at, add[:, 0]), np.insert(dst, at, add[:, 1]),
                              np.insert(src, at, add[:, 2]))
        self._np_keys, self._np_dst_slot, self._np_src_slot = keys, dst, src
        self._np_version = endpoints.version

    def _media_key(self, packed: bytes) -> int:
        """The int64 key ``rtp_frames`` computes for frames to or from this packed endpoint."""
        if len(packed) == 6:
            return int.from_bytes(packed, "big")
        return self._v6_ids.key(packed[:16], int.from_bytes(packed[16:], "big"))

    def _map_row(self, packed: bytes, call: Call, side: int) -> tuple[int, int, int]:
        """(key, slot of packets TO the endpoint, slot of packets FROM it): a packet to a side's
        endpoint was sent by the other side; one from it, by that side."""
        entry = (packed, id(call), side)
        row = self._entry_slots.get(entry)
        if row is None:
            row = self._entry_slots[entry] = (self._media_key(packed), self._slot(call, 1 - side),
                                              self._slot(call, side))
        return row

    def _slot(self, call: Call, side: Side) -> int:
        """The slot of packets sent by ``side`` of ``call``."""
        key = (id(call), side)
        slot = self._slot_of.get(key)
        if slot is None:
            slot = self._slot_of[key] = len(self._slots)
            self._slots.append((call, side))
            no = self._call_no.get(id(call))
            if no is None:
                no = self._call_no[id(call)] = len(self._calls_by_no)
                self._calls_by_no.append(call)
            if slot >= len(self._slot_call):
                grow = max(64, 2 * len(self._slot_call))
                self._slot_call = np.resize(self._slot_call, grow)
                self._slot_side = np.resize(self._slot_side, grow)
                self._slot_ready = np.resize(self._slot_ready, grow)
            self._slot_call[slot] = no
            self._slot_side[slot] = side
            self._slot_ready[slot] = call.parties[side].seen_endpoint is not None
        return slot

    def _route_run(self, fx: RtpFrames, idx: np.ndarray) -> np.ndarray:
        """The slot of every frame at ``idx``, HELD (-1) for RTP of no known endpoint (``feed``
        would hold it for its SDP), SLOW (-2) where ``feed`` must see it (its sender not seen
        yet: a party's first packet; or a SIP port). Routed by destination first, as
        ``MediaRouter.route`` does."""
        self._sync_map()
        keys = self._np_keys
        if not len(keys):
            return self._held_or_slow(fx, idx, np.full(len(idx), HELD, dtype=np.int64))
        last = len(keys) - 1
        dst = fx.dst_key[idx]
        i = np.minimum(np.searchsorted(keys, dst), last)
        slots = self._np_dst_slot[i]
        by_src = np.flatnonzero(keys[i] != dst)
        if len(by_src):
            # Not sent to a known endpoint (usually every packet is): by its source, else HELD.
            src = fx.src_key[idx[by_src]]
            j = np.minimum(np.searchsorted(keys, src), last)
            slots[by_src] = np.where(keys[j] == src, self._np_src_slot[j], HELD)
        known = slots >= 0
        slots[known & ~self._slot_ready[np.where(known, slots, 0)]] = SLOW
        return self._held_or_slow(fx, idx, slots)

    def _held_or_slow(self, fx: RtpFrames, idx: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """RTP of no known endpoint is held like ``_dispatch`` holds it, unless a SIP port makes
        the full path read it as SIP."""
        held = slots == HELD
        if held.any():
            sip_port = (np.isin(fx.dst_key[idx] & 0xFFFF, self._sip_ports_np)
                        | np.isin(fx.src_key[idx] & 0xFFFF, self._sip_ports_np))
            slots[held & sip_port] = SLOW
        return slots

    def _commit(self, fx: RtpFrames, idx: np.ndarray, ts: np.ndarray, dup: np.ndarray, slots: np.ndarray) -> None:
        """Routed frames (no SLOW among them), as ``feed`` would leave them: the decoder's clock
        ticked by those it decodes, copies dropped, RTP of no known endpoint held, each call's
        last media time noted; the media itself waits in the batch's pending list."""
        # Frames the full path would decode (tagged, cooked, held ones) tick the decoder's clock.
        decoded = fx.full_path[idx] | (slots == HELD)
        if decoded.any():
            self._decoder_clock(ts[decoded])
        if dup.any():
            keep = ~dup
            idx, slots, ts = idx[keep], slots[keep], ts[keep]
        held = slots == HELD
        if held.any():
            self._hold_run(fx, idx[held], ts[held])
            known = ~held
            idx, slots, ts = idx[known], slots[known], ts[known]
        if not len(idx):
            return
        # Each call's last packet here (the per-packet path leaves its time, in arrival order).
        by_no = self._calls_by_no
        calls = self._slot_call[slots]
        last_at = np.full(len(by_no), -1, dtype=np.int64)
        np.maximum.at(last_at, calls, np.arange(len(slots)))
        touched_np = np.flatnonzero(last_at >= 0)
        touched = touched_np.tolist()
        for no, t in zip(touched, ts[last_at[touched_np]].tolist()):
            by_no[no].last_media_ns = t
        self._pending.calls_in.update(touched)
        self._pending.add(idx, slots, ts, calls)

    def _datagram(self, fx: RtpFrames, i: int, ts_ns: int) -> Datagram:
        """Frame ``i`` of the batch (a candidate) as the decoder would hand it on."""
        batch = self._batch
        buf = batch.buf
        at = int(batch.starts[i])
        start = at + int(fx.payload_at[i])
        src, dst = int(fx.src_key[i]), int(fx.dst_key[i])
        end = at + int(batch.lens[i])
        if fx.tunnel[i]:
            # Inside a tunnel the inner Ethernet header is what was on the mirrored wire.
            l2 = parse_link(LINKTYPE_ETHERNET, buf[at + int(fx.l2_at[i]):end], self.counters)
        else:
            l2 = parse_link(batch.linktype, buf[at:end], self.counters)
        _, _, _, src_mac, dst_mac, vlans = l2      # rtp_frames took it: the link layer reads
        text = self._key_ip
        return Datagram(ts_ns, text(src), src & 0xFFFF, text(dst), dst & 0xFFFF, UDP,
                        buf[start:start + int(fx.udp_len[i]) - 8], src_mac, dst_mac, vlans)

    def _hold_run(self, fx: RtpFrames, idx: np.ndarray, ts: np.ndarray) -> None:
        """RTP of no known endpoint, held as ``_dispatch`` holds it (``_hold_rtp``): the same
        datagrams the decoder would have made."""
        for i, t in zip(idx.tolist(), ts.tolist()):
            self._hold(self._datagram(fx, i, t))

    def _decoder_clock(self, ts: np.ndarray) -> None:
        """Tagged frames go through FrameDecoder.decode frame by frame, which expires stale
        fragments and TCP flows when packet time passes its next expiry: do the same here."""
        decoder = self.decoder
        while len(ts):
            due = np.flatnonzero(ts >= decoder.next_expire_ns)
            if not len(due):
                return
            decoder.expire(int(ts[due[0]]))
            ts = ts[due[0] + 1:]

    def flush_call(self, call: Call) -> None:
        """Hand ``call`` its routed batch packets now: something else is about to touch it."""
        no = self._call_no.get(id(call))
        if no is None:
            return
        mine = self._pending.take(no)
        if mine is not None:
            self._apply(*mine)

    def _flush_all(self) -> None:
        left = self._pending.take_all()
        if left is not None:
            self._apply(*left)
        if len(self._slots) > SLOTS_MAX + 4 * len(self._endpoints):
            # Nothing is pending: start the slot table afresh (it holds ended calls too), when
            # ended calls fill most of it (so the rebuild costs O(1) per call routed).
            self._reset_slots()

    def _apply(self, idx: np.ndarray, slots: np.ndarray, ts: np.ndarray) -> None:
        """Routed packets (batch positions, arrival order) into their calls' media, as
        ``MediaRouter.deliver`` would have, one call at a time (its groups: one per direction)."""
        self.packets_routed += len(idx)
        group_key = self._slot_call[slots] * 2 + self._slot_side[slots]
        order = np.argsort(group_key, kind="stable")
        idx, group_key, arrival = idx[order], group_key[order], ts[order]
        starts = np.flatnonzero(np.diff(group_key, prepend=-1))
        fx, batch = self._fx, self._batch
        run = RtpRun(order=idx, side=group_key & 1, arrival_ns=arrival, src_key=fx.src_key[idx],
                     dst_key=fx.dst_key[idx], b0=fx.b0[idx], b1=fx.b1[idx], seq=fx.seq[idx],
                     rtp_ts=fx.rtp_ts[idx], ssrc=fx.ssrc[idx], size=fx.udp_len[idx] - 8, buf=batch.buf,
                     data_start=batch.starts[idx] + fx.payload_at[idx], dst_known=np.ones(len(idx), dtype=bool), label=self._label)
        groups = RunGroups(run, starts)
        call_of = (group_key[starts] >> 1).tolist()
        by_no = self._calls_by_no
        not_rtp = 0
        # What each kind of media planned to take for all its calls at once: its accept_later
        # (one function per media class) -> the plans of its take_groups.
        later: dict[Callable[[RunGroups, list], None], list] = {}
        g, count = 0, len(call_of)
        while g < count:
            h = g + 1
            while h < count and call_of[h] == call_of[g]:
                h += 1
            media = self._media_of(by_no[call_of[g]])
            if media is not None:
                if groups.end[h - 1] - groups.start[g] < BULK_MIN_PACKETS:
                    # A few packets (a live ring block holds ~100 ms): one by one is cheaper.
                    not_rtp += run.each(media.on_rtp, groups.positions(g, h))
                else:
                    not_rtp += media.take_groups(groups, g, h, later.setdefault(media.accept_later, []))
            g = h
        for accept_later, plans in later.items():
            if plans:
                accept_later(groups, plans)
        if not_rtp:
            self.counters["rtp.skip.not_rtp"] += not_rtp

    def _reset_slots(self) -> None:
        self.slot_table_resets += 1
        self._pending = _Pending()                 # routed, not yet handed over (feed_batch sizes it)
        self._slots: list[tuple[Call, int]] = []
        self._slot_of: dict[tuple[int, int], int] = {}
        self._call_no: dict[int, int] = {}
        self._calls_by_no: list[Call] = []
        self._slot_call = np.zeros(0, dtype=np.int64)
        self._slot_side = np.zeros(0, dtype=np.int64)
        self._slot_ready = np.zeros(0, dtype=bool)
        self._entry_slots: dict[tuple[bytes, int, int], tuple[int, int, int]] = {}
        self._key_labels: dict[int, str] = {}
        self._np_version = -1

    def _label(self, key: int) -> str:
        """"ip:port" of a packed key: what EndpointMap labels it, and what the full path prints."""
        label = self._key_labels.get(key)
        if label is None:
            if len(self._key_labels) > 100_000:
                self._key_labels.clear()
            label = self._key_labels[key] = f"{self._key_ip(key)}:{key & 0xFFFF}"
        return label

    def _key_ip(self, key: int) -> str:
        """The address of a packed key as the decoder writes it."""
        if key & V6_KEY:
            return self.decoder.ip_text(self._v6_ids.raw[(key & ~V6_KEY) >> 16])
        return self.decoder.ip_text((key >> 16).to_bytes(4, "big"))


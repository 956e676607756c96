"""The engine: wires frames → datagrams → SIP / RTP → calls → finished calls.

One engine serves replay and live capture: both feed it batches of frames
(``feed_batch``; ``feed`` takes one ``(ts_ns, linktype, frame)``, and is what a batch
must be equal to), and it runs every timeout on packet time. It does no rendering,
spooling or HTTP: each ended call is handed to ``on_finished`` as a
:class:`FinishedCall` (record + media log + stream specs), and the caller decides what
happens next.

The RTP fast path works on a batch at a time: numpy reads every frame's fields
(``net/fastpath.py``), windows of RTP are de-duplicated and routed on the endpoint
map's packed ``ip:port`` keys (``_window``), and each call's packets are handed to its
media (``MediaCapture``: an append to the raw log; sequencing runs when the call has
ended) as arrays (``media/runs.py``). Everything else (SIP, SDP, timeouts) goes frame
by frame through ``feed`` and is written for clarity.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.calls.call import CALLEE, CALLER, Call
from agent.capture.batches import FrameBatch
from agent.calls.end_reason import EndReason
from agent.calls.endpoints import EndpointMap
from agent.calls.legs import ConversationGrouper
from agent.calls.macs import MacTable
from agent.calls.record import build_record, merge_dtmf_presses, presses_from_events
from agent.calls.tracker import CallEnded, CallTracker, EndpointClaimed
from agent.config import Config
from agent.counters import new_counters
from agent.errors import ParseError
from agent.media.timeline import CodecInfo, StreamSpec
from agent.media.runs import RtpRun, RunGroups
from agent.media.stream import CallMedia, MediaCapture, MediaPlan, sequence_capture
from agent.net.datagram import TCP, UDP, Datagram
from agent.net.decode import FrameDecoder
from agent.net.fastpath import TUNNEL_GRE, TUNNEL_VXLAN, V6_KEY, AddressIds, RtpFrames, rtp_frames
from agent.net.link import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, VLAN_TPIDS
from agent.net.dedup import looks_like_rtp, rtp_key
from agent.sip.framing import SipStreamFramer
from agent.sip.message import looks_like_sip, parse_message

log = logging.getLogger(__name__)

NS = 1_000_000_000
TICK_NS = NS                       # timeouts are checked once per second of packet time
PENDING_RTP_NS = 2 * NS            # RTP held while its SDP may still be on the way
PENDING_RTP_MAX = 20_000
TCP_FLOWS_MAX = 10_000
TCP_FLOW_IDLE_NS = 300 * NS
SIP_TLS_PORT = 5061
# Packet time that leaps further than this is either a quiet spell or a clock jump; the
# first packet after it decides which (see _after_gap).
GAP_NS = 3600 * NS
DISK_CHECK_S = 2.0                 # how often free space is looked at (wall clock: disks are real)
# Batches (feed_batch): smaller ones are fed frame by frame; runs are routed in windows that
# grow while they route cleanly; the slot table starts afresh above SLOTS_MAX entries.
BATCH_MIN = 64
RUN_WINDOW_MIN = 256
RUN_WINDOW_MAX = 16_384
SLOTS_MAX = 4096
BULK_MIN_PACKETS = 24              # a call's packets in a batch below this go one by one
HELD = -1                          # _route_run: RTP of no known endpoint (held for its SDP)
SLOW = -2                          # _route_run: a frame feed() must handle itself


@dataclass(slots=True)
class FinishedCall:
    call: Call
    record: dict[str, Any]
    media_log: Path | None          # the ordered media log, or the raw one when media_plan is set
    streams: list[StreamSpec] = field(default_factory=list)
    media_plan: MediaPlan | None = None   # set: media not sequenced yet (see complete_media)


class Engine:
    def __init__(self, config: Config, on_finished: Callable[[FinishedCall], None], *,
                 counters=None, workdir: Path | None = None,
                 grouper: ConversationGrouper | None = None, defer_media: bool = False,
                 keep_audio: bool = True) -> None:
        self.config = config
        # defer_media: FinishedCall carries the raw media log + a MediaPlan and the consumer
        # (the recorder's worker processes) sequences it; else records are complete here.
        self.defer_media = defer_media
        # keep_audio False (inspect): RTP is sequenced as it arrives into counters only; no
        # media log is written at all and FinishedCall.media_log is None.
        self.keep_audio = keep_audio
        self.counters = counters if counters is not None else new_counters()
        self.on_finished = on_finished
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="calln-work-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.decoder = FrameDecoder(self.counters)
        # The media map: this engine routes packets with it, the tracker claims and releases.
        self._endpoints = EndpointMap()
        self.tracker = CallTracker(config.sip, self.counters, self._endpoints)
        self.macs = MacTable(router_ip_threshold=config.sip.router_mac_ip_threshold,
                             l2_networks=config.sip.l2_networks, mac_format=config.sip.mac_format)
        self.sip_ports = frozenset(config.capture.sip_ports)
        self._sip_ports_np = np.array(sorted(self.sip_ports), dtype=np.int64)
        self._packed = self._endpoints.packed
        self._labels = self._endpoints.labels
        self._dedup = self.decoder.dedup_rtp       # RTP's own table (see FrameDecoder)
        # [legs edit] PBX legs: finished dialogs pass through the conversation grouper
        # (agent/calls/legs.py), which links them and marks the legs not to upload.
        self.grouper = grouper if grouper is not None else ConversationGrouper(
            config.sip, live=self.tracker.calls, counters=self.counters)
        self._batch: FrameBatch | None = None     # the batch being fed (feed_batch)
        self._fx: RtpFrames | None = None
        self._np_keys = np.zeros(0, dtype=np.int64)
        self._np_dst_slot = self._np_src_slot = self._np_keys
        self._v6_ids = AddressIds()           # IPv6 addresses as small ids in media keys
        self._reset_slots()
        self._pending_rtp: deque[Datagram] = deque()
        self._tcp_framers: dict[tuple[str, int, str, int], SipStreamFramer | None] = {}
        self._tcp_last_ns: dict[tuple[str, int, str, int], int] = {}
        self._next_tick_ns = 0
        self._media_seq = 0
        self._offset_ns = 0                 # correction after clock jumps (see _after_gap)
        self._disk_checked_at = float("-inf")
        self._disk_low = False
        self.now_ns = 0

    # ------------------------------------------------------------------ input

    def feed(self, ts_ns: int, linktype: int, frame: bytes) -> None:
        # Engine time never runs backwards (interfaces interleave slightly out of order;
        # backward clock jumps inside a file are re-based by the capture reader).
        ts_ns += self._offset_ns
        if ts_ns > self.now_ns:
            if ts_ns - self.now_ns > GAP_NS and self.now_ns:
                self._after_gap(ts_ns, linktype, frame)
                return
            if ts_ns >= self._next_tick_ns:
                self._tick(ts_ns)
            self.now_ns = ts_ns
        # The fused RTP fast path: Ethernet II / IPv4 without options / UDP, unfragmented, to or
        # from a known media endpoint whose sender was already seen (first packets take the full
        # path for MAC and latching). No Datagram, no text addresses; identical semantics.
        if (linktype == 1 and len(frame) >= 42 and frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45
                and frame[23] == 17 and not (frame[20] & 0x3F or frame[21])):
            total = (frame[16] << 8) | frame[17]
            if 28 <= total <= len(frame) - 14:
                packed = self._packed
                dst_key = frame[30:34] + frame[36:38]
                hit = packed.get(dst_key)
                if hit is not None:
                    sender = 1 - hit[1]
                else:
                    hit = packed.get(frame[26:30] + frame[34:36])
                    sender = hit[1] if hit is not None else 0
                if hit is not None:
                    call = hit[0]
                    if call.parties[sender].seen_endpoint is not None and self._fast_media(
                            call, sender, ts_ns, frame, total, dst_key):
                        return
        dgram = self.decoder.decode(ts_ns, linktype, frame)
        if dgram is not None:
            self._dispatch(dgram)

    def _after_gap(self, ts_ns: int, linktype: int, frame: bytes) -> None:
        """Packet time leapt forward by more than GAP_NS. If the packet continues a call in
        progress, no call lasts through an hour of total silence on the tap: it is the
        capture clock that jumped, and time is re-based to continue 1 ms on (no call ends
        wrongly, no giant silence). Otherwise it was a quiet spell: time really passed, and
        the timeouts run at the new time before the packet is handled."""
        dgram = self.decoder.decode(ts_ns, linktype, frame)
        if dgram is not None and self._continues_a_call(dgram):
            corrected = self.now_ns + 1_000_000
            self._offset_ns += corrected - ts_ns
            self.counters["capture.clock_jumps"] += 1
            log.warning("capture clock jumped %+.0f s inside call traffic; re-basing packet time",
                        (ts_ns - corrected) / NS)
            dgram.ts_ns = ts_ns = corrected
        else:
            self._tick(ts_ns)
        self.now_ns = ts_ns
        if dgram is not None:
            self._dispatch(dgram)

    def _continues_a_call(self, dgram: Datagram) -> bool:
        if (dgram.dst_ip, dgram.dst_port) in self._endpoints or (dgram.src_ip, dgram.src_port) in self._endpoints:
            return True
        if dgram.transport == TCP or not looks_like_sip(dgram.payload):
            return False
        try:
            return self.tracker.knows(parse_message(bytes(dgram.payload)).call_id)
        except ParseError:
            return False

    # ------------------------------------------------------------------ batches

    def feed_batch(self, batch: FrameBatch) -> None:
        """Feed every frame of ``batch`` in order, with the same result as ``feed`` frame by frame.

        Runs of plain RTP frames to or from known media endpoints (the bulk of a SPAN port)
        are de-duplicated and routed with numpy a window at a time (``_window``); their
        media is handed to each call at the end of the batch, or
        earlier, just before anything else touches that call (``_flush_call``). Every other
        frame, and every frame at which packet time ticks or leaps, goes through ``feed``."""
        n = len(batch)
        if len(self._v6_ids) > AddressIds.MAX:
            # A new table of IPv6 address ids (a spray of sources): no key of the old one is
            # held between batches but in the slot cache, which starts afresh with it.
            self._v6_ids = AddressIds()
            self._reset_slots()
        fx = (rtp_frames(batch.buf, batch.starts, batch.lens, batch.linktype, self._v6_ids,
                         tunnels=self.decoder.max_tunnel_depth >= 1)
              if n >= BATCH_MIN else None)
        if fx is None:
            for i in range(n):
                self.feed(int(batch.ts_ns[i]), batch.linktype, batch.frame(i))
            return
        self._batch, self._fx = batch, fx
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
            if offset != self._offset_ns:
                # Packet time from here on (again after a clock jump re-based it): the running
                # maximum is engine time, where ticks fall and where time leaps (GAP_NS).
                offset = self._offset_ns
                base = pos
                ts = batch.ts_ns[base:] + offset if offset else batch.ts_ns[base:]
                running = np.maximum.accumulate(np.maximum(ts, self.now_ns))
                before = np.empty_like(running)
                before[0] = self.now_ns
                before[1:] = running[:-1]
                leaps = (ts - before > GAP_NS) & (before != 0)
                # Windows hold RTP the batch path takes and signalling it can step over (_window);
                # anything else, and a leap in time, is fed on its own.
                bounds = np.flatnonzero(~(fx.cand[base:] | fx.safe[base:]) | leaps) + base
            k = int(np.searchsorted(bounds, pos))
            stop = int(bounds[k]) if k < len(bounds) else n
            tick_at = base + int(np.searchsorted(running, self._next_tick_ns))
            if tick_at <= pos < stop:
                # Packet time reaches the next tick at this frame: run it as ``feed`` would, then
                # the frame goes on as any other.
                tick_ns = int(ts[pos - base])
                self._tick(tick_ns)
                self.now_ns = tick_ns
                continue
            stop = min(stop, tick_at)
            if stop <= pos:
                # Frames only the full path handles: feed them one after another (feed runs
                # ticks and leaps itself).
                while k < len(bounds) and int(bounds[k]) == pos and offset == self._offset_ns:
                    self.feed(int(batch.ts_ns[pos]), batch.linktype, batch.frame(pos))
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
        by_dst = np.empty(len(cand), dtype=bool)
        done = 0                                       # cand[:done] are committed
        routed = 0                                     # cand[:routed] are routed with the map as it is
        for p in events + [b]:
            upto = int(np.searchsorted(cand, p))
            while done < upto:
                if routed < upto:
                    slots[routed:upto], by_dst[routed:upto] = self._route_run(fx, cand[routed:upto])
                    routed = upto
                slow = np.flatnonzero(slots[done:upto] == SLOW)
                stop = done + int(slow[0]) if len(slow) else upto
                if stop > done:
                    self._commit(fx, cand[done:stop], t[done:stop], dup[done:stop], slots[done:stop],
                                 by_dst[done:stop])
                done = stop
                if done < upto:                        # a frame feed() would take the full path with
                    i = int(cand[done])
                    self.now_ns = max(self.now_ns, int(running[i - base]))
                    self._decoder_clock(t[done:done + 1])
                    if not dup[done]:
                        self._dispatch(self._datagram(fx, i, int(t[done])))
                    done += 1
                    routed = done                      # its party is seen now: route the rest again
            if p < b:
                if p > base:
                    self.now_ns = max(self.now_ns, int(running[p - 1 - base]))
                version = self._endpoints.version
                self.feed(int(batch.ts_ns[p]), batch.linktype, batch.frame(p))
                if self._endpoints.version != version:
                    routed = done
        self.now_ns = max(self.now_ns, int(running[b - 1 - base]))

    def _sync_map(self) -> None:
        """The endpoint map as sorted packed keys with a slot per (call, sending side). Only the
        keys changed since the last look are replaced (a claim or a burst of endings costs
        what changed, in numpy, not a rebuild in Python)."""
        endpoints = self._endpoints
        if self._np_version == endpoints.version:
            return
        changed = endpoints.take_changed()
        packed = self._packed
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

    def _slot(self, call: Call, sender: int) -> int:
        key = (id(call), sender)
        slot = self._slot_of.get(key)
        if slot is None:
            slot = self._slot_of[key] = len(self._slots)
            self._slots.append((call, sender))
            no = self._call_no.get(id(call))
            if no is None:
                no = self._call_no[id(call)] = len(self._calls_by_no)
                self._calls_by_no.append(call)
            if slot >= len(self._slot_call):
                grow = max(64, 2 * len(self._slot_call))
                self._slot_call = np.resize(self._slot_call, grow)
                self._slot_sender = np.resize(self._slot_sender, grow)
                self._slot_ready = np.resize(self._slot_ready, grow)
            self._slot_call[slot] = no
            self._slot_sender[slot] = sender
            self._slot_ready[slot] = call.parties[sender].seen_endpoint is not None
        return slot

    def _route_run(self, fx: RtpFrames, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slot of every frame at ``idx``, HELD (-1) for RTP of no known endpoint (``feed``
        would hold it for its SDP), SLOW (-2) where ``feed`` takes the full path to ``_media``
        or ``_sip_bytes`` (its sender not seen yet: a party's first packet; or a SIP port); and
        whether it was routed by its destination or its source."""
        self._sync_map()
        keys = self._np_keys
        if not len(keys):
            return self._held_or_slow(fx, idx, np.full(len(idx), HELD, dtype=np.int64)), np.zeros(len(idx), dtype=bool)
        last = len(keys) - 1
        dst = fx.dst_key[idx]
        i = np.minimum(np.searchsorted(keys, dst), last)
        src = fx.src_key[idx]
        j = np.minimum(np.searchsorted(keys, src), last)
        by_dst = keys[i] == dst
        slots = np.where(by_dst, self._np_dst_slot[i], np.where(keys[j] == src, self._np_src_slot[j], -1))
        # A frame feed() decodes fully (tagged, cooked) reaches _media, which always names its destination.
        by_dst |= fx.full_path[idx]
        known = slots >= 0
        slots[known & ~self._slot_ready[np.where(known, slots, 0)]] = SLOW
        return self._held_or_slow(fx, idx, slots), by_dst

    def _held_or_slow(self, fx: RtpFrames, idx: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """RTP of no known endpoint is held like ``_dispatch`` holds it, unless a SIP port makes
        the full path read it as SIP."""
        held = slots == HELD
        if held.any():
            sip_port = (np.isin(fx.dst_key[idx] & 0xFFFF, self._sip_ports_np)
                        | np.isin(fx.src_key[idx] & 0xFFFF, self._sip_ports_np))
            slots[held & sip_port] = SLOW
        return slots

    def _commit(self, fx: RtpFrames, idx: np.ndarray, ts: np.ndarray, dup: np.ndarray, slots: np.ndarray,
                by_dst: np.ndarray) -> None:
        """Routed frames (no SLOW among them), as ``feed`` would leave them: the decoder's clock
        ticked by those it decodes, copies dropped, RTP of no known endpoint held, each call's
        last media time noted; the media itself waits in the batch's pending list."""
        # Frames the full path would decode (tagged, cooked, held ones) tick the decoder's clock.
        decoded = fx.full_path[idx] | (slots == HELD)
        if decoded.any():
            self._decoder_clock(ts[decoded])
        if dup.any():
            keep = ~dup
            idx, slots, by_dst, ts = idx[keep], slots[keep], by_dst[keep], ts[keep]
        held = slots == HELD
        if held.any():
            self._hold_run(fx, idx[held], ts[held])
            known = ~held
            idx, slots, by_dst, ts = idx[known], slots[known], by_dst[known], ts[known]
        if not len(idx):
            return
        calls = self._slot_call[slots]
        last_rev, first = np.unique(calls[::-1], return_index=True)
        by_no = self._calls_by_no
        touched = last_rev.tolist()
        for no, t in zip(touched, ts[len(ts) - 1 - first].tolist()):
            by_no[no].last_media_ns = t
        self._pending_calls.update(touched)
        self._pending.append((idx, slots, by_dst, ts))

    def _datagram(self, fx: RtpFrames, i: int, ts_ns: int) -> Datagram:
        """Frame ``i`` of the batch (a candidate) as the decoder would hand it on."""
        batch = self._batch
        buf = batch.buf
        at = int(batch.starts[i])
        start = at + int(fx.payload_at[i])
        src, dst = int(fx.src_key[i]), int(fx.dst_key[i])
        if fx.tunnel[i]:
            # Inside a tunnel the inner Ethernet header is what was on the mirrored wire.
            src_mac, dst_mac, vlans = _l2_facts(buf, at + int(fx.l2_at[i]), LINKTYPE_ETHERNET, True)
        else:
            src_mac, dst_mac, vlans = _l2_facts(buf, at, batch.linktype, bool(fx.full_path[i]))
        text = self._key_ip
        return Datagram(ts_ns, text(src), src & 0xFFFF, text(dst), dst & 0xFFFF, UDP,
                        buf[start:start + int(fx.udp_len[i]) - 8], src_mac, dst_mac, vlans)

    def _hold_run(self, fx: RtpFrames, idx: np.ndarray, ts: np.ndarray) -> None:
        """RTP of no known endpoint, held as ``_dispatch`` holds it (``_hold_rtp``): the same
        datagrams the decoder would have made."""
        for i, t in zip(idx.tolist(), ts.tolist()):
            self._hold_rtp(self._datagram(fx, i, t))

    def _decoder_clock(self, ts: np.ndarray) -> None:
        """Tagged frames go through FrameDecoder.decode frame by frame, which expires stale
        fragments and TCP flows when packet time passes its next expiry: do the same here."""
        decoder = self.decoder
        while len(ts):
            due = np.flatnonzero(ts >= decoder._next_expire_ns)
            if not len(due):
                return
            decoder.expire(int(ts[due[0]]))
            ts = ts[due[0] + 1:]

    def _take_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        pending = self._pending
        if len(pending) == 1:
            return pending[0]
        merged = tuple(np.concatenate([p[k] for p in pending]) for k in range(4))
        self._pending = [merged]
        return merged

    def _flush_call(self, call: Call) -> None:
        """Hand ``call`` its routed batch packets now: something else is about to touch it."""
        no = self._call_no.get(id(call))
        if no is None or no not in self._pending_calls:
            return
        self._pending_calls.discard(no)
        idx, slots, by_dst, ts = self._take_pending()
        mine = self._slot_call[slots] == no
        if not mine.any():
            return
        rest = ~mine
        if rest.any():
            self._pending = [(idx[rest], slots[rest], by_dst[rest], ts[rest])]
        else:
            self._pending = []
            self._pending_calls.clear()
        self._apply(idx[mine], slots[mine], by_dst[mine], ts[mine])

    def _flush_all(self) -> None:
        if self._pending:
            idx, slots, by_dst, ts = self._take_pending()
            self._pending = []
            self._pending_calls.clear()
            self._apply(idx, slots, by_dst, ts)
        if len(self._slots) > SLOTS_MAX + 4 * len(self._endpoints):
            # Nothing is pending: start the slot table afresh (it holds ended calls too), when
            # ended calls fill most of it (so the rebuild costs O(1) per call routed).
            self._reset_slots()

    def _apply(self, idx: np.ndarray, slots: np.ndarray, by_dst: np.ndarray, ts: np.ndarray) -> None:
        """Routed packets (batch positions, arrival order) into their calls' media, as
        ``_fast_media`` would have, one call at a time (its groups: one per direction)."""
        group_key = self._slot_call[slots] * 2 + self._slot_sender[slots]
        order = np.argsort(group_key, kind="stable")
        idx, group_key, by_dst, arrival = idx[order], group_key[order], by_dst[order], ts[order]
        starts = np.flatnonzero(np.diff(group_key, prepend=-1))
        fx, batch = self._fx, self._batch
        run = RtpRun(order=idx, direction=group_key & 1, arrival_ns=arrival, src_key=fx.src_key[idx],
                     dst_key=fx.dst_key[idx], b0=fx.b0[idx], b1=fx.b1[idx], seq=fx.seq[idx],
                     rtp_ts=fx.rtp_ts[idx], ssrc=fx.ssrc[idx], size=fx.udp_len[idx] - 8, buf=batch.buf,
                     data_start=batch.starts[idx] + fx.payload_at[idx], dst_known=by_dst, label=self._label)
        groups = RunGroups(run, starts)
        call_of = (group_key[starts] >> 1).tolist()
        by_no = self._calls_by_no
        not_rtp = 0
        later: list = []
        g, count = 0, len(call_of)
        while g < count:
            h = g + 1
            while h < count and call_of[h] == call_of[g]:
                h += 1
            media = by_no[call_of[g]].media
            if media is not None:
                if groups.end[h - 1] - groups.start[g] < BULK_MIN_PACKETS:
                    # A few packets (a live ring block holds ~100 ms): one by one is cheaper.
                    not_rtp += run.each(media.on_rtp, groups.positions(g, h))
                else:
                    not_rtp += media.take_groups(groups, g, h, later)
            g = h
        if later:
            CallMedia.accept_later(groups, later)
        if not_rtp:
            self.counters["rtp.skip.not_rtp"] += not_rtp

    def _reset_slots(self) -> None:
        # Routed, not yet handed over: (batch positions, slots, routed by destination, packet time)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_calls: set[int] = set()     # numbers of the calls with packets in _pending
        self._slots: list[tuple[Call, int]] = []
        self._slot_of: dict[tuple[int, int], int] = {}
        self._call_no: dict[int, int] = {}
        self._calls_by_no: list[Call] = []
        self._slot_call = np.zeros(0, dtype=np.int64)
        self._slot_sender = np.zeros(0, dtype=np.int64)
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

    def _dispatch(self, dgram: Datagram) -> None:
        if dgram.transport == TCP:
            self._tcp(dgram)
            return
        if self._route_media(dgram):
            return
        payload = dgram.payload
        if dgram.dst_port in self.sip_ports or dgram.src_port in self.sip_ports or looks_like_sip(payload):
            self._sip_bytes(payload, dgram, stream=False)
        elif len(payload) >= 12 and payload[0] & 0xC0 == 0x80:
            self._hold_rtp(dgram)
        else:
            self.counters["udp.unmatched"] += 1

    def _route_media(self, dgram: Datagram) -> bool:
        """Hand RTP to its call: a packet TO a side's endpoint was sent by the other side, one
        FROM a side's endpoint by that side (destination first: it survives NAT latching)."""
        endpoints = self._endpoints
        hit = endpoints.get((dgram.dst_ip, dgram.dst_port))
        if hit is not None:
            self._media(hit[0], 1 - hit[1], dgram)
            return True
        hit = endpoints.get((dgram.src_ip, dgram.src_port))
        if hit is not None:
            self._media(hit[0], hit[1], dgram)
            return True
        return False

    def _fast_media(self, call: Call, sender: int, ts_ns: int, frame: bytes, total: int,
                    dst_key: bytes) -> bool:
        """RTP of a known call straight from the frame. False: let the full path decide."""
        ulen = (frame[38] << 8) | frame[39]
        if not 8 <= ulen <= total - 20:
            return False
        if self._pending:
            self._flush_call(call)
        end = 34 + ulen
        rtp = looks_like_rtp(frame[42:end])
        dedup = self._dedup if rtp else self.decoder.dedup
        if dedup is not None and dedup.is_duplicate(
                ts_ns, rtp_key((frame[18] << 8) | frame[19], frame[26:30], frame[30:34], frame[34:end]) if rtp
                else hash(((frame[18] << 8) | frame[19], frame[26:34], frame[34:end]))):
            self.counters["net.duplicate"] += 1    # the same frame mirrored twice
            return True
        call.last_media_ns = ts_ns
        media = call.media
        if media is not None:
            labels = self._labels
            src = labels.get(frame[26:30] + frame[34:36]) or "{}:{}".format(
                socket.inet_ntoa(frame[26:30]), (frame[34] << 8) | frame[35])
            if not media.on_rtp(sender, ts_ns, src, labels.get(dst_key, ""), frame[42:end]):
                self.counters["rtp.skip.not_rtp"] += 1
        return True

    def _media(self, call: Call, sender: int, dgram: Datagram) -> None:
        if self._pending:
            self._flush_call(call)
        party = call.parties[sender]
        if party.seen_endpoint is None:
            self.macs.observe(dgram.src_mac, dgram.src_ip)
            self.tracker.on_media(call, sender, dgram.ts_ns, (dgram.src_ip, dgram.src_port), dgram.src_mac)
            slot = self._slot_of.get((id(call), sender))
            if slot is not None:
                self._slot_ready[slot] = True      # the batch path may take its packets now
        else:
            call.last_media_ns = dgram.ts_ns
        media = call.media
        if media is not None:
            if not media.on_rtp(sender, dgram.ts_ns, f"{dgram.src_ip}:{dgram.src_port}",
                                f"{dgram.dst_ip}:{dgram.dst_port}", dgram.payload):
                self.counters["rtp.skip.not_rtp"] += 1

    def _hold_rtp(self, dgram: Datagram) -> None:
        """Keep RTP with no call yet for ~2 s: its SDP may arrive just after it."""
        pending = self._pending_rtp
        pending.append(dgram)
        if len(pending) > PENDING_RTP_MAX:
            pending.popleft()
            self.counters["rtp.pending_overflow"] += 1

    def _tcp(self, dgram: Datagram) -> None:
        flow = (dgram.src_ip, dgram.src_port, dgram.dst_ip, dgram.dst_port)
        framers = self._tcp_framers
        framer = framers.get(flow, False)
        if framer is False:
            if self._may_carry_sip(dgram):
                framer = SipStreamFramer()          # it decides: SIP, WebSocket, TLS or neither
            else:
                framer = None                   # not SIP: remember, so we do not look again
                self.counters["tcp.not_sip_flows"] += 1
            if len(framers) >= TCP_FLOWS_MAX:
                self._expire_tcp(self.now_ns, force=True)
            framers[flow] = framer
        self._tcp_last_ns[flow] = dgram.ts_ns
        if framer is None:
            return
        kind_before = framer.kind
        for message in framer.feed(dgram.payload):
            self._sip_bytes(message, dgram, stream=True)
        if framer.kind != kind_before:                  # recognised: count each flow once
            if framer.kind == "tls":
                self.counters["sip.undecodable.tls_flows"] += 1     # calls the agent cannot see
            elif framer.kind == "websocket":
                self.counters["sip.websocket_flows"] += 1           # decoded by the framer
            elif framer.kind == "unknown":
                framers[flow] = None                    # not SIP after all: stop looking
                self.counters["tcp.not_sip_flows"] += 1

    def _may_carry_sip(self, dgram: Datagram) -> bool:
        """A new TCP flow worth a SIP framer: a SIP port (or SIP-over-TLS 5061), SIP bytes, or a
        WebSocket upgrade (SIP over WebSocket runs on any web port)."""
        ports = self.sip_ports
        if dgram.dst_port in ports or dgram.src_port in ports or SIP_TLS_PORT in (dgram.dst_port, dgram.src_port):
            return True
        payload = dgram.payload
        if looks_like_sip(payload):
            return True
        return payload[:4] == b"GET " and b"websocket" in bytes(payload[:4096]).lower()

    def _sip_bytes(self, data: bytes, dgram: Datagram, *, stream: bool) -> None:
        try:
            msg = parse_message(bytes(data), stream=stream)
        except ParseError:
            self.counters["sip.skip.malformed"] += 1
            return
        self.counters["sip.messages"] += 1
        if self._pending and msg.body:
            # A body may change the codec map its media is read with: its media so far first.
            # (A message that ends the call flushes in _finish; a new endpoint in _on_event.)
            known = self.tracker.calls.get(msg.call_id)
            if known is not None:
                self._flush_call(known)
        self.macs.observe(dgram.src_mac, dgram.src_ip)
        for event in self.tracker.on_sip(msg, dgram):
            self._on_event(event)

    # ------------------------------------------------------------------ events

    def _on_event(self, event) -> None:
        if isinstance(event, EndpointClaimed):
            call = event.call
            if self._pending and call.media is None:
                self._flush_call(call)
            if call.media is None:
                call.media = self._new_media(call, write_audio=self._disk_has_room())
            self._replay_pending(event.endpoint)
        elif isinstance(event, CallEnded):
            self._finish(event.call)

    def _disk_has_room(self) -> bool:
        """Below ``[spool] min_free_mb`` no new call starts writing audio: signalling is still
        recorded, the spool is never endangered. Checked at most every DISK_CHECK_S."""
        now = time.monotonic()
        if now >= self._disk_checked_at + DISK_CHECK_S:
            self._disk_checked_at = now
            try:
                st = os.statvfs(self.workdir)
                free_mb = st.f_bavail * st.f_frsize // (1024 * 1024)
            except OSError:
                free_mb = None
            low = free_mb is not None and free_mb < self.config.spool.min_free_mb
            if low != self._disk_low:
                self._disk_low = low
                if low:
                    log.error("free disk %d MB is below [spool] min_free_mb %d: new calls are recorded "
                              "WITHOUT AUDIO until space returns", free_mb, self.config.spool.min_free_mb)
                else:
                    log.warning("free disk is above [spool] min_free_mb again: recording audio")
        if self._disk_low:
            self.counters["media.disk_low.calls_without_audio"] += 1
        return not self._disk_low

    def _new_media(self, call: Call, *, write_audio: bool) -> MediaCapture | CallMedia:
        if not self.keep_audio:
            return CallMedia(None, redact_dtmf=self.config.recording.redact_dtmf_digits,
                             clock_rate_for_pt=lambda direction, pt, call=call: _clock_rate(call, direction, pt),
                             codecs_for_direction=lambda direction, call=call: _codecs_for_direction(call, direction))
        self._media_seq += 1
        path = self.workdir / f"call-{self._media_seq:08d}.rtp"
        # DTMF (issue 6): with redaction the digit of telephone-events never reaches the disk
        return MediaCapture(path, redact_dtmf=self.config.recording.redact_dtmf_digits,
                            codecs_for_direction=lambda direction, call=call: _codecs_for_direction(call, direction),
                            counters=self.counters, write_audio=write_audio)

    def _replay_pending(self, endpoint: tuple[str, int]) -> None:
        pending = self._pending_rtp
        if not pending:
            return
        keep: deque[Datagram] = deque()
        matched = []
        for dgram in pending:
            if (dgram.dst_ip, dgram.dst_port) == endpoint or (dgram.src_ip, dgram.src_port) == endpoint:
                matched.append(dgram)
            else:
                keep.append(dgram)
        if matched:
            self._pending_rtp = keep
            self.counters["rtp.pending_adopted"] += len(matched)
            for dgram in matched:
                self._route_media(dgram)

    def _finish(self, call: Call) -> None:
        if self._pending:
            self._flush_call(call)
        media, call.media = call.media, None
        redact = self.config.recording.redact_dtmf_digits
        if redact:                                   # DTMF (issue 6): PCI redaction
            for press in call.dtmf:
                press["digit"] = ""
        extra: dict[str, Any] = {}
        if media is None:
            self._emit(FinishedCall(call=call, record=build_record(call, self.config, self.macs), media_log=None))
            return
        media.close()
        codecs = {CALLER: _codecs_for_direction(call, CALLER), CALLEE: _codecs_for_direction(call, CALLEE)}
        if isinstance(media, CallMedia):             # keep_audio False: sequenced as it arrived
            record, _specs = media_record(build_record(call, self.config, self.macs), media, codecs,
                                          redact=redact)
            self._emit(FinishedCall(call=call, record=record, media_log=None))
            return
        plan = media.plan(codecs)
        if media.zrtp_seen:
            extra["encrypted"] = True
        if not media.log_path.exists():
            if not media.write_audio:
                # Disk below the floor: no audio, but the packets seen stay on record.
                extra["no_audio_reason"] = "disk_low"
                extra["streams"] = _unrecorded_streams(plan, [])
            self._emit(FinishedCall(call=call, record=build_record(call, self.config, self.macs, extra),
                                    media_log=None))
            return
        record = build_record(call, self.config, self.macs, extra)
        if self.defer_media:
            # Sequencing (reorder, stats, RFC 4733) runs with the rendering, in a worker.
            self._emit(FinishedCall(call=call, record=record, media_log=media.log_path, media_plan=plan))
            return
        ordered = media.log_path.with_suffix(".ordered")
        record, specs = complete_media(record, media.log_path, plan, ordered, redact=redact)
        self._emit(FinishedCall(call=call, record=record, media_log=ordered, streams=specs))

    def _emit(self, finished: FinishedCall) -> None:
        self.counters["calls.finished"] += 1
        for ready in self.grouper.feed(finished, max(self.now_ns, finished.call.end_ts_ns or 0)):  # [legs edit]
            self.on_finished(ready)

    # ------------------------------------------------------------------ time

    def _tick(self, ts_ns: int) -> None:
        self._next_tick_ns = ts_ns + TICK_NS
        if self.now_ns == 0:
            return
        now = max(ts_ns, self.now_ns)
        for event in self.tracker.on_time(now):
            self._on_event(event)
        for ready in self.grouper.release(now):      # [legs edit]
            self.on_finished(ready)
        pending = self._pending_rtp
        cutoff = now - PENDING_RTP_NS
        while pending and pending[0].ts_ns < cutoff:
            pending.popleft()
            self.counters["rtp.unmatched"] += 1
        self._expire_tcp(now)

    def _expire_tcp(self, now_ns: int, force: bool = False) -> None:
        idle = TCP_FLOW_IDLE_NS if not force else 0
        stale = [flow for flow, last in self._tcp_last_ns.items() if now_ns - last > idle]
        if force and not stale:
            stale = list(self._tcp_last_ns)[: max(1, len(self._tcp_last_ns) // 10)]
        for flow in stale:
            self._tcp_framers.pop(flow, None)
            self._tcp_last_ns.pop(flow, None)

    def advance(self, now_ns: int) -> None:
        """Move packet time forward with no packet (live capture on a quiet tap)."""
        if now_ns > self.now_ns:
            self.now_ns = now_ns
            self._tick(now_ns)

    def finish(self, reason: str = EndReason.CAPTURE_END.value) -> None:
        """End every call in progress with what was captured."""
        for event in self.tracker.finish_all(self.now_ns, reason):
            self._on_event(event)
        for ready in self.grouper.flush():           # [legs edit]
            self.on_finished(ready)
        self.counters["rtp.unmatched"] += len(self._pending_rtp)
        self._pending_rtp.clear()

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _l2_facts(buf: bytes, at: int, linktype: int, tagged: bool) -> tuple[bytes, bytes, tuple[int, ...]]:
    """(source MAC, destination MAC, VLAN ids) of a batch-path frame, as agent.net.link reads them."""
    if linktype == LINKTYPE_LINUX_SLL:
        return (buf[at + 6:at + 12] if ((buf[at + 4] << 8) | buf[at + 5]) == 6 else b""), b"", ()
    if linktype == LINKTYPE_LINUX_SLL2:
        return (buf[at + 12:at + 18] if buf[at + 11] == 6 else b""), b"", ()
    vlans: tuple[int, ...] = ()
    off = at + 12
    while tagged and len(vlans) < 2 and ((buf[off] << 8) | buf[off + 1]) in VLAN_TPIDS:
        # The tags rtp_frames stepped over (at most two), outer first, as link.py lists them.
        vlans += ((((buf[off + 2] << 8) | buf[off + 3]) & 0x0FFF),)
        off += 4
    return buf[at + 6:at + 12], buf[at:at + 6], vlans


def _codecs_for_direction(call: Call, direction: int) -> dict[int, CodecInfo]:
    """PT map for media sent by side ``direction``: the receiver's rtpmap first (it defined
    what it wants to receive), the sender's as fallback (phones differ, many break RFC 3264)."""
    sender = call.parties[direction]
    receiver = call.parties[CALLEE if direction == CALLER else CALLER]
    codecs: dict[int, CodecInfo] = {}
    for party in (sender, receiver):          # receiver last: it wins
        for pt, rtpmap in party.rtpmaps.items():
            codecs[pt] = CodecInfo(encoding=rtpmap.encoding, clock_rate_hz=rtpmap.clock_rate_hz,
                                   channels=rtpmap.channels, fmtp=party.fmtp.get(pt))
    return codecs


def complete_media(record: dict[str, Any], raw_log: Path, plan: MediaPlan, ordered_log: Path, *,
                   redact: bool) -> tuple[dict[str, Any], list[StreamSpec]]:
    """Sequence a call's raw media log (see ``sequence_capture``) into ``ordered_log``: returns
    the record completed with per-stream counters and RFC 4733 key presses, and the stream
    specs ``render_recording`` needs. The raw log is deleted. Runs in the capture process for
    ``inspect`` and in a worker process for recordings."""
    media = sequence_capture(raw_log, ordered_log, plan)
    raw_log.unlink(missing_ok=True)
    record, specs = media_record(record, media, plan.codecs, redact=redact)
    record["streams"] = _unrecorded_streams(plan, record["streams"])
    return record, specs


def media_record(record: dict[str, Any], media: CallMedia, codecs: dict[int, dict], *,
                 redact: bool) -> tuple[dict[str, Any], list[StreamSpec]]:
    """The record completed from a sequenced call's media: per-stream counters, RFC 4733 key
    presses, encryption; and the stream specs ``render_recording`` needs."""
    streams, specs = [], []
    for info in media.streams:
        stats = info.stats
        streams.append({
            "index": info.index, "direction": info.direction, "ssrc": stats.ssrc,
            "packets": stats.packets, "lost": stats.lost, "duplicated": stats.duplicated,
            "reordered": stats.reordered, "late": stats.late,
            "jitter_ms": round(stats.jitter_ms, 3), "src": stats.src, "dst": stats.dst,
            "payload_types": {str(k): v for k, v in stats.payload_types.items()},
        })
        specs.append(StreamSpec(index=info.index, direction=info.direction,
                                codecs=codecs.get(info.direction, {})))
    presses = presses_from_events(media.dtmf_events, int(record.get("start_ts_ns") or 0))
    record = merge_dtmf_presses(dict(record, streams=streams), presses, redact=redact)
    if media.zrtp_seen:
        record["encrypted"] = True
    return record, specs


def _unrecorded_streams(plan: MediaPlan, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``streams`` plus, per direction, the packets seen on the wire but never written (disk
    full or below the floor): they stay on record, marked ``unrecorded``."""
    if not plan.log_failures:
        return streams
    out = list(streams)
    for direction in (CALLER, CALLEE):
        logged = sum(st["packets"] + st["duplicated"] + st["late"] for st in streams
                     if st["direction"] == direction)
        missing = plan.captured_packets[direction] - logged
        if missing > 0:
            out.append({"index": -1, "direction": direction, "ssrc": None, "packets": missing,
                        "lost": 0, "duplicated": 0, "reordered": 0, "late": 0, "jitter_ms": 0.0,
                        "src": "", "dst": "", "payload_types": {}, "unrecorded": True})
    return out


def _clock_rate(call: Call, direction: int, pt: int) -> int:
    info = _codecs_for_direction(call, direction).get(pt)
    return info.clock_rate_hz if info is not None and info.clock_rate_hz else 8000

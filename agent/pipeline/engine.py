"""The engine: frames in, finished calls out; it wires the stages and does little else.

One engine serves replay and live capture: both feed it batches of frames (``feed_batch``;
``feed`` takes one ``(ts_ns, linktype, frame)`` and is what a batch must be equal to), and
every timeout runs on packet time (``clock.py``). It does no rendering, spooling or HTTP:
each ended call is handed to ``on_finished`` as a :class:`FinishedCall`.

The stages: ``batch_routing`` (numpy over a batch of RTP), ``media_routing`` (the endpoint
map, one datagram of RTP, held RTP), ``signalling`` (SIP over UDP/TCP into the call
tracker), ``finishing`` (media objects, finished calls). Tracker events, and signalling's
``BodyArriving``, all come through ``_on_events``: one loop, one ``match``. Before any event
touches a call, the call gets the packets the batch router routed to it but has not handed
over yet (flush before touch), so every call sees its packets and its signalling in capture
order, exactly as frame-by-frame feeding would.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from agent.calls.call import Call, Side
from agent.calls.end_reason import EndReason
from agent.calls.legs import ConversationGrouper
from agent.calls.macs import MacTable
from agent.calls.tracker import CallAnswered, CallEnded, CallStarted, CallTracker, EndpointClaimed
from agent.capture.batches import FrameBatch
from agent.config import Config
from agent.counters import new_counters
from agent.net.datagram import TCP, Datagram
from agent.net.decode import FrameDecoder
from agent.net.hep import HepUnwrapper, is_hep3
from agent.pipeline.batch_routing import BATCH_MIN, BatchRouter
from agent.pipeline.clock import NS, PacketClock
from agent.pipeline.finishing import Finisher, FinishedCall, MediaMode
from agent.pipeline import gc_policy
from agent.pipeline.media_routing import MediaRouter
from agent.pipeline.signalling import BodyArriving, Signalling

__all__ = ["Engine", "FinishedCall", "MediaMode"]

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: Config, on_finished: Callable[[FinishedCall], None], *,
                 counters=None, workdir: Path | None = None,
                 grouper: ConversationGrouper | None = None, media: MediaMode = MediaMode.INLINE,
                 batch_min: int = BATCH_MIN) -> None:
        """``media``: counters only (inspect), deferred to the recorder's workers (recordings)
        or sequenced here (tests); see ``MediaMode``. ``batch_min``: smaller batches are fed
        frame by frame."""
        gc_policy.for_engine()
        self.config = config
        self.counters = counters if counters is not None else new_counters()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="calln-work-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clock = PacketClock()
        self.decoder = FrameDecoder(self.counters)
        self.hep = HepUnwrapper(self.counters, config.capture.hep_auth_key.encode())
        self._hep_ports = frozenset(config.capture.hep_ports)
        self.macs = MacTable(router_ip_threshold=config.sip.router_mac_ip_threshold,
                             l2_networks=config.sip.l2_networks, mac_format=config.sip.mac_format)
        self.media = MediaRouter(self.counters, touch=self._touch, first_media=self._first_media,
                                 media_of=self._media_of)
        self.tracker = CallTracker(config.sip, self.counters, self.media.endpoints)
        self.grouper = grouper if grouper is not None else ConversationGrouper(
            config.sip, live=self.tracker.calls, counters=self.counters)
        self.finishing = Finisher(config, self.counters, self.macs, self.workdir, self.grouper, on_finished,
                                  media=media)
        sip_ports = frozenset(config.capture.sip_ports)
        self.signalling = Signalling(sip_ports, self.counters, self.tracker, self.macs, self.clock,
                                     self._on_events)
        self.batches = BatchRouter(self.counters, self.decoder, self.media.endpoints, self.clock, sip_ports,
                                   feed=self.feed, dispatch=self._dispatch, tick=self._tick,
                                   hold=self.media.hold, media_of=self.finishing.media_of, batch_min=batch_min)

    @property
    def now_ns(self) -> int:
        return self.clock.now_ns

    # ------------------------------------------------------------------ input

    def feed_batch(self, batch: FrameBatch) -> None:
        """Every frame of ``batch`` in order, with the same result as ``feed`` frame by frame."""
        self.batches.feed_batch(batch)

    def feed(self, ts_ns: int, linktype: int, frame: bytes) -> None:
        clock = self.clock
        ts_ns += clock.offset_ns
        if ts_ns > clock.now_ns:
            if clock.leaps(ts_ns):
                self._after_gap(ts_ns, self.decoder.decode(ts_ns, linktype, frame))
                return
            if ts_ns >= clock.next_tick_ns:
                self._tick(ts_ns)
            clock.now_ns = ts_ns
        dgram = self.decoder.decode(ts_ns, linktype, frame)
        if dgram is not None:
            self._dispatch(dgram)

    def feed_datagram(self, dgram: Datagram) -> None:
        """A datagram that comes with no frame (HEP): the path ``feed`` takes after decoding,
        on the datagram's own capture time."""
        clock = self.clock
        ts_ns = dgram.ts_ns = dgram.ts_ns + clock.offset_ns
        if ts_ns > clock.now_ns:
            if clock.leaps(ts_ns):
                self._after_gap(ts_ns, dgram)
                return
            if ts_ns >= clock.next_tick_ns:
                self._tick(ts_ns)
            clock.now_ns = ts_ns
        self._dispatch(dgram)

    def _after_gap(self, ts_ns: int, dgram: Datagram | None) -> None:
        """Packet time leapt forward by more than GAP_NS: a clock jump if this packet
        continues a call in progress (time is re-based), else a quiet spell (the timeouts run
        at the new time before the packet is handled). See ``clock.py``."""
        if dgram is not None and self._continues_a_call(dgram):
            corrected = self.clock.rebase(ts_ns)
            self.counters["capture.clock_jumps"] += 1
            log.warning("capture clock jumped %+.0f s inside call traffic; re-basing packet time",
                        (ts_ns - corrected) / NS)
            dgram.ts_ns = ts_ns = corrected
        else:
            self._tick(ts_ns)
        self.clock.now_ns = ts_ns
        if dgram is not None:
            self._dispatch(dgram)

    def _continues_a_call(self, dgram: Datagram) -> bool:
        if self.media.knows(dgram):
            return True
        return dgram.transport != TCP and self.signalling.knows_call_of(dgram)

    def _dispatch(self, dgram: Datagram) -> None:
        """A decoded datagram: SIP over TCP, RTP of a known endpoint, SIP over UDP, RTP held
        for its SDP, or nothing the agent reads."""
        if dgram.transport == TCP:
            self.signalling.tcp(dgram)
        elif self.media.route(dgram):
            return
        elif dgram.dst_port in self._hep_ports and is_hep3(dgram.payload):
            self._unwrap_hep(dgram)
        elif self.signalling.takes_udp(dgram):
            self.signalling.udp(dgram)
        elif not self.media.hold_if_rtp(dgram):
            self.counters["udp.unmatched"] += 1

    def _unwrap_hep(self, outer: Datagram) -> None:
        """HEP3 captured on the wire (a SIP server's copies to its collector): the packet it
        carries takes the path of a captured one, on the capture time of its own chunks."""
        inner = self.hep.datagram(outer.payload, outer.ts_ns - self.clock.offset_ns)
        if inner is None:
            return
        if inner.dst_port in self._hep_ports and is_hep3(inner.payload):
            self.counters["hep.skip.nested"] += 1        # HEP in HEP: not a sender's output
            return
        self.feed_datagram(inner)

    # ------------------------------------------------------------------ events

    def _touch(self, call: Call) -> None:
        """Flush before touch: ``call`` gets its routed batch packets before anything else."""
        self.batches.flush_call(call)

    def _media_of(self, call: Call):
        return self.finishing.media_of(call)

    def _first_media(self, call: Call, side: Side, dgram: Datagram) -> None:
        self.macs.observe(dgram.src_mac, dgram.src_ip)
        self.tracker.on_media(call, side, dgram.ts_ns, (dgram.src_ip, dgram.src_port), dgram.src_mac)
        self.batches.mark_ready(call, side)

    def _on_events(self, events) -> None:
        for event in events:
            self._touch(event.call)
            match event:
                case EndpointClaimed(call=call, endpoint=endpoint):
                    self.finishing.attach_media(call)
                    self.media.adopt_held(endpoint)
                case CallEnded(call=call):
                    self.finishing.finish(call, self.clock.now_ns)
                case BodyArriving() | CallStarted() | CallAnswered():
                    pass                          # the flush above was all they needed

    # ------------------------------------------------------------------ time

    def _tick(self, ts_ns: int) -> None:
        clock = self.clock
        clock.ticked(ts_ns)
        if clock.now_ns == 0:
            return
        now = max(ts_ns, clock.now_ns)
        self._on_events(self.tracker.on_time(now))
        self.finishing.release(now)
        self.media.expire_held(now)
        self.signalling.expire(now)

    def advance(self, now_ns: int) -> None:
        """Move packet time forward with no packet (live capture on a quiet tap)."""
        if now_ns > self.clock.now_ns:
            self.clock.now_ns = now_ns
            self._tick(now_ns)

    def finish(self, reason: str = EndReason.CAPTURE_END.value) -> None:
        """End every call in progress with what was captured."""
        self._on_events(self.tracker.finish_all(self.clock.now_ns, reason))
        self.finishing.flush()
        self.media.drop_held()

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

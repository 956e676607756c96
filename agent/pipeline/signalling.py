"""Signalling: SIP over UDP and TCP in, the call tracker's events out.

Owns the TCP flows (a SIP framer per flow, or a note that the flow is not SIP) and the
parse of each message. Every event goes to the engine's one event loop (``emit``), in the
order it happens: a :class:`BodyArriving` before a message with a body is applied, so the
call's media so far reaches it under the codec map it was sent with; then the tracker's
events for the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from agent.calls.call import Call
from agent.calls.macs import MacTable
from agent.calls.tracker import CallTracker
from agent.errors import ParseError
from agent.net.datagram import Datagram
from agent.pipeline.clock import PacketClock
from agent.sip.framing import SipStreamFramer
from agent.sip.message import dialogless_call_id, looks_like_sip, parse_message

NS = 1_000_000_000
TCP_FLOWS_MAX = 10_000
TCP_FLOW_IDLE_NS = 300 * NS
SIP_TLS_PORT = 5061

Flow = tuple[str, int, str, int]


@dataclass(slots=True, frozen=True)
class BodyArriving:
    """A message with a body (it may change the codec map) is about to reach ``call``."""
    call: Call


class Signalling:
    def __init__(self, sip_ports: frozenset[int], counters, tracker: CallTracker, macs: MacTable,
                 clock: PacketClock, emit: Callable[[list], None]) -> None:
        self.sip_ports = sip_ports
        self.clock = clock
        self.counters = counters
        self.tracker = tracker
        self.macs = macs
        self._emit = emit
        self._tcp_framers: dict[Flow, SipStreamFramer | None] = {}
        self._tcp_last_ns: dict[Flow, int] = {}

    def takes_udp(self, dgram: Datagram) -> bool:
        """UDP on a SIP port, or carrying SIP bytes."""
        return (dgram.dst_port in self.sip_ports or dgram.src_port in self.sip_ports
                or looks_like_sip(dgram.payload))

    def udp(self, dgram: Datagram) -> None:
        self._message(dgram.payload, dgram, stream=False)

    def knows_call_of(self, dgram: Datagram) -> bool:
        """A UDP SIP message of a call in progress or just ended."""
        if not looks_like_sip(dgram.payload):
            return False
        try:
            return self.tracker.knows(parse_message(bytes(dgram.payload)).call_id)
        except ParseError:
            return False

    def tcp(self, dgram: Datagram) -> None:
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
                self.expire(self.clock.now_ns, force=True)
            framers[flow] = framer
        self._tcp_last_ns[flow] = dgram.ts_ns
        if framer is None:
            return
        kind_before = framer.kind
        for message in framer.feed(dgram.payload):
            self._message(message, dgram, stream=True)
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

    def _message(self, data: bytes, dgram: Datagram, *, stream: bool) -> None:
        call_id = dialogless_call_id(data)
        if call_id is not None and not self.tracker.knows(call_id):
            # Opens nothing and belongs to no call (a scanner's OPTIONS, a phone's REGISTER):
            # the full parse would find nothing to do with it.
            self.counters["sip.messages"] += 1
            self.macs.observe(dgram.src_mac, dgram.src_ip)
            return
        try:
            msg = parse_message(bytes(data), stream=stream)
        except ParseError:
            self.counters["sip.skip.malformed"] += 1
            return
        self.counters["sip.messages"] += 1
        if msg.body:
            known = self.tracker.calls.get(msg.call_id)
            if known is not None:
                self._emit([BodyArriving(known)])
        self.macs.observe(dgram.src_mac, dgram.src_ip)
        self._emit(self.tracker.on_sip(msg, dgram))

    def expire(self, now_ns: int, force: bool = False) -> None:
        """Forget TCP flows idle for TCP_FLOW_IDLE_NS (``force``: at the flow limit, the idle
        ones now, else the oldest tenth)."""
        idle = TCP_FLOW_IDLE_NS if not force else 0
        stale = [flow for flow, last in self._tcp_last_ns.items() if now_ns - last > idle]
        if force and not stale:
            stale = list(self._tcp_last_ns)[: max(1, len(self._tcp_last_ns) // 10)]
        for flow in stale:
            self._tcp_framers.pop(flow, None)
            self._tcp_last_ns.pop(flow, None)

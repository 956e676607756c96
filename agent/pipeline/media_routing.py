"""Media routing: the endpoint map, one datagram of RTP to its call, and RTP held for the SDP
that will explain it.

Owns the :class:`EndpointMap` (the tracker is handed it and claims and releases endpoints in
it) and the held RTP. A packet TO a side's endpoint was sent by the other side, one FROM a
side's endpoint by that side; the destination is looked up first because it survives NAT
latching. RTP with no known endpoint is held for up to ``HELD_RTP_NS`` (its SDP may still be
on the way) and adopted when an endpoint it matches is claimed.

The batch router (``batch_routing.py``) routes whole runs of frames with a sorted copy of
the same map and hands each call its packets in bulk; everything it cannot take comes here
one datagram at a time, with the same result.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from agent.calls.call import Call, Side
from agent.calls.endpoints import Endpoint, EndpointMap
from agent.media.rtp import looks_like_rtp
from agent.net.datagram import Datagram

NS = 1_000_000_000
HELD_RTP_NS = 2 * NS               # RTP held while its SDP may still be on the way
HELD_RTP_MAX = 20_000


class MediaRouter:
    def __init__(self, counters, *, touch: Callable[[Call], None],
                 first_media: Callable[[Call, Side, Datagram], None], media_of: Callable[[Call], Any]) -> None:
        """``touch(call)`` runs before a packet reaches a call (the engine's flush-before-touch
        rule); ``first_media(call, side, dgram)`` for the first packet a side is seen sending;
        ``media_of(call)`` is where a call's packets go (None: nowhere yet)."""
        self.counters = counters
        self.endpoints = EndpointMap()
        self._touch = touch
        self._first_media = first_media
        self._media_of = media_of
        self._held: deque[Datagram] = deque()

    def route(self, dgram: Datagram) -> bool:
        """Hand RTP of a known endpoint to its call; False when no endpoint matches."""
        hit = self.endpoints.get((dgram.dst_ip, dgram.dst_port))
        if hit is not None:
            self.deliver(hit[0], 1 - hit[1], dgram)
            return True
        hit = self.endpoints.get((dgram.src_ip, dgram.src_port))
        if hit is not None:
            self.deliver(hit[0], hit[1], dgram)
            return True
        return False

    def knows(self, dgram: Datagram) -> bool:
        return (dgram.dst_ip, dgram.dst_port) in self.endpoints or (dgram.src_ip, dgram.src_port) in self.endpoints

    def deliver(self, call: Call, side: Side, dgram: Datagram) -> None:
        """RTP sent by ``side`` of ``call``."""
        self._touch(call)
        if call.parties[side].seen_endpoint is None:
            self._first_media(call, side, dgram)
        else:
            call.last_media_ns = dgram.ts_ns
        media = self._media_of(call)
        if media is not None:
            if not media.on_rtp(side, dgram.ts_ns, f"{dgram.src_ip}:{dgram.src_port}",
                                f"{dgram.dst_ip}:{dgram.dst_port}", dgram.payload):
                self.counters["rtp.skip.not_rtp"] += 1

    # ------------------------------------------------------------------ held RTP

    def hold_if_rtp(self, dgram: Datagram) -> bool:
        """Hold ``dgram`` if it looks like RTP (no call claims its endpoints yet)."""
        if not looks_like_rtp(dgram.payload):
            return False
        self.hold(dgram)
        return True

    def hold(self, dgram: Datagram) -> None:
        held = self._held
        held.append(dgram)
        if len(held) > HELD_RTP_MAX:
            held.popleft()
            self.counters["rtp.pending_overflow"] += 1

    def adopt_held(self, endpoint: Endpoint) -> None:
        """An endpoint was claimed: the held RTP to or from it goes to its call now."""
        held = self._held
        if not held:
            return
        keep: deque[Datagram] = deque()
        matched = []
        for dgram in held:
            if (dgram.dst_ip, dgram.dst_port) == endpoint or (dgram.src_ip, dgram.src_port) == endpoint:
                matched.append(dgram)
            else:
                keep.append(dgram)
        if matched:
            self._held = keep
            self.counters["rtp.pending_adopted"] += len(matched)
            for dgram in matched:
                self.route(dgram)

    def expire_held(self, now_ns: int) -> None:
        held = self._held
        cutoff = now_ns - HELD_RTP_NS
        while held and held[0].ts_ns < cutoff:
            held.popleft()
            self.counters["rtp.unmatched"] += 1

    def drop_held(self) -> None:
        self.counters["rtp.unmatched"] += len(self._held)
        self._held.clear()

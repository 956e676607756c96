"""FrameDecoder: one captured frame in, at most one Datagram out.

Owns: gluing the network layers together in the order a frame is peeled —
link (agent.net.link) → IP (agent.net.ip) → fragment reassembly
(agent.net.fragments) → tunnels (agent.net.tunnels, depth-bounded, the inner
frame is processed as if seen on the wire) → duplicate suppression
(agent.net.dedup) → UDP, or TCP stream reassembly (agent.net.tcp). Everything
that is not UDP or TCP is counted under ``net.skip.*`` and dropped. All timers
run on packet time: ``expire(now_ns)`` is called by the engine and also every
``expire_interval_ns`` of packet time from ``decode`` itself.

Does not own: SIP/RTP (consumers of the Datagram), framing SIP over TCP.
No logging here: this is the per-packet hot path.
"""

from __future__ import annotations

import socket
import struct

from agent.net.datagram import TCP, UDP, Datagram
from agent.media.rtp import looks_like_rtp
from agent.net.dedup import Deduplicator, rtp_key, rtp_key6
from agent.net.fragments import FragmentReassembler
from agent.net.ip import (PROTO_ESP, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP,
                          PROTO_IPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, parse_ipv4,
                          parse_ipv6, walk_ipv6_ext)
from agent.net.link import parse_ethernet, parse_link
from agent.net.tcp import TcpReassembler
from agent.net.tunnels import INNER_ETHERNET, VXLAN_PORT, gre, vxlan

_UDP_HDR = struct.Struct("!HHH").unpack_from
_TCP_HDR = struct.Struct("!HHI").unpack_from
_TCP_SIGNIFICANT = 0x07   # FIN|SYN|RST: segments that change state even without data

_IP_TEXT_CACHE_MAX = 65536


class FrameDecoder:
    def __init__(self, counters, *,
                 max_fragment_bytes: int = 8 * 1024 * 1024,
                 max_fragment_datagrams: int = 1024,
                 fragment_timeout_ns: int = 30_000_000_000,
                 tcp_flow_max_bytes: int = 256 * 1024,
                 tcp_total_max_bytes: int = 64 * 1024 * 1024,
                 tcp_max_flows: int = 65536,
                 tcp_idle_timeout_ns: int = 300_000_000_000,
                 dedup: bool = True,
                 dedup_window_ns: int = 50_000_000,
                 max_tunnel_depth: int = 4,
                 expire_interval_ns: int = 1_000_000_000) -> None:
        self.counters = counters
        self.fragments = FragmentReassembler(counters, max_pending=max_fragment_datagrams,
                                             max_bytes=max_fragment_bytes,
                                             timeout_ns=fragment_timeout_ns)
        self.tcp = TcpReassembler(counters, flow_max_bytes=tcp_flow_max_bytes,
                                  total_max_bytes=tcp_total_max_bytes, max_flows=tcp_max_flows,
                                  idle_timeout_ns=tcp_idle_timeout_ns)
        # Two tables: RTP (keyed by rtp_key) and everything else, each with its own packet-time
        # generations, so the batch path can de-duplicate a run of RTP at once while signalling
        # in the middle of it is handled frame by frame (agent/pipeline/batch_routing.py).
        self.dedup = Deduplicator(window_ns=dedup_window_ns) if dedup else None
        self.dedup_rtp = Deduplicator(window_ns=dedup_window_ns) if dedup else None
        self.max_tunnel_depth = max_tunnel_depth
        self.expire_interval_ns = expire_interval_ns
        self._next_expire_ns = 0
        self._ip_text: dict[bytes, str] = {}

    # -- public -------------------------------------------------------------

    def decode(self, ts_ns: int, linktype: int, frame: bytes) -> Datagram | None:
        if ts_ns >= self._next_expire_ns:
            self.expire(ts_ns)
        # Fast path: Ethernet II / IPv4 / UDP, unfragmented (RTP on a SPAN port).
        # Anything unusual falls through to the general layered path below.
        if (linktype == 1 and len(frame) >= 42 and frame[12] == 8 and frame[13] == 0
                and frame[23] == 17 and not (frame[20] & 0x3F or frame[21])):
            ihl = (frame[14] & 0x0F) << 2
            total = (frame[16] << 8) | frame[17]
            l4 = 14 + ihl
            if frame[14] >> 4 == 4 and ihl >= 20 and ihl < total <= len(frame) - 14 \
                    and total - ihl >= 8:
                sport, dport, ulen = _UDP_HDR(frame, l4)
                end = 14 + total
                if dport != VXLAN_PORT:
                    pend = l4 + ulen if 8 <= ulen <= end - l4 else end
                    payload = frame[l4 + 8:pend]
                    src = frame[26:30]
                    dst = frame[30:34]
                    rtp = looks_like_rtp(payload)
                    dedup = self.dedup_rtp if rtp else self.dedup
                    if dedup is not None and dedup.is_duplicate(
                            ts_ns, rtp_key((frame[18] << 8) | frame[19], src, dst, frame[l4:pend]) if rtp
                            else hash(((frame[18] << 8) | frame[19], frame[26:34], frame[l4:pend]))):
                        self.counters["net.duplicate"] += 1
                        return None
                    cache = self._ip_text
                    s_txt = cache.get(src) or self.ip_text(src)
                    d_txt = cache.get(dst) or self.ip_text(dst)
                    return Datagram(ts_ns, s_txt, sport, d_txt, dport, UDP, payload,
                                    frame[6:12], frame[0:6], ())
        l2 = parse_link(linktype, frame, self.counters)
        if l2 is None:
            return None
        ver, off, end, smac, dmac, vlans = l2
        return self._l3(ts_ns, frame, ver, off, end, smac, dmac, vlans, 0)

    @property
    def next_expire_ns(self) -> int:
        """Packet time at which ``decode`` next expires fragments and TCP flows: a caller that
        steps over frames (the batch router) calls ``expire`` where ``decode`` would have."""
        return self._next_expire_ns

    def expire(self, now_ns: int) -> None:
        """Drop stale fragments and idle TCP flows (packet time)."""
        self.fragments.expire(now_ns)
        self.tcp.expire(now_ns)
        self._next_expire_ns = now_ns + self.expire_interval_ns

    # -- layers -------------------------------------------------------------

    def ip_text(self, raw: bytes) -> str:
        """Text form of a raw IPv4/IPv6 address (cached)."""
        cache = self._ip_text
        s = cache.get(raw)
        if s is None:
            if len(cache) >= _IP_TEXT_CACHE_MAX:
                cache.clear()
            s = cache[raw] = (socket.inet_ntoa(raw) if len(raw) == 4
                              else socket.inet_ntop(socket.AF_INET6, raw))
        return s

    def _l3(self, ts_ns: int, frame: bytes, ver: int, off: int, end: int, smac: bytes,
            dmac: bytes, vlans: tuple[int, ...], depth: int) -> Datagram | None:
        c = self.counters
        if ver == 4:
            r4 = parse_ipv4(frame, off, end, c)
            if r4 is None:
                return None
            src, dst, proto, l4off, l4end, ident, frag_off, more = r4
            if frag_off or more:
                whole = self.fragments.add(ts_ns, (src, dst, ident, proto), frag_off, more,
                                           frame[l4off:l4end])
                if whole is None:
                    return None
                frame, l4off, l4end = whole, 0, len(whole)
        else:
            r6 = parse_ipv6(frame, off, end, c)
            if r6 is None:
                return None
            src, dst, proto, l4off, l4end, ident, frag = r6
            if frag is not None:
                fid, frag_off, more = frag
                whole = self.fragments.add(ts_ns, (src, dst, fid, proto), frag_off, more,
                                           frame[l4off:l4end])
                if whole is None:
                    return None
                ext = walk_ipv6_ext(proto, whole, 0, len(whole), c)
                if ext is None:
                    return None
                proto, l4off, again = ext
                if again is not None:
                    c["net.skip.ipv6_ext"] += 1
                    return None
                frame, l4end = whole, len(whole)

        if proto == PROTO_UDP:
            if l4end - l4off < 8:
                c["net.skip.truncated"] += 1
                return None
            sport, dport, ulen = _UDP_HDR(frame, l4off)
            pend = l4off + ulen if 8 <= ulen <= l4end - l4off else l4end
            if dport == VXLAN_PORT:
                inner = vxlan(frame, l4off + 8, pend, c)
                if inner is not None:
                    return self._tunnel(ts_ns, frame, inner, pend, smac, dmac, vlans, depth,
                                        "net.tunnel.vxlan")
            payload = frame[l4off + 8:pend]
            rtp = looks_like_rtp(payload)
            dedup = self.dedup_rtp if rtp else self.dedup
            if dedup is not None and dedup.is_duplicate(
                    ts_ns, (rtp_key(ident, src, dst, frame[l4off:pend]) if len(src) == 4
                            else rtp_key6(ident, src, dst, frame[l4off:pend])) if rtp
                    else hash((ident, src + dst, frame[l4off:pend]))):
                c["net.duplicate"] += 1
                return None
            return Datagram(ts_ns, self.ip_text(src), sport, self.ip_text(dst), dport, UDP,
                            payload, smac, dmac, vlans)

        if proto == PROTO_TCP:
            if l4end - l4off < 20:
                c["net.skip.truncated"] += 1
                return None
            sport, dport, seq = _TCP_HDR(frame, l4off)
            doff = (frame[l4off + 12] >> 4) << 2
            flags = frame[l4off + 13]
            if doff < 20 or l4off + doff > l4end:
                c["net.skip.bad_tcp"] += 1
                return None
            payload = frame[l4off + doff:l4end]
            dedup = self.dedup
            if payload and dedup is not None and dedup.is_duplicate(
                    ts_ns, hash((ident, src + dst, frame[l4off:l4end]))):
                c["net.duplicate"] += 1
                return None
            if not payload and not flags & _TCP_SIGNIFICANT:
                return None   # pure ACK
            data = self.tcp.segment(ts_ns, (src, sport, dst, dport), seq, flags, payload)
            if data is None:
                return None
            return Datagram(ts_ns, self.ip_text(src), sport, self.ip_text(dst), dport, TCP,
                            data, smac, dmac, vlans)

        if proto == PROTO_GRE:
            inner = gre(frame, l4off, l4end, c)
            if inner is None:
                return None
            return self._tunnel(ts_ns, frame, inner, l4end, smac, dmac, vlans, depth,
                                "net.tunnel.gre")
        if proto == PROTO_IPIP or proto == PROTO_IPV6:
            return self._tunnel(ts_ns, frame, (4 if proto == PROTO_IPIP else 6, l4off), l4end,
                                smac, dmac, vlans, depth, "net.tunnel.ipip")
        if proto == PROTO_SCTP:
            c["net.sctp"] += 1          # may carry SIP we cannot decode
            c["net.skip.sctp"] += 1
        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            c["net.skip.icmp"] += 1
        elif proto == PROTO_ESP:
            c["net.skip.esp"] += 1
        else:
            c["net.skip.ip_proto"] += 1
        return None

    def _tunnel(self, ts_ns: int, frame: bytes, inner: tuple[int, int], end: int,
                smac: bytes, dmac: bytes, vlans: tuple[int, ...], depth: int,
                counter: str) -> Datagram | None:
        c = self.counters
        if depth >= self.max_tunnel_depth:
            c["net.skip.tunnel_depth"] += 1
            return None
        c[counter] += 1
        kind, off = inner
        if kind == INNER_ETHERNET:
            # The inner Ethernet is what was on the mirrored wire: its MACs/VLANs win.
            l2 = parse_ethernet(frame, off, end, c)
            if l2 is None:
                return None
            ver, off, end, smac, dmac, vlans = l2
            return self._l3(ts_ns, frame, ver, off, end, smac, dmac, vlans, depth + 1)
        return self._l3(ts_ns, frame, kind, off, end, smac, dmac, vlans, depth + 1)

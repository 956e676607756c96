"""IP layer (L3): IPv4 and IPv6 headers, IPv6 extension headers.

Owns: locating the L4 payload (honouring the IP length field, which trims
Ethernet padding), the fragment facts needed by agent.net.fragments, and the
IPv6 extension-header walk (hop-by-hop, routing, destination options, AH,
fragment). The IPv4 header checksum is deliberately NOT verified: captures from
hosts with checksum offload carry wrong checksums on perfectly good packets.
Does not own: reassembly, L4 parsing, tunnels.
"""

from __future__ import annotations

PROTO_HOPOPT = 0
PROTO_ICMP = 1
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_GRE = 47
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_NONE = 59
PROTO_DSTOPTS = 60
PROTO_SCTP = 132

_EXT_8 = frozenset((PROTO_HOPOPT, PROTO_ROUTING, PROTO_DSTOPTS, 135, 139, 140))
_MAX_EXT_HEADERS = 12

# (src, dst, proto, l4_off, l4_end, ident, frag_off_bytes, more_fragments)
IPv4Result = tuple[bytes, bytes, int, int, int, int, int, bool]
# (proto, l4_off, frag) where frag is None or (ident, frag_off_bytes, more_fragments)
Ext6Result = tuple[int, int, tuple[int, int, bool] | None]


def parse_ipv4(frame: bytes, off: int, end: int, counters) -> IPv4Result | None:
    if end - off < 20:
        counters["net.skip.truncated"] += 1
        return None
    vihl = frame[off]
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20:
        counters["net.skip.bad_ip"] += 1
        return None
    total = (frame[off + 2] << 8) | frame[off + 3]
    if total == 0:
        # TSO/GSO segments captured on the sending host carry length 0.
        total = end - off
    elif total > end - off:
        counters["net.skip.truncated"] += 1
        return None
    if total < ihl:
        counters["net.skip.bad_ip"] += 1
        return None
    frag = (frame[off + 6] << 8) | frame[off + 7]
    return (frame[off + 12:off + 16], frame[off + 16:off + 20], frame[off + 9],
            off + ihl, off + total, (frame[off + 4] << 8) | frame[off + 5],
            (frag & 0x1FFF) << 3, bool(frag & 0x2000))


def parse_ipv6(frame: bytes, off: int, end: int, counters
               ) -> tuple[bytes, bytes, int, int, int, int, tuple[int, int, bool] | None] | None:
    """Return (src, dst, proto, l4_off, l4_end, flow_label, frag) or None."""
    if end - off < 40:
        counters["net.skip.truncated"] += 1
        return None
    if frame[off] >> 4 != 6:
        counters["net.skip.bad_ip"] += 1
        return None
    plen = (frame[off + 4] << 8) | frame[off + 5]
    if plen == 0:
        l4end = end   # jumbogram or TSO: take what was captured
    else:
        l4end = off + 40 + plen
        if l4end > end:
            counters["net.skip.truncated"] += 1
            return None
    flow = ((frame[off + 1] & 0x0F) << 16) | (frame[off + 2] << 8) | frame[off + 3]
    nh = frame[off + 6]
    if nh == PROTO_UDP or nh == PROTO_TCP:
        return (frame[off + 8:off + 24], frame[off + 24:off + 40], nh, off + 40, l4end, flow, None)
    ext = walk_ipv6_ext(nh, frame, off + 40, l4end, counters)
    if ext is None:
        return None
    return (frame[off + 8:off + 24], frame[off + 24:off + 40], ext[0], ext[1], l4end, flow, ext[2])


def walk_ipv6_ext(nh: int, frame: bytes, off: int, end: int, counters) -> Ext6Result | None:
    """Skip extension headers; stop at the first fragment header or upper layer."""
    for _ in range(_MAX_EXT_HEADERS):
        if nh in _EXT_8:
            if end - off < 8:
                counters["net.skip.truncated"] += 1
                return None
            nh, off = frame[off], off + ((frame[off + 1] + 1) << 3)
        elif nh == PROTO_AH:
            if end - off < 8:
                counters["net.skip.truncated"] += 1
                return None
            nh, off = frame[off], off + ((frame[off + 1] + 2) << 2)
        elif nh == PROTO_FRAGMENT:
            if end - off < 8:
                counters["net.skip.truncated"] += 1
                return None
            fo = (frame[off + 2] << 8) | frame[off + 3]
            ident = int.from_bytes(frame[off + 4:off + 8], "big")
            # The next header of the fragment header describes the reassembled data.
            return (frame[off], off + 8, (ident, fo & 0xFFF8, bool(fo & 1)))
        else:
            if off > end:
                counters["net.skip.truncated"] += 1
                return None
            return (nh, off, None)
    counters["net.skip.ipv6_ext"] += 1
    return None

"""Tunnel decapsulation: find the inner frame of GRE, ERSPAN and VXLAN.

Owns: the GRE header (checksum, key and sequence flags), ERSPAN type I/II/III
headers, the VXLAN header. Each function returns ``(inner_kind, inner_offset)``
where inner_kind is INNER_ETHERNET, 4 (IPv4) or 6 (IPv6), or None after counting
why it was skipped. IP-in-IP (protocols 4 and 41) needs no header here: the
decoder simply parses the next IP header. Does not own: recursion (the decoder
bounds the depth) or parsing the inner frame.
"""

from __future__ import annotations

INNER_ETHERNET = 0

GRE_IPV4 = 0x0800
GRE_IPV6 = 0x86DD
GRE_TEB = 0x6558          # transparent Ethernet bridging
GRE_ERSPAN_II = 0x88BE    # also type I when the GRE header has no sequence number
GRE_ERSPAN_III = 0x22EB

VXLAN_PORT = 4789

_GRE_C = 0x8000
_GRE_R = 0x4000
_GRE_K = 0x2000
_GRE_S = 0x1000


def gre(frame: bytes, off: int, end: int, counters) -> tuple[int, int] | None:
    if end - off < 4:
        counters["net.skip.truncated"] += 1
        return None
    flags = (frame[off] << 8) | frame[off + 1]
    ptype = (frame[off + 2] << 8) | frame[off + 3]
    if flags & 0x0007:
        counters["net.skip.gre_version"] += 1   # version 1 is PPTP's enhanced GRE
        return None
    if flags & _GRE_R:
        counters["net.skip.gre_routing"] += 1
        return None
    off += 4
    if flags & _GRE_C:
        off += 4
    if flags & _GRE_K:
        off += 4
    if flags & _GRE_S:
        off += 4
    if ptype == GRE_IPV4:
        kind = 4
    elif ptype == GRE_IPV6:
        kind = 6
    elif ptype == GRE_TEB:
        kind = INNER_ETHERNET
    elif ptype == GRE_ERSPAN_II:
        kind = INNER_ETHERNET
        if flags & _GRE_S:
            off += 8            # ERSPAN type II header (type I has none and no GRE sequence)
    elif ptype == GRE_ERSPAN_III:
        kind = INNER_ETHERNET
        if end - off < 12:
            counters["net.skip.truncated"] += 1
            return None
        o_bit = frame[off + 11] & 0x01
        off += 12 + (8 if o_bit else 0)   # optional platform-specific subheader
    else:
        counters["net.skip.gre_proto"] += 1
        return None
    if off >= end:
        counters["net.skip.truncated"] += 1
        return None
    return kind, off


def vxlan(frame: bytes, off: int, end: int, counters) -> tuple[int, int] | None:
    """``off`` is the start of the UDP payload (the VXLAN header)."""
    if end - off < 8 + 14 or not frame[off] & 0x08:   # I flag: VNI valid
        return None
    return INNER_ETHERNET, off + 8

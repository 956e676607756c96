"""Link layer (L2): from a captured frame to the start of its IP packet.

Owns: Ethernet with stacked 802.1Q / 802.1ad / QinQ tags (VLAN ids recorded),
MPLS label stacks, PPPoE sessions, Linux cooked captures (SLL, SLL2), raw IP,
the DLT_IPV4/DLT_IPV6 link types and BSD null/loopback. Does not own: IP
parsing, tunnels (agent.net.tunnels decides *that* an inner Ethernet frame
exists, then calls ``parse_ethernet`` here).

Result of every parser: ``(ip_version, l3_offset, l3_end, src_mac, dst_mac,
vlan_ids)`` or None after counting the reason in ``counters``.
"""

from __future__ import annotations

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_LEGACY_12 = 12
LINKTYPE_RAW_LEGACY_14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
ETH_TEB = 0x6558           # transparent Ethernet bridging (inner Ethernet)
ETH_MPLS_UC = 0x8847
ETH_MPLS_MC = 0x8848
ETH_PPPOE_DISC = 0x8863
ETH_PPPOE_SESS = 0x8864
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))

PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057

# BSD address families seen in DLT_NULL/DLT_LOOP headers: IPv6 differs per OS.
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))

L2Result = tuple[int, int, int, bytes, bytes, tuple[int, ...]]

_MAX_VLAN_TAGS = 8
_MAX_MPLS_LABELS = 16


def parse_link(linktype: int, frame: bytes, counters) -> L2Result | None:
    """Dispatch on the capture's link type."""
    end = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        return parse_ethernet(frame, 0, end, counters)
    if linktype == LINKTYPE_LINUX_SLL:
        if end < 16:
            counters["net.skip.truncated"] += 1
            return None
        alen = (frame[4] << 8) | frame[5]
        smac = frame[6:12] if alen == 6 else b""
        etype = (frame[14] << 8) | frame[15]
        return ethertype_dispatch(etype, frame, 16, end, smac, b"", (), counters)
    if linktype == LINKTYPE_LINUX_SLL2:
        if end < 20:
            counters["net.skip.truncated"] += 1
            return None
        etype = (frame[0] << 8) | frame[1]
        smac = frame[12:18] if frame[11] == 6 else b""
        return ethertype_dispatch(etype, frame, 20, end, smac, b"", (), counters)
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_LEGACY_12, LINKTYPE_RAW_LEGACY_14):
        return _by_version(frame, 0, end, b"", b"", (), counters)
    if linktype == LINKTYPE_IPV4:
        return (4, 0, end, b"", b"", ())
    if linktype == LINKTYPE_IPV6:
        return (6, 0, end, b"", b"", ())
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if end < 4:
            counters["net.skip.truncated"] += 1
            return None
        # The family is in the capturing host's byte order (NULL) or big endian
        # (LOOP); a value above 0xFFFF means we read it in the wrong order.
        family = int.from_bytes(frame[0:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(frame[0:4], "big")
        if family == _AF_INET:
            return (4, 4, end, b"", b"", ())
        if family in _AF_INET6:
            return (6, 4, end, b"", b"", ())
        counters["net.skip.null_family"] += 1
        return None
    counters["net.skip.linktype"] += 1
    return None


def parse_ethernet(frame: bytes, off: int, end: int, counters) -> L2Result | None:
    """Parse an Ethernet header at ``off`` (also used for tunnelled inner frames)."""
    if end - off < 14:
        counters["net.skip.truncated"] += 1
        return None
    etype = (frame[off + 12] << 8) | frame[off + 13]
    if etype == ETH_IPV4:   # the common case first
        return (4, off + 14, end, frame[off + 6:off + 12], frame[off:off + 6], ())
    return ethertype_dispatch(etype, frame, off + 14, end,
                              frame[off + 6:off + 12], frame[off:off + 6], (), counters)


def ethertype_dispatch(etype: int, frame: bytes, off: int, end: int, smac: bytes,
                       dmac: bytes, vlans: tuple[int, ...], counters) -> L2Result | None:
    """Follow VLAN tags, MPLS and PPPoE from an EtherType to the IP header."""
    tags = 0
    while etype in VLAN_TPIDS:
        if end - off < 4 or tags >= _MAX_VLAN_TAGS:
            counters["net.skip.truncated"] += 1
            return None
        vlans = vlans + ((((frame[off] << 8) | frame[off + 1]) & 0x0FFF),)
        etype = (frame[off + 2] << 8) | frame[off + 3]
        off += 4
        tags += 1
    if etype == ETH_IPV4:
        return (4, off, end, smac, dmac, vlans)
    if etype == ETH_IPV6:
        return (6, off, end, smac, dmac, vlans)
    if etype == ETH_MPLS_UC or etype == ETH_MPLS_MC:
        return _mpls(frame, off, end, smac, dmac, vlans, counters)
    if etype == ETH_PPPOE_SESS:
        if end - off < 8:
            counters["net.skip.truncated"] += 1
            return None
        # The PPPoE length trims Ethernet padding; it counts the PPP protocol field.
        plen = (frame[off + 4] << 8) | frame[off + 5]
        pend = min(end, off + 6 + plen)
        proto = (frame[off + 6] << 8) | frame[off + 7]
        if proto == PPP_IPV4:
            return (4, off + 8, pend, smac, dmac, vlans)
        if proto == PPP_IPV6:
            return (6, off + 8, pend, smac, dmac, vlans)
        counters["net.skip.ppp"] += 1
        return None
    if etype == ETH_TEB:
        return parse_ethernet(frame, off, end, counters)
    if etype == ETH_ARP:
        counters["net.skip.arp"] += 1
    elif etype < 0x0600:
        counters["net.skip.llc"] += 1   # 802.3 length field: LLC/SNAP (STP, CDP, ...)
    elif etype == ETH_PPPOE_DISC:
        counters["net.skip.pppoe_discovery"] += 1
    else:
        counters["net.skip.unknown_ethertype"] += 1
    return None


def _mpls(frame: bytes, off: int, end: int, smac: bytes, dmac: bytes,
          vlans: tuple[int, ...], counters) -> L2Result | None:
    for _ in range(_MAX_MPLS_LABELS):
        if end - off < 4:
            counters["net.skip.truncated"] += 1
            return None
        bottom = frame[off + 2] & 0x01
        off += 4
        if bottom:
            break
    else:
        counters["net.skip.mpls"] += 1
        return None
    if off >= end:
        counters["net.skip.truncated"] += 1
        return None
    nibble = frame[off] >> 4
    if nibble == 0:
        # Pseudowire control word, then an Ethernet frame (EoMPLS).
        return parse_ethernet(frame, off + 4, end, counters)
    return _by_version(frame, off, end, smac, dmac, vlans, counters)


def _by_version(frame: bytes, off: int, end: int, smac: bytes, dmac: bytes,
                vlans: tuple[int, ...], counters) -> L2Result | None:
    if off >= end:
        counters["net.skip.truncated"] += 1
        return None
    v = frame[off] >> 4
    if v == 4:
        return (4, off, end, smac, dmac, vlans)
    if v == 6:
        return (6, off, end, smac, dmac, vlans)
    counters["net.skip.not_ip"] += 1
    return None

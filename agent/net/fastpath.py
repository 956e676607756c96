"""The RTP fast path for a whole batch of Ethernet frames, vectorised with numpy.

Owns: deciding, for every frame of a batch at once, whether it is the plain case the
engine's batch path takes (Ethernet II with up to two VLAN tags, 802.1Q or QinQ with any of
the TPIDs agent.net.link follows, or Linux cooked SLL / SLL2 as ``tcpdump -i any`` writes;
IPv4 without options, unfragmented, or IPv6 without extension headers; UDP; a payload that
looks like RTP), and reading what that path needs from it: the packed media keys
(``ip << 16 | port`` for IPv4, as ``EndpointMap`` packs them; ``V6_KEY | id << 16 | port``
for IPv6, with a small id per address from ``AddressIds``, so every key is one int64), the
duplicate key (``dedup.rtp_key`` / ``rtp_key6``, computed from the frame bytes in place),
the UDP length and the RTP header fields. Every other frame is left to the per-packet
decoder, which gives the same answer for the frames this one takes
(tests/engine/test_engine_batch.py replays every capture both ways).

Does not own routing (the engine's endpoint map) or what happens to the packets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.byterows import byte_rows
from agent.media.rtp import RTCP_MUX_FIRST, RTCP_MUX_LAST, RTP_VERSION_2, RTP_VERSION_MASK
from agent.net.dedup import rtp_key, rtp_keys6_of_rows, rtp_keys_of_words
from agent.net.link import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, VLAN_TPIDS
from agent.net.tunnels import GRE_ERSPAN_II, GRE_ERSPAN_III, GRE_TEB, VXLAN_PORT

__all__ = ["RtpFrames", "rtp_frames", "AddressIds", "V6_KEY", "TUNNEL_VXLAN", "TUNNEL_GRE", "FIELD_BYTES"]

FIELD_BYTES = 56                   # Ethernet 14 + IPv4 20 + UDP 8 + RTP 12 + 2 payload bytes
ROW_BYTES = FIELD_BYTES + 8        # room for two VLAN tags or a Linux cooked header


_TPIDS = np.array(sorted(VLAN_TPIDS), dtype=np.int32)
TUNNEL_VXLAN = 1                   # RtpFrames.tunnel: the decoder counts net.tunnel.vxlan
TUNNEL_GRE = 2                     # ... net.tunnel.gre (GRE with Ethernet inside: TEB, ERSPAN I-III)
_PROTO_GRE = 47
V6_KEY = 1 << 62                   # set in the media key of an IPv6 endpoint (IPv4 keys < 2**48)
V6_BYTES = 40 + 8 + 12 + 2         # IPv6 header, UDP, RTP header, 2 payload bytes (rtp_key6)


class AddressIds:
    """A small id for every IPv6 address the batch path meets, so that ``id << 16 | port``
    packs an IPv6 endpoint into an int64 key as exactly as an IPv4 one (no hashing: two
    addresses never share a key). Its owner starts a new table when it grows past ``MAX``
    (a spray of source addresses), between batches, when no key is held anywhere."""

    MAX = 1 << 16
    # Odd 64-bit constants mixing an address's two words into one sort key; a subclass with
    # a weaker mix shows that collisions only cost speed (tests).
    MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}
        self.raw: list[bytes] = []        # id -> the 16 address bytes

    def __len__(self) -> int:
        return len(self.raw)

    def of(self, raw16: bytes) -> int:
        i = self.ids.get(raw16)
        if i is None:
            i = self.ids[raw16] = len(self.raw)
            self.raw.append(raw16)
        return i

    def of_rows(self, addrs: np.ndarray) -> np.ndarray:
        """Ids of (n, 16) uint8 address rows: one dictionary lookup per distinct address."""
        if not len(addrs):
            return np.zeros(0, dtype=np.int64)
        rows = np.ascontiguousarray(addrs)
        words = rows.view("<u8")                       # (n, 2)
        # Distinct addresses by a 64-bit mix of the two words (an integer sort, much faster
        # than sorting 16-byte records), confirmed word for word: a collision falls back.
        with np.errstate(over="ignore"):
            mixed = (words[:, 0] * self.MIX[0]) ^ (words[:, 1] * self.MIX[1])
        _, first, inverse = np.unique(mixed, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        if not np.array_equal(words[first[inverse]], words):
            flat = rows.view(np.dtype((np.void, 16))).ravel()
            _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
            inverse = inverse.ravel()
        ids = np.fromiter((self.of(rows[i].tobytes()) for i in first.tolist()), dtype=np.int64, count=len(first))
        return ids[inverse]

    def key(self, raw16: bytes, port: int) -> int:
        return V6_KEY | self.of(raw16) << 16 | port


@dataclass(slots=True)
class RtpFrames:
    cand: np.ndarray               # bool: the batch path may take this frame
    dst_key: np.ndarray            # int64 ip << 16 | port
    src_key: np.ndarray
    dedup_key: np.ndarray          # uint64, see dedup.rtp_key
    udp_len: np.ndarray            # int64 UDP length (header included)
    b0: np.ndarray                 # uint8 first RTP byte (version, padding, extension, CSRC count)
    b1: np.ndarray                 # uint8 marker | payload type
    seq: np.ndarray                # int64
    rtp_ts: np.ndarray             # int64
    ssrc: np.ndarray               # int64
    full_path: np.ndarray          # bool: the per-packet path decodes this frame fully (VLAN tags, SLL)
    safe: np.ndarray               # bool: not RTP, and harmless to step over (see rtp_frames)
    payload_at: np.ndarray         # int64 offset of the UDP payload in the frame (42 untagged Ethernet, +4 per tag)
    tunnel: np.ndarray             # int8: RTP inside a tunnel, TUNNEL_VXLAN or TUNNEL_GRE (else 0)
    l2_at: np.ndarray              # int64 offset of the Ethernet header whose MACs and VLANs count
                                   # (0; inside a tunnel the inner one: what was on the mirrored wire)


def _dedup_keys(f: np.ndarray, cand: np.ndarray, udp_len: np.ndarray) -> np.ndarray:
    """``dedup.rtp_key`` of every row. Its fingerprint's four little-endian words are frame bytes
    24-31 with the IP id in place of the header checksum (bytes 24-25), then 32-39, 40-47 and
    48-55: one contiguous copy, no gather."""
    words = np.ascontiguousarray(f[:, 24:56]).view("<u8")
    ident_le = f[:, 18].astype(np.uint64) | (f[:, 19].astype(np.uint64) << np.uint64(8))
    w0 = (words[:, 0] & np.uint64(0xFFFFFFFFFFFF0000)) | ident_le
    keys = rtp_keys_of_words(w0, words[:, 1], words[:, 2], words[:, 3])
    short = np.flatnonzero(cand & (udp_len < 22))
    if len(short):
        # The fingerprint is zero-padded after a short UDP payload: compute those as rtp_key does.
        for i in short.tolist():
            udp = f[i, 34:34 + int(udp_len[i])].tobytes()
            keys[i] = rtp_key((int(f[i, 18]) << 8) | int(f[i, 19]), f[i, 26:30].tobytes(), f[i, 30:34].tobytes(), udp)
    return keys


def _rows(data: np.ndarray, starts: np.ndarray, width: int = ROW_BYTES) -> np.ndarray:
    """The first ``width`` bytes of every frame, zero-padded past the end of the buffer."""
    last = len(data) - width
    if last >= 0:
        rows = byte_rows(data, np.minimum(starts, last), width)
    else:
        rows = np.zeros((len(starts), width), dtype=np.uint8)
    tail = np.flatnonzero(starts > last)
    if len(tail):
        lo = int(starts[tail].min())
        padded = np.concatenate((data[lo:], np.zeros(width, dtype=np.uint8)))
        rows[tail] = byte_rows(padded, starts[tail] - lo, width)
    return rows


def rtp_frames(buf: bytes, starts: np.ndarray, lens: np.ndarray,
               linktype: int = LINKTYPE_ETHERNET, v6_ids: AddressIds | None = None,
               tunnels: bool = False) -> RtpFrames | None:
    """Fields of every frame; None when no frame can qualify (or the link type is not one of
    Ethernet, Linux cooked SLL or SLL2). IPv6 frames qualify only with ``v6_ids``, the
    caller's table of address ids; with ``tunnels``, so does RTP in an Ethernet frame carried
    over IPv4 by VXLAN (cloud traffic mirroring) or GRE (ERSPAN remote SPAN, bridging), read
    from the inner frame."""
    if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        return None
    data = np.frombuffer(buf, dtype=np.uint8)
    if not len(starts):
        return None
    # One row of the first ROW_BYTES bytes per frame (a frame shorter than a candidate's
    # minimum never becomes one whatever its row holds), moved on so that the IPv4 header
    # starts at byte 14 as in an untagged Ethernet frame: 4 bytes per VLAN tag (up to two: a
    # QinQ carrier tag and the customer's), 2 for a Linux cooked header (16 bytes), 6 for SLL2
    # (20 bytes). Only the untagged Ethernet frame is one the per-packet path takes on its own
    # fast path; the others it decodes fully (``full_path``), which the engine mirrors.
    rows = _rows(data, starts)
    if linktype == LINKTYPE_ETHERNET:
        etype = (rows[:, 12].astype(np.int32) << 8) | rows[:, 13]
        one = np.isin(etype, _TPIDS)
        if one.any():
            inner = (rows[:, 16].astype(np.int32) << 8) | rows[:, 17]
            two = one & np.isin(inner, _TPIDS)
            extra = (one.astype(np.int64) + two) << 2
            f = rows[:, :FIELD_BYTES].copy()
            for tags in (1, 2):
                sel = extra == 4 * tags
                f[sel] = rows[sel, 4 * tags:4 * tags + FIELD_BYTES]
            full_path = one
        else:
            f = rows[:, :FIELD_BYTES]
            extra = np.zeros(len(starts), dtype=np.int64)
            full_path = one
        ipv4 = (f[:, 12] == 8) & (f[:, 13] == 0)
    else:
        shift = 2 if linktype == LINKTYPE_LINUX_SLL else 6
        at = 14 if linktype == LINKTYPE_LINUX_SLL else 0          # where the protocol field is
        ipv4 = (rows[:, at] == 8) & (rows[:, at + 1] == 0)
        f = rows[:, shift:shift + FIELD_BYTES]
        extra = np.full(len(starts), shift, dtype=np.int64)
        full_path = np.ones(len(starts), dtype=bool)
    cand = ((lens >= FIELD_BYTES + extra) & ipv4 & (f[:, 14] == 0x45)
            & (f[:, 23] == 17) & ((f[:, 20] & 0x3F) == 0) & (f[:, 21] == 0))
    total = (f[:, 16].astype(np.int64) << 8) | f[:, 17]
    udp_len = (f[:, 38].astype(np.int64) << 8) | f[:, 39]
    b0 = f[:, 42]
    b1 = f[:, 43]
    cand &= ((total >= 28) & (total <= lens - 14 - extra) & (udp_len >= 20) & (udp_len <= total - 20)
             & ((b0 & RTP_VERSION_MASK) == RTP_VERSION_2) & ((b1 < RTCP_MUX_FIRST) | (b1 > RTCP_MUX_LAST)))
    # The decoder takes UDP to the VXLAN port as a tunnel: its inside is read below, or the
    # frame is left to the full path.
    to_vxlan = (f[:, 36] == VXLAN_PORT >> 8) & (f[:, 37] == VXLAN_PORT & 0xFF)
    cand &= ~to_vxlan
    v6 = _ipv6_rows(data, starts, lens, extra, (f[:, 12:14] if linktype == LINKTYPE_ETHERNET
                                                else rows[:, at:at + 2])) if v6_ids is not None else None
    inner = None
    if tunnels:
        # Outer IPv4 as the decoder reads it: no options, unfragmented, a length the frame holds.
        outer = ((lens >= FIELD_BYTES + extra) & ipv4 & (f[:, 14] == 0x45) & ((f[:, 20] & 0x3F) == 0)
                 & (f[:, 21] == 0) & (total <= lens - 14 - extra))
        # VXLAN: UDP to its port whose length the packet holds, a valid VNI (I flag) and room
        # for an inner Ethernet header, which starts after the 8-byte VXLAN header.
        vx = np.flatnonzero(outer & to_vxlan & (f[:, 23] == 17) & (udp_len >= 8 + 8 + 14)
                            & (udp_len <= total - 20) & ((b0 & 0x08) != 0))
        gre = np.flatnonzero(outer & (f[:, 23] == _PROTO_GRE))
        idx, inner_at, length, kind = _gre_inner(data, starts, extra, total, gre)
        idx = np.concatenate((vx, idx))
        if len(idx):
            inner_at = np.concatenate((50 + extra[vx], inner_at))
            length = np.concatenate((udp_len[vx] - 16, length))
            kind = np.concatenate((np.full(len(vx), TUNNEL_VXLAN, dtype=np.int8), kind))
            # The inner frames are Ethernet frames like any other (one level: no tunnel in a tunnel).
            found = rtp_frames(buf, starts[idx] + inner_at, length, LINKTYPE_ETHERNET, v6_ids)
            if found is not None and found.cand.any():
                inner = (idx, inner_at, kind, found)
    if v6 is None and inner is None and not cand.any():
        return None
    # Signalling a window of the batch path can step over: plain IPv4 TCP, or UDP whose payload
    # is not RTP (both are de-duplicated in the other table, see FrameDecoder), not fragments
    # or tunnels (whose insides could be RTP).
    plain = (lens >= FIELD_BYTES + extra) & ipv4 & (f[:, 14] == 0x45) & ((f[:, 20] & 0x3F) == 0) & (f[:, 21] == 0)
    safe = plain & ((f[:, 23] == 6) | ((f[:, 23] == 17) & ~to_vxlan & ((b0 & RTP_VERSION_MASK) != RTP_VERSION_2)))
    dedup_key = _dedup_keys(f, cand, udp_len)
    # Shifted by two bytes, the IPv4 addresses, the RTP timestamp and SSRC fall on 4-byte
    # boundaries and the ports and sequence number on 2-byte ones: one copy, then views.
    shifted = np.ascontiguousarray(f[:, 2:54])
    u32 = shifted.view(">u4")
    u16 = shifted.view(">u2")
    fx = RtpFrames(
        cand=cand,
        dst_key=(u32[:, 7].astype(np.int64) << 16) | u16[:, 17],
        src_key=(u32[:, 6].astype(np.int64) << 16) | u16[:, 16],
        dedup_key=dedup_key,
        udp_len=udp_len,
        b0=b0.copy(),
        b1=b1.copy(),
        seq=u16[:, 21].astype(np.int64),
        rtp_ts=u32[:, 11].astype(np.int64),
        ssrc=u32[:, 12].astype(np.int64),
        full_path=full_path,
        safe=safe,
        payload_at=42 + extra,
        tunnel=np.zeros(len(starts), dtype=np.int8),
        l2_at=np.zeros(len(starts), dtype=np.int64),
    )
    if v6 is not None:
        cand[v6[0]] = True
        _fill_ipv6(fx, v6, v6_ids, extra)
    if inner is not None:
        _fill_inner(fx, *inner)
    return fx


def _gre_inner(data: np.ndarray, starts: np.ndarray, extra: np.ndarray, total: np.ndarray,
               gre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(frame indices, inner frame offsets, inner lengths, TUNNEL_GRE) of the GRE frames at
    ``gre`` (outer IPv4 checked) that carry an Ethernet frame, read as ``tunnels.gre`` reads
    them: version 0, no routing; checksum, key and sequence fields skipped; transparent
    Ethernet bridging, ERSPAN type I (no sequence, no header) and II (8-byte header), ERSPAN
    type III (12 bytes, 8 more with the O bit). GRE carrying IP itself is left to the decoder."""
    empty = np.zeros(0, dtype=np.int64)
    if not len(gre):
        return empty, empty, empty, np.zeros(0, dtype=np.int8)
    l4 = 34 + extra[gre]                                   # the GRE header, in the frame
    head = _rows(data, starts[gre] + l4, 32)
    flags = (head[:, 0].astype(np.int64) << 8) | head[:, 1]
    ptype = (head[:, 2].astype(np.int64) << 8) | head[:, 3]
    size = 4 + 4 * (((flags >> 15) & 1) + ((flags >> 13) & 1) + ((flags >> 12) & 1))
    seq = (flags & 0x1000) != 0
    erspan3_o = head[np.arange(len(gre)), np.minimum(size + 11, 31)] & 1
    size = size + np.where(ptype == GRE_ERSPAN_II, np.where(seq, 8, 0),
                           np.where(ptype == GRE_ERSPAN_III, 12 + 8 * erspan3_o, 0))
    length = total[gre] - 20 - size
    ok = (((flags & 0x0007) == 0) & ((flags & 0x4000) == 0)
          & ((ptype == GRE_TEB) | (ptype == GRE_ERSPAN_II) | (ptype == GRE_ERSPAN_III))
          & (length >= 14))
    ok = np.flatnonzero(ok)
    return gre[ok], (l4 + size)[ok], length[ok], np.full(len(ok), TUNNEL_GRE, dtype=np.int8)


def _fill_inner(fx: RtpFrames, tunnelled: np.ndarray, inner_at: np.ndarray, kind: np.ndarray,
                found: RtpFrames) -> None:
    """The RTP found inside tunnelled frames, as fields of those (outer) frames."""
    take = np.flatnonzero(found.cand)
    rows = tunnelled[take]
    for name in ("dst_key", "src_key", "dedup_key", "udp_len", "b0", "b1", "seq", "rtp_ts", "ssrc"):
        getattr(fx, name)[rows] = getattr(found, name)[take]
    fx.cand[rows] = True
    fx.full_path[rows] = True              # the decoder takes tunnels on its full path
    fx.safe[rows] = False
    fx.payload_at[rows] = inner_at[take] + found.payload_at[take]
    fx.tunnel[rows] = kind[take]
    fx.l2_at[rows] = inner_at[take]


def _ipv6_rows(data: np.ndarray, starts: np.ndarray, lens: np.ndarray, extra: np.ndarray,
               ethertype: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(frame indices, rows from the IPv6 header on, UDP lengths) of the IPv6 frames the batch
    path may take: no extension header, UDP (not to the VXLAN port), a payload length the
    frame holds (not 0, a jumbogram), a payload that looks like RTP; None if there are none."""
    is6 = (ethertype[:, 0] == 0x86) & (ethertype[:, 1] == 0xDD) & (lens >= 14 + extra + V6_BYTES)
    if not is6.any():
        return None
    idx = np.flatnonzero(is6)
    r6 = _rows(data, starts[idx] + 14 + extra[idx], V6_BYTES)
    plen = (r6[:, 4].astype(np.int64) << 8) | r6[:, 5]
    ulen = (r6[:, 44].astype(np.int64) << 8) | r6[:, 45]
    ok = ((r6[:, 0] >> 4 == 6) & (r6[:, 6] == 17) & (plen > 0) & (plen <= lens[idx] - 54 - extra[idx])
          & (ulen >= 20) & (ulen <= plen) & ((r6[:, 48] & RTP_VERSION_MASK) == RTP_VERSION_2)
          & ((r6[:, 49] < RTCP_MUX_FIRST) | (r6[:, 49] > RTCP_MUX_LAST))
          & ~((r6[:, 42] == VXLAN_PORT >> 8) & (r6[:, 43] == VXLAN_PORT & 0xFF)))
    if not ok.any():
        return None
    return idx[ok], r6[ok], ulen[ok]


def _fill_ipv6(fx: RtpFrames, v6: tuple[np.ndarray, np.ndarray, np.ndarray], v6_ids: AddressIds,
               extra: np.ndarray) -> None:
    """The fields of the IPv6 candidates (their IPv4 reading above is meaningless)."""
    idx, r6, ulen = v6
    m = len(idx)
    ids = v6_ids.of_rows(np.concatenate((r6[:, 8:24], r6[:, 24:40])))
    be16 = r6[:, 40:52].copy().view(">u2").astype(np.int64)     # ports, length, checksum, RTP 0-3
    be32 = r6[:, 52:60].copy().view(">u4").astype(np.int64)     # RTP timestamp, SSRC
    fx.src_key[idx] = V6_KEY | (ids[:m] << 16) | be16[:, 0]
    fx.dst_key[idx] = V6_KEY | (ids[m:] << 16) | be16[:, 1]
    fx.dedup_key[idx] = rtp_keys6_of_rows(r6, ulen)
    fx.udp_len[idx] = ulen
    fx.b0[idx] = r6[:, 48]
    fx.b1[idx] = r6[:, 49]
    fx.seq[idx] = be16[:, 5]
    fx.rtp_ts[idx] = be32[:, 0]
    fx.ssrc[idx] = be32[:, 1]
    fx.full_path[idx] = True               # the per-packet path decodes IPv6 fully
    fx.safe[idx] = False
    fx.payload_at[idx] = 62 + extra[idx]

"""The RTP fast path for a whole batch of Ethernet frames, vectorised with numpy.

Owns: deciding, for every frame of a batch at once, whether it is the plain case the
engine's batch path takes (Ethernet II with up to two VLAN tags, 802.1Q or QinQ with any
of the TPIDs agent.net.link follows, or Linux cooked SLL / SLL2 as ``tcpdump -i any`` writes; IPv4 without options, unfragmented UDP, a payload that
looks like RTP), and reading what that path needs from it: the packed media keys
(``ip << 16 | port``, as ``EndpointMap`` packs them), the duplicate key
(``dedup.rtp_key``, computed from the frame bytes in place), the UDP length and the RTP header fields. Every other frame is
left to the per-packet decoder, which gives the same answer for the frames this one
takes (tests/engine/test_engine_batch.py replays every capture both ways).

Does not own routing (the engine's endpoint map) or what happens to the packets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.net.dedup import rtp_key, rtp_keys_of_words
from agent.net.link import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, VLAN_TPIDS
from agent.net.tunnels import VXLAN_PORT

__all__ = ["RtpFrames", "rtp_frames", "FIELD_BYTES"]

FIELD_BYTES = 56                   # Ethernet 14 + IPv4 20 + UDP 8 + RTP 12 + 2 payload bytes
ROW_BYTES = FIELD_BYTES + 8        # room for two VLAN tags or a Linux cooked header


_TPIDS = np.array(sorted(VLAN_TPIDS), dtype=np.int32)


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


def _rows(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The first ROW_BYTES bytes of every frame, zero-padded past the end of the buffer."""
    last = len(data) - ROW_BYTES
    if last >= 0:
        rows = sliding_window_view(data, ROW_BYTES)[np.minimum(starts, last)]
    else:
        rows = np.zeros((len(starts), ROW_BYTES), dtype=np.uint8)
    tail = np.flatnonzero(starts > last)
    if len(tail):
        lo = int(starts[tail[0]])
        padded = np.concatenate((data[lo:], np.zeros(ROW_BYTES, dtype=np.uint8)))
        rows[tail] = sliding_window_view(padded, ROW_BYTES)[starts[tail] - lo]
    return rows


def rtp_frames(buf: bytes, starts: np.ndarray, lens: np.ndarray,
               linktype: int = LINKTYPE_ETHERNET) -> RtpFrames | None:
    """Fields of every frame; None when no frame can qualify (or the link type is not one of
    Ethernet, Linux cooked SLL or SLL2)."""
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
             & ((b0 & 0xC0) == 0x80) & ((b1 < 192) | (b1 > 223)))
    # The decoder takes UDP to the VXLAN port as a tunnel: leave those frames to the full path.
    vxlan = (f[:, 36] == VXLAN_PORT >> 8) & (f[:, 37] == VXLAN_PORT & 0xFF)
    cand &= ~vxlan
    if not cand.any():
        return None
    # Signalling a window of the batch path can step over: plain IPv4 TCP, or UDP whose payload
    # is not RTP (both are de-duplicated in the other table, see FrameDecoder), not fragments
    # or tunnels (whose insides could be RTP).
    plain = (lens >= FIELD_BYTES + extra) & ipv4 & (f[:, 14] == 0x45) & ((f[:, 20] & 0x3F) == 0) & (f[:, 21] == 0)
    safe = plain & ((f[:, 23] == 6) | ((f[:, 23] == 17) & ~vxlan & ((b0 & 0xC0) != 0x80)))
    dedup_key = _dedup_keys(f, cand, udp_len)
    # Shifted by two bytes, the IPv4 addresses, the RTP timestamp and SSRC fall on 4-byte
    # boundaries and the ports and sequence number on 2-byte ones: one copy, then views.
    shifted = np.ascontiguousarray(f[:, 2:54])
    u32 = shifted.view(">u4")
    u16 = shifted.view(">u2")
    return RtpFrames(
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
    )

"""RTP wire format (RFC 3550), ZRTP recognition and RFC 4733 telephone-event payloads.

Owns the byte-level parsing used on the RTP fast path: one ``struct.unpack_from`` per
packet, no per-packet objects, ``None`` for anything that is not plain RTP (too short,
wrong version, RTCP multiplexed on the RTP port, CSRC list / header extension / padding
running past the end). Does not own stream state (``sequencer.py``) or decoding.
"""

from __future__ import annotations

import struct

__all__ = ["parse_rtp", "looks_like_rtp", "is_rtcp", "is_zrtp", "count_not_rtp", "parse_telephone_event", "RTP_HEADER_BYTES",
           "RTP_VERSION_MASK", "RTP_VERSION_2", "RTCP_MUX_FIRST", "RTCP_MUX_LAST"]

RTP_HEADER_BYTES = 12
# The one test of "RTP, not RTCP", used per packet here and by the numpy fast path
# (agent/net/fastpath.py) through these constants: version 2 in the first byte's top two
# bits, and a second byte outside 192..223, where RTCP multiplexed on the RTP port (RFC 5761)
# puts its packet type (SR 200, RR 201, SDES, BYE, APP, feedback, XR; RTP must not use
# marker + PT 64..95).
RTP_VERSION_MASK = 0xC0
RTP_VERSION_2 = 0x80
RTCP_MUX_FIRST = 192
RTCP_MUX_LAST = 223

_HDR = struct.Struct("!BBHII")
_EXT_HDR = struct.Struct("!HH")
_EVENT = struct.Struct("!BBH")

RtpFields = tuple[int, bool, int, int, int, int, int]


def looks_like_rtp(payload) -> bool:
    """At least a header, RTP version 2, not RTCP multiplexed on the port."""
    return (len(payload) >= RTP_HEADER_BYTES and payload[0] & RTP_VERSION_MASK == RTP_VERSION_2
            and not RTCP_MUX_FIRST <= payload[1] <= RTCP_MUX_LAST)


def is_rtcp(data) -> bool:
    """RTCP multiplexed on the RTP port (version 2, packet type 192..223)."""
    return (len(data) >= 2 and data[0] & RTP_VERSION_MASK == RTP_VERSION_2
            and RTCP_MUX_FIRST <= data[1] <= RTCP_MUX_LAST)


def parse_rtp(data: bytes) -> RtpFields | None:
    """``(payload_type, marker, seq, rtp_ts, ssrc, payload_start, payload_end)`` or None.

    None when the datagram is not RTP: shorter than 12 bytes, version != 2, RTCP
    multiplexed on the RTP port (RFC 5761: the second byte 192..223, i.e. the RTCP packet
    types 192..223 seen as marker + PT 64..95, which RTP must not use), or a CSRC list,
    header extension or padding count that runs past the end of the datagram.
    """
    if not looks_like_rtp(data):
        return None
    n = len(data)
    b0, b1, seq, ts, ssrc = _HDR.unpack_from(data, 0)
    start = 12 + ((b0 & 0x0F) << 2)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if start + 4 > n:
            return None
        _profile, words = _EXT_HDR.unpack_from(data, start)
        start += 4 + (words << 2)
    end = n
    if b0 & 0x20:  # padding: the last byte counts the padding bytes, itself included
        pad = data[n - 1]
        if pad == 0:
            return None
        end = n - pad
    if start > end:
        return None
    return b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, start, end


def is_zrtp(data: bytes) -> bool:
    """True for a ZRTP packet (RFC 6189): first byte 0x10 and the magic cookie 'ZRTP' at 4."""
    return len(data) >= 12 and data[0] == 0x10 and data[4:8] == b"ZRTP"


def count_not_rtp(tally, data: bytes, counters=None) -> bool:
    """A datagram on a call's media port that is not plain RTP, classified once for the
    capture stage and the sequencer: counted on ``tally`` (its ``zrtp_seen``,
    ``zrtp_packets``, ``rtcp`` and ``not_rtp`` attributes) and, when given, in ``counters``
    (media.zrtp, media.skip.rtcp_mux, media.skip.not_rtp). True for ZRTP (media of the call,
    about to be encrypted; not logged), False for the rest."""
    if is_zrtp(data):
        tally.zrtp_seen = True
        tally.zrtp_packets += 1
        name = "media.zrtp"
    elif is_rtcp(data):
        tally.rtcp += 1
        name = "media.skip.rtcp_mux"
    else:
        tally.not_rtp += 1
        name = "media.skip.not_rtp"
    if counters is not None:
        counters[name] += 1
    return name == "media.zrtp"


def parse_telephone_event(payload: bytes) -> tuple[int, bool, int, int] | None:
    """``(event, end, volume, duration_ticks)`` of an RFC 4733 event payload, or None.

    Only the first 4-byte event block is read (redundant blocks repeat older events).
    """
    if len(payload) < 4:
        return None
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    return event, bool(flags & 0x80), flags & 0x3F, duration

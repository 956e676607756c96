"""The RTP fast path for a whole batch of Ethernet frames, vectorised with numpy.

Owns: deciding, for every frame of a batch at once, whether it is the plain case the
engine's batch path takes (Ethernet II, IPv4 without options, unfragmented UDP, a payload
that looks like RTP), and reading what that path needs from it: the packed media keys
(``ip << 16 | port``, as ``EndpointMap`` packs them), the duplicate key
(``dedup.rtp_keys``), the UDP length and the RTP header fields. Every other frame is
left to the per-packet decoder, which gives the same answer for the frames this one
takes (tests/engine/test_engine_batch.py replays every capture both ways).

Does not own routing (the engine's endpoint map) or what happens to the packets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.net.dedup import rtp_keys

__all__ = ["RtpFrames", "rtp_frames", "FIELD_BYTES"]

FIELD_BYTES = 56                   # Ethernet 14 + IPv4 20 + UDP 8 + RTP 12 + 2 payload bytes
_FINGERPRINT_COLUMNS = np.r_[18:20, 26:56]    # IP id, addresses, UDP header, 14 payload bytes


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


def _be(cols: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(cols).view(dtype)[:, 0].astype(np.int64)


def rtp_frames(buf: bytes, starts: np.ndarray, lens: np.ndarray) -> RtpFrames | None:
    """Fields of every frame (Ethernet link type); None when no frame can qualify."""
    data = np.frombuffer(buf, dtype=np.uint8)
    if len(data) < FIELD_BYTES or not len(starts):
        return None
    # One row of the first FIELD_BYTES bytes per frame (rows of frames shorter than that are
    # clamped inside the buffer and never become candidates).
    rows = sliding_window_view(data, FIELD_BYTES)[np.minimum(starts, len(data) - FIELD_BYTES)]
    f = rows
    cand = ((lens >= FIELD_BYTES) & (f[:, 12] == 8) & (f[:, 13] == 0) & (f[:, 14] == 0x45)
            & (f[:, 23] == 17) & ((f[:, 20] & 0x3F) == 0) & (f[:, 21] == 0))
    total = (f[:, 16].astype(np.int64) << 8) | f[:, 17]
    udp_len = (f[:, 38].astype(np.int64) << 8) | f[:, 39]
    b0 = f[:, 42]
    b1 = f[:, 43]
    cand &= ((total >= 28) & (total <= lens - 14) & (udp_len >= 20) & (udp_len <= total - 20)
             & ((b0 & 0xC0) == 0x80) & ((b1 < 192) | (b1 > 223)))
    if not cand.any():
        return None
    fingerprint = np.ascontiguousarray(f[:, _FINGERPRINT_COLUMNS])     # (n, 32)
    short = cand & (udp_len < 22)
    if short.any():
        # The fingerprint is zero-padded after the end of a short UDP payload, as rtp_key does.
        for i in np.flatnonzero(short).tolist():
            fingerprint[i, 10 + int(udp_len[i]):] = 0
    return RtpFrames(
        cand=cand,
        dst_key=(_be(f[:, 30:34], ">u4") << 16) | _be(f[:, 36:38], ">u2"),
        src_key=(_be(f[:, 26:30], ">u4") << 16) | _be(f[:, 34:36], ">u2"),
        dedup_key=rtp_keys(fingerprint),
        udp_len=udp_len,
        b0=b0.copy(),
        b1=b1.copy(),
        seq=_be(f[:, 44:46], ">u2"),
        rtp_ts=_be(f[:, 46:50], ">u4"),
        ssrc=_be(f[:, 50:54], ">u4"),
    )

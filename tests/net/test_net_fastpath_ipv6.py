"""The batch fast path's IPv6 reading: which frames it takes, the fields it reads (checked
against the per-packet decoder), and the address ids that keep every media key one int64."""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pytest

from agent.net.decode import FrameDecoder
from agent.net.dedup import rtp_key6
from agent.net.fastpath import V6_KEY, AddressIds, rtp_frames

from _net_testlib import as_batch

SRC = bytes.fromhex("20010db8000000000000000000000a01")
DST = bytes.fromhex("20010db8000000000000000000000b02")


def _frame(*, seq: int = 7, next_header: int = 17, plen_delta: int = 0, payload: bytes | None = None,
           tags: bytes = b"", ext: bytes = b"", jumbo: bool = False, flow: int = 0x12345) -> bytes:
    rtp = payload if payload is not None else struct.pack("!BBHII", 0x80, 8, seq, 160 * seq, 0xCAFE) + bytes(160)
    udp = struct.pack("!HHHH", 40000, 50000, 8 + len(rtp), 0) + rtp
    body = ext + udp
    plen = 0 if jumbo else len(body) + plen_delta
    ip6 = struct.pack("!IHBB", 0x60000000 | flow, plen, next_header, 64) + SRC + DST
    return b"\x02" * 6 + b"\x04" * 6 + tags + b"\x86\xdd" + ip6 + body


def test_ipv6_rtp_fields_match_the_decoder():
    frames = [_frame(seq=s) for s in (1, 2, 3)] + [_frame(seq=9, tags=b"\x88\xa8\x00\x64\x81\x00\x00\x07")]
    buf, starts, lens = as_batch(frames)
    ids = AddressIds()
    fx = rtp_frames(buf, starts, lens, 1, ids)
    assert fx is not None and fx.cand.all() and fx.full_path.all() and not fx.safe.any()
    assert fx.seq.tolist() == [1, 2, 3, 9]
    assert fx.rtp_ts.tolist() == [160, 320, 480, 1440]
    assert set(fx.ssrc.tolist()) == {0xCAFE}
    assert fx.udp_len.tolist() == [180] * 4
    assert fx.payload_at.tolist() == [62, 62, 62, 70]
    assert (fx.src_key & 0xFFFF).tolist() == [40000] * 4 and (fx.dst_key & 0xFFFF).tolist() == [50000] * 4
    assert all(k & V6_KEY for k in fx.src_key.tolist() + fx.dst_key.tolist())
    assert ids.raw[(int(fx.src_key[0]) & ~V6_KEY) >> 16] == SRC
    assert ids.raw[(int(fx.dst_key[3]) & ~V6_KEY) >> 16] == DST
    # The duplicate key is the one the per-packet decoder files the packet under.
    for i, frame in enumerate(frames):
        at = 12 + (8 if i == 3 else 0)
        udp = frame[at + 2 + 40:]
        assert int(fx.dedup_key[i]) == rtp_key6(0x12345, SRC, DST, udp)
        dgram = FrameDecoder(Counter()).decode(0, 1, frame)
        assert dgram is not None and dgram.payload == buf[starts[i] + fx.payload_at[i]:starts[i] + lens[i]]


def test_ipv6_frames_the_batch_path_leaves_to_the_decoder():
    rtcp = struct.pack("!BBHI", 0x80, 200, 6, 0xCAFE) + bytes(20)
    hop_by_hop = bytes([17, 0]) + bytes(6)
    frames = [_frame(), _frame(next_header=0, ext=hop_by_hop), _frame(jumbo=True), _frame(plen_delta=4),
              _frame(payload=rtcp), _frame(tags=b"\x81\x00\x00\x01" * 3), _frame(next_header=6)]
    buf, starts, lens = as_batch(frames)
    fx = rtp_frames(buf, starts, lens, 1, AddressIds())
    assert fx.cand.tolist() == [True, False, False, False, False, False, False]
    # Without an id table the batch path takes no IPv6 at all.
    assert rtp_frames(buf, starts, lens, 1, None) is None


class CollidingIds(AddressIds):
    MIX = (np.uint64(0), np.uint64(0))          # every address mixes to the same key


def test_address_ids_are_exact_even_when_the_mix_collides():
    rng = np.random.default_rng(5)
    addrs = rng.integers(0, 256, (30, 16), dtype=np.uint8)
    pick = rng.integers(0, 30, 2000)
    for table in (AddressIds, CollidingIds):
        ids = table()
        got = ids.of_rows(addrs[pick])
        assert [ids.raw[g] for g in got.tolist()] == [addrs[p].tobytes() for p in pick.tolist()]
        assert len(ids) == len(set(pick.tolist()))
        assert ids.of(addrs[pick[0]].tobytes()) == got[0]


@pytest.mark.parametrize("linktype,header", [(113, b"\x00\x00\x00\x01\x00\x06" + b"\x04" * 6 + b"\x00\x00\x86\xdd"),
                                             (276, b"\x86\xdd\x00\x00" + struct.pack("!IHBB", 2, 1, 0, 6)
                                              + b"\x04" * 6 + b"\x00\x00")])
def test_ipv6_in_linux_cooked_captures(linktype, header):
    frame = header + _frame()[14:]
    buf, starts, lens = as_batch([frame, frame])
    fx = rtp_frames(buf, starts, lens, linktype, AddressIds())
    assert fx.cand.all() and fx.payload_at.tolist() == [len(header) + 48] * 2 and fx.seq.tolist() == [7, 7]

"""The batch fast path inside tunnels (VXLAN from cloud traffic mirroring, GRE/ERSPAN from
remote SPAN): which tunnelled frames it takes, and the inner fields it reads, checked
against the per-packet decoder."""

from __future__ import annotations

import struct
import sys
from collections import Counter
from pathlib import Path

from agent.net.decode import FrameDecoder
from agent.net.fastpath import TUNNEL_GRE, TUNNEL_VXLAN, AddressIds, rtp_frames

from _net_testlib import as_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synth import in_erspan, in_vxlan, ip_frame, to_ipv6, udp_frame, with_tags  # noqa: E402

A, B = bytes([10, 1, 0, 5]), bytes([10, 2, 0, 5])


def _rtp(seq: int) -> bytes:
    inner = struct.pack("!BBHII", 0x80, 0, seq, 160 * seq, 0xBEEF) + bytes(160)
    return udp_frame(bytes.fromhex("020000000011"), bytes.fromhex("020000000022"), A, B, 40000, 50000, inner, seq)


def test_inner_rtp_fields_match_the_decoder():
    frames = [in_vxlan(_rtp(1), 1), in_vxlan(with_tags(_rtp(2), b"\x81\x00\x00\x07\x81\x00\x00\x08"), 2),
              in_vxlan(to_ipv6(_rtp(3)), 3)]
    buf, starts, lens = as_batch(frames)
    fx = rtp_frames(buf, starts, lens, 1, AddressIds(), tunnels=True)
    assert fx.cand.tolist() == [True, True, True] and fx.tunnel.all() and fx.full_path.all()
    assert fx.seq.tolist() == [1, 2, 3] and fx.ssrc.tolist() == [0xBEEF] * 3
    assert fx.l2_at.tolist() == [50, 50, 50]                # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    assert (fx.dst_key[:2] >> 16).tolist() == [int.from_bytes(B, "big")] * 2
    for i, frame in enumerate(frames):
        dgram = FrameDecoder(Counter()).decode(0, 1, frame)
        assert dgram is not None and (dgram.src_port, dgram.dst_port) == (40000, 50000)
        assert dgram.payload == buf[starts[i] + fx.payload_at[i]:starts[i] + lens[i]]
        assert dgram.src_mac == buf[starts[i] + fx.l2_at[i] + 6:starts[i] + fx.l2_at[i] + 12]


def test_tunnelled_frames_left_to_the_decoder():
    good = in_vxlan(_rtp(1), 1)
    no_vni = good[:42] + bytes([0]) + good[43:]                 # I flag clear: not a VXLAN tunnel
    short = in_vxlan(b"\x02" * 13, 4)                            # no room for an inner Ethernet header
    rtcp = in_vxlan(udp_frame(b"\x02" * 6, b"\x04" * 6, A, B, 40001, 50001,
                              struct.pack("!BBHI", 0x80, 200, 6, 1) + bytes(20)), 5)
    frames = [good, no_vni, short, rtcp]
    buf, starts, lens = as_batch(frames)
    assert rtp_frames(buf, starts, lens, 1, AddressIds(), tunnels=True).cand.tolist() == [True, False, False, False]
    # Without tunnels=True (a decoder that does not follow tunnels) none is taken.
    assert rtp_frames(buf, starts, lens, 1, AddressIds()) is None


def test_inner_rtp_of_gre_and_erspan_match_the_decoder():
    frames = [in_erspan(_rtp(1), 1, 2), in_erspan(_rtp(2), 2, 3), in_erspan(_rtp(3), 3, 1),
              in_erspan(_rtp(4), 4, 0), in_vxlan(_rtp(5), 5)]
    buf, starts, lens = as_batch(frames)
    fx = rtp_frames(buf, starts, lens, 1, AddressIds(), tunnels=True)
    assert fx.cand.all() and fx.seq.tolist() == [1, 2, 3, 4, 5]
    assert fx.tunnel.tolist() == [TUNNEL_GRE] * 4 + [TUNNEL_VXLAN]
    # Outer Ethernet 14 + IPv4 20 + GRE (8 with sequence, 4 bare, 8 with key) + ERSPAN (8 / 12 / 0 / 0).
    assert fx.l2_at.tolist() == [14 + 20 + 8 + 8, 14 + 20 + 8 + 12, 14 + 20 + 4, 14 + 20 + 8, 50]
    for i, frame in enumerate(frames):
        counters = Counter()
        dgram = FrameDecoder(counters).decode(0, 1, frame)
        assert dgram is not None and (dgram.src_port, dgram.dst_port) == (40000, 50000)
        assert dgram.payload == buf[starts[i] + fx.payload_at[i]:starts[i] + lens[i]]
        assert dgram.src_mac == buf[starts[i] + fx.l2_at[i] + 6:starts[i] + fx.l2_at[i] + 12]
        assert counters["net.tunnel.gre" if i < 4 else "net.tunnel.vxlan"] == 1


def test_gre_frames_left_to_the_decoder():
    inner = _rtp(1)
    mac = bytes.fromhex("020000000001")
    ip = bytes([192, 0, 2, 9])
    frames = [
        in_erspan(inner, 1, 2),
        ip_frame(mac, mac, ip, ip, 47, struct.pack("!HH", 0x0000, 0x0800) + inner[14:]),   # GRE carrying IPv4
        ip_frame(mac, mac, ip, ip, 47, struct.pack("!HH", 0x0001, 0x6558) + inner),        # version 1
        ip_frame(mac, mac, ip, ip, 47, struct.pack("!HHI", 0x4000, 0x6558, 0) + inner),    # routing present
        ip_frame(mac, mac, ip, ip, 47, struct.pack("!HH", 0x0000, 0x6558) + inner[:10]),   # inner cut short
    ]
    buf, starts, lens = as_batch(frames)
    assert rtp_frames(buf, starts, lens, 1, AddressIds(), tunnels=True).cand.tolist() == [True] + [False] * 4

"""Tunnels (GRE, ERSPAN II/III, VXLAN, IP-in-IP), depth bound, duplicate suppression."""

import struct
from collections import Counter

import pytest
from scapy.all import GRE, IP, UDP, Dot1Q, Ether, IPv6, Raw
from scapy.layers.vxlan import VXLAN

from agent.net.decode import FrameDecoder

from _net_testlib import T0_NS, decode_all

OUTER = Ether(src="0a:00:00:00:00:01", dst="0a:00:00:00:00:02") / IP(src="172.16.0.1", dst="172.16.0.2")
INNER_ETH = Ether(src="02:11:11:11:11:11", dst="02:22:22:22:22:22")
INNER_IP = IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=5060, dport=5060) / Raw(b"SIP inner")
INNER_MACS = (bytes.fromhex("021111111111"), bytes.fromhex("022222222222"))


def _one(frames):
    ds, c = decode_all(frames)
    assert len(ds) == 1, dict(c)
    return ds[0], c


def test_gre_ip_payload_keeps_outer_macs():
    d, c = _one([OUTER / GRE(proto=0x0800) / INNER_IP])
    assert (d.src_ip, d.dst_ip, d.payload) == ("10.1.1.1", "10.2.2.2", b"SIP inner")
    assert d.src_mac == bytes.fromhex("0a0000000001")
    assert c["net.tunnel.gre"] == 1


def test_gre_with_checksum_key_sequence_and_teb():
    pkt = OUTER / GRE(chksum_present=1, key_present=1, seqnum_present=1, key=7, sequence_number=3,
                      proto=0x6558) / INNER_ETH / Dot1Q(vlan=42) / INNER_IP
    d, _ = _one([pkt])
    assert (d.src_mac, d.dst_mac) == INNER_MACS and d.vlan_ids == (42,)
    d, _ = _one([OUTER / GRE(proto=0x86DD) / IPv6(src="2001:db8::5", dst="2001:db8::6")
                 / UDP(sport=1, dport=2) / Raw(b"v6")])
    assert d.src_ip == "2001:db8::5"


def test_erspan_type2():
    erspan2 = struct.pack("!HHI", 0x1000 | 0, 0x0001, 0)           # ver 1, session 1
    pkt = OUTER / GRE(seqnum_present=1, sequence_number=1, proto=0x88BE) / Raw(erspan2 + bytes(INNER_ETH / INNER_IP))
    d, _ = _one([pkt])
    assert (d.src_mac, d.dst_mac) == INNER_MACS and d.payload == b"SIP inner"
    # type I: no GRE sequence number, no ERSPAN header
    d, _ = _one([OUTER / GRE(proto=0x88BE) / INNER_ETH / INNER_IP])
    assert d.dst_ip == "10.2.2.2"


@pytest.mark.parametrize("o_bit", [0, 1])
def test_erspan_type3_with_optional_subheader(o_bit):
    hdr = struct.pack("!HHIHH", 0x2000, 0x0001, 123456, 0, o_bit)  # ver 2, timestamp, O bit
    sub = bytes(8) if o_bit else b""
    pkt = OUTER / GRE(seqnum_present=1, proto=0x22EB) / Raw(hdr + sub + bytes(INNER_ETH / INNER_IP))
    d, _ = _one([pkt])
    assert (d.src_mac, d.dst_mac) == INNER_MACS and d.payload == b"SIP inner"


def test_vxlan():
    pkt = OUTER / UDP(sport=40000, dport=4789) / VXLAN(vni=99) / INNER_ETH / INNER_IP
    d, c = _one([pkt])
    assert (d.src_mac, d.dst_mac) == INNER_MACS and d.src_ip == "10.1.1.1"
    assert c["net.tunnel.vxlan"] == 1


def test_ip_in_ip_4_and_41():
    d, _ = _one([OUTER / INNER_IP])                        # scapy sets proto 4
    assert d.dst_ip == "10.2.2.2"
    d, c = _one([OUTER / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=3, dport=4) / Raw(b"6in4")])
    assert d.payload == b"6in4" and c["net.tunnel.ipip"] == 1


def test_tunnel_depth_is_bounded():
    pkt = INNER_IP
    for _ in range(6):
        pkt = IP(src="172.16.0.1", dst="172.16.0.2") / pkt
    ds, c = decode_all([Ether() / pkt])
    assert ds == [] and c["net.skip.tunnel_depth"] == 1


# -- duplicates ----------------------------------------------------------------

def _rtp(seq, payload=b"\xff" * 160, ipid=0):
    rtp = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xABCD) + payload
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src="10.0.0.1", dst="10.0.0.2", id=ipid, flags="DF", ttl=64)
            / UDP(sport=4000, dport=5000) / Raw(rtp))


def _mirror_copy(pkt):
    """The same packet seen on another port: other MACs, TTL decremented, VLAN tag."""
    ip = pkt[IP].copy()
    ip.ttl -= 1
    del ip.chksum
    return Ether(src="02:00:00:00:00:99", dst="02:00:00:00:00:98") / Dot1Q(vlan=10) / ip


def _decode_timed(frames_ts):
    c: Counter = Counter()
    dec = FrameDecoder(c)
    out = [d for ts, f in frames_ts if (d := dec.decode(ts, 1, bytes(f))) is not None]
    return out, c


def test_every_frame_doubled_gives_identical_output():
    originals = [_rtp(i) for i in range(50)]                 # identical silence, IP id 0
    originals.append(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=0) / UDP(sport=5060, dport=5060)
                     / Raw(b"OPTIONS"))
    once = [(T0_NS + i * 20_000_000, f) for i, f in enumerate(originals)]
    twice = []
    for ts, f in once:
        twice += [(ts, f), (ts + 300_000, _mirror_copy(f))]
    a, ca = _decode_timed(once)
    b, cb = _decode_timed(twice)
    assert len(a) == 51 and ca["net.duplicate"] == 0
    assert [(d.ts_ns, d.payload, d.src_port) for d in a] == [(d.ts_ns, d.payload, d.src_port) for d in b]
    assert cb["net.duplicate"] == 51


def test_distinct_packets_with_same_payload_are_kept():
    # Same UDP payload and id 0 but far apart in time: a SIP keepalive, not a copy.
    ka = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=0) / UDP(sport=5060, dport=5060) / Raw(b"\r\n\r\n")
    ds, c = _decode_timed([(T0_NS, ka), (T0_NS + 200_000_000, ka), (T0_NS + 10**9, ka)])
    assert len(ds) == 3 and c["net.duplicate"] == 0


def test_doubled_tcp_stream_identical():
    from scapy.all import TCP
    segs = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=i) / TCP(sport=1, dport=5060, seq=100 + 10 * i)
            / Raw(b"%010d" % i) for i in range(5)]
    once = [(T0_NS + i * 1_000_000, s) for i, s in enumerate(segs)]
    twice = [x for ts, s in once for x in ((ts, s), (ts + 1000, _mirror_copy(s)))]
    a, _ = _decode_timed(once)
    b, cb = _decode_timed(twice)
    assert b"".join(d.payload for d in a) == b"".join(d.payload for d in b) == b"".join(
        b"%010d" % i for i in range(5))
    assert cb["net.duplicate"] == 5

"""Link layers: every supported link type, VLAN/QinQ, MPLS, PPPoE, SLL/SLL2, null/loop."""

import struct

import pytest
from scapy.all import IP, UDP, Dot1AD, Dot1Q, Ether, IPv6, Raw
from scapy.contrib.mpls import MPLS
from scapy.layers.l2 import CookedLinux, CookedLinuxV2
from scapy.layers.ppp import PPP, PPPoE

from _net_testlib import decode_all

SMAC = "02:00:00:00:00:0a"
DMAC = "02:00:00:00:00:0b"
U4 = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5060, dport=5062) / Raw(b"INVITE x")
U6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5060, dport=5062) / Raw(b"INVITE x")


def _one(frames, linktype=1):
    ds, c = decode_all(frames, linktype)
    assert len(ds) == 1, dict(c)
    return ds[0]


def test_ethernet_ipv4_udp_fields():
    d = _one([Ether(src=SMAC, dst=DMAC) / U4])
    assert (d.src_ip, d.src_port, d.dst_ip, d.dst_port) == ("192.0.2.1", 5060, "192.0.2.2", 5062)
    assert d.transport == "udp" and d.payload == b"INVITE x"
    assert d.src_mac == bytes.fromhex("02000000000a") and d.dst_mac == bytes.fromhex("02000000000b")
    assert d.vlan_ids == ()
    assert d.ts_ns == 1_700_000_000_000_000_000


def test_ethernet_padding_is_trimmed_and_bad_checksum_kept():
    pkt = Ether(src=SMAC, dst=DMAC) / IP(src="192.0.2.1", dst="192.0.2.2", chksum=0x1234) \
        / UDP(sport=1, dport=2, chksum=0x4321) / Raw(b"ab")
    d = _one([bytes(pkt) + b"\x00" * 12])
    assert d.payload == b"ab"


def test_ethernet_ipv6():
    d = _one([Ether(src=SMAC, dst=DMAC) / U6])
    assert (d.src_ip, d.dst_ip, d.payload) == ("2001:db8::1", "2001:db8::2", b"INVITE x")


@pytest.mark.parametrize("tpid", [0x8100, 0x88A8, 0x9100])
def test_vlan_and_qinq(tpid):
    single = Ether(src=SMAC, dst=DMAC) / Dot1Q(vlan=1508) / U4
    assert _one([single]).vlan_ids == (1508,)
    outer = bytes(Ether(src=SMAC, dst=DMAC, type=tpid))
    qinq = outer + bytes(Dot1Q(vlan=100) / Dot1Q(vlan=200) / U6)
    d = _one([qinq])
    assert d.vlan_ids == (100, 200) and d.dst_ip == "2001:db8::2"
    ad = Ether(src=SMAC, dst=DMAC) / Dot1AD(vlan=7) / Dot1Q(vlan=8) / U4
    assert _one([ad]).vlan_ids == (7, 8)


def test_mpls_label_stack():
    d = _one([Ether(src=SMAC, dst=DMAC) / MPLS(label=100, s=0) / MPLS(label=200, s=1) / U4])
    assert d.dst_ip == "192.0.2.2" and d.payload == b"INVITE x"
    d = _one([Ether(src=SMAC, dst=DMAC, type=0x8847) / MPLS(label=5, s=1) / U6])
    assert d.src_ip == "2001:db8::1"


def test_pppoe_session():
    d = _one([Ether(src=SMAC, dst=DMAC) / PPPoE(sessionid=3) / PPP(proto=0x0021) / U4])
    assert d.payload == b"INVITE x" and d.src_mac == bytes.fromhex("02000000000a")
    d = _one([Ether(src=SMAC, dst=DMAC) / PPPoE(sessionid=3) / PPP(proto=0x0057) / U6])
    assert d.dst_ip == "2001:db8::2"
    ds, c = decode_all([Ether() / PPPoE() / PPP(proto=0xC021) / Raw(b"lcp-data")])
    assert ds == [] and c["net.skip.ppp"] == 1


def test_linux_sll_and_sll2():
    sll = CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=bytes.fromhex("0050568b531c") + b"\0\0",
                      proto=0x86DD) / U6
    d = _one([sll], linktype=113)
    assert d.src_mac == bytes.fromhex("0050568b531c") and d.dst_mac == b""
    assert d.src_ip == "2001:db8::1"
    sll2 = CookedLinuxV2(proto=0x0800, ifindex=2, pkttype=4, lladdrlen=6,
                         src=bytes.fromhex("aabbccddeeff") + b"\0\0") / U4
    d = _one([sll2], linktype=276)
    assert d.src_mac == bytes.fromhex("aabbccddeeff") and d.dst_ip == "192.0.2.2"
    # an address that is not 6 bytes long is not a MAC
    nomac = CookedLinux(lladdrlen=0, src=b"\0" * 8, proto=0x0800) / U4
    assert _one([nomac], linktype=113).src_mac == b""


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip(linktype):
    assert _one([U4], linktype).payload == b"INVITE x"
    assert _one([U6], linktype).src_ip == "2001:db8::1"


def test_ipv4_ipv6_linktypes():
    assert _one([U4], 228).dst_ip == "192.0.2.2"
    assert _one([U6], 229).dst_ip == "2001:db8::2"


@pytest.mark.parametrize("linktype", [0, 108])
@pytest.mark.parametrize("fmt", ["<I", ">I"])
def test_null_loopback_both_byte_orders(linktype, fmt):
    assert _one([struct.pack(fmt, 2) + bytes(U4)], linktype).src_ip == "192.0.2.1"
    for af6 in (10, 24, 28, 30):
        assert _one([struct.pack(fmt, af6) + bytes(U6)], linktype).src_ip == "2001:db8::1"


def test_skips_are_counted():
    frames = [
        Ether(type=0x0806) / Raw(bytes(28)),                                 # ARP
        Ether(type=0x88CC) / Raw(bytes(30)),                                 # LLDP
        Ether(dst="01:80:c2:00:00:00", type=40) / Raw(bytes(40)),            # 802.3 / STP
        Ether() / IP(proto=132) / Raw(bytes(28)),                            # SCTP
        Ether() / IP(proto=1) / Raw(bytes(8)),                               # ICMP
        Ether() / IPv6(nh=58) / Raw(bytes(8)),                               # ICMPv6
        bytes(Ether() / U4)[:30],                                            # truncated IP
        Ether() / IP(proto=99) / Raw(b"x"),                                  # other protocol
    ]
    ds, c = decode_all(frames)
    assert ds == []
    assert c["net.skip.arp"] == 1
    assert c["net.skip.unknown_ethertype"] == 1
    assert c["net.skip.llc"] == 1
    assert c["net.sctp"] == 1 and c["net.skip.sctp"] == 1
    assert c["net.skip.icmp"] == 2
    assert c["net.skip.truncated"] == 1
    assert c["net.skip.ip_proto"] == 1
    ds, c = decode_all([b"\x00" * 10], linktype=147)
    assert ds == [] and c["net.skip.linktype"] == 1


def test_ipv4_options_and_tso_zero_length():
    d = _one([Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x01\x01\x01\x00"])
              / UDP(sport=1, dport=2) / Raw(b"opt")])
    assert d.payload == b"opt"
    raw = bytearray(bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
                          / Raw(b"tso")))
    raw[16:18] = b"\0\0"   # total length 0 as captured on a TSO sender
    assert _one([bytes(raw)]).payload == b"tso"

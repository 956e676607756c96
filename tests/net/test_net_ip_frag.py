"""IPv6 extension headers and IPv4/IPv6 fragment reassembly."""

from collections import Counter

from scapy.all import (IP, UDP, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Raw, fragment, fragment6)
from scapy.layers.ipsec import AH

from agent.net.fragments import FragmentReassembler
from agent.net.decode import FrameDecoder

from _net_testlib import T0_NS, decode_all

BODY = bytes(range(256)) * 12   # 3072 bytes: needs 3+ fragments at MTU 1500


def test_ipv6_extension_headers_are_skipped():
    pkt = (Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop()
           / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(sport=5060, dport=5060) / Raw(b"ext"))
    ds, c = decode_all([pkt])
    assert [d.payload for d in ds] == [b"ext"]
    ah = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / AH(nh=17, payloadlen=4, icv=bytes(12)) \
        / UDP(sport=1, dport=2) / Raw(b"ah")
    ds, c = decode_all([ah])
    assert [d.payload for d in ds] == [b"ah"], dict(c)


def test_ipv4_fragments_any_order():
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", id=4321) / UDP(sport=5060, dport=5060) / Raw(BODY)
    frags = [Ether() / f for f in fragment(pkt, fragsize=1000)]
    assert len(frags) >= 3
    for order in (frags, frags[::-1], [frags[1], frags[0]] + frags[2:]):
        ds, c = decode_all(order)
        assert len(ds) == 1
        assert ds[0].payload == BODY and ds[0].src_port == 5060
        assert c["net.frag.reassembled"] == 1


def test_ipv4_overlapping_and_duplicate_fragments():
    l4 = bytes(UDP(sport=7, dport=9) / Raw(b"A" * 40))   # 48 bytes
    def frag(off, data, mf):
        return Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=9, proto=17, frag=off // 8,
                            flags="MF" if mf else 0) / Raw(data)
    frames = [frag(16, l4[16:40], True), frag(0, l4[0:24], True), frag(8, l4[8:32], True),
              frag(32, l4[32:], False)]
    ds, _ = decode_all(frames, dedup=False)
    assert len(ds) == 1 and ds[0].payload == b"A" * 40


def test_ipv6_fragments_out_of_order_with_dest_options_inside():
    pkt = (IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=77)
           / IPv6ExtHdrDestOpt() / UDP(sport=5060, dport=5062) / Raw(BODY))
    frags = [Ether() / f for f in fragment6(pkt, 1280)]
    assert len(frags) >= 3
    ds, c = decode_all(frags[::-1])
    assert len(ds) == 1 and ds[0].payload == BODY and ds[0].dst_port == 5062


def test_missing_fragment_never_completes_and_expires():
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", id=5) / UDP(sport=1, dport=2) / Raw(BODY)
    frags = [Ether() / f for f in fragment(pkt, fragsize=1000)]
    c: Counter = Counter()
    dec = FrameDecoder(c)
    for f in frags[:-1]:
        assert dec.decode(T0_NS, 1, bytes(f)) is None
    assert len(dec.fragments) == 1
    dec.expire(T0_NS + 29_000_000_000)
    assert len(dec.fragments) == 1
    dec.expire(T0_NS + 31_000_000_000)
    assert len(dec.fragments) == 0 and dec.fragments.pending_bytes == 0
    assert c["net.frag.expired"] == 1
    # the late last fragment alone does not produce anything
    assert dec.decode(T0_NS + 32_000_000_000, 1, bytes(frags[-1])) is None


def test_reassembler_bounds_evict_oldest():
    c: Counter = Counter()
    r = FragmentReassembler(c, max_pending=3, max_bytes=10_000)
    for i in range(5):
        assert r.add(T0_NS, (b"a", b"b", i, 17), 0, True, b"x" * 100) is None
    assert len(r) == 3 and c["net.frag.evicted"] == 2
    # byte bound
    r2 = FragmentReassembler(c, max_pending=100, max_bytes=1000)
    for i in range(5):
        r2.add(T0_NS, (b"a", b"b", i, 17), 0, True, b"x" * 400)
    assert r2.pending_bytes <= 1000
    # keys 0 and 1 were evicted: completing key 4 still works
    assert r2.add(T0_NS, (b"a", b"b", 4, 17), 400, False, b"y" * 8) == b"x" * 400 + b"y" * 8

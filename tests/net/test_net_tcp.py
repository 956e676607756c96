"""TCP stream reassembly through FrameDecoder and TcpReassembler directly."""

from collections import Counter

from scapy.all import IP, TCP, Ether, Raw

from agent.net.tcp import TCP_FIN, TCP_RST, TCP_SYN, TcpReassembler

from _net_testlib import T0_NS, decode_all

MSG = b"INVITE sip:bob@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n" * 3


def _seg(seq, data=b"", flags="PA", ipid=1):
    return (Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=ipid)
            / TCP(sport=40000, dport=5060, seq=seq, flags=flags) / Raw(data))


def _stream(frames):
    ds, c = decode_all(frames)
    assert all(d.transport == "tcp" for d in ds)
    return b"".join(d.payload for d in ds), ds, c


def test_in_order_with_syn_and_fin():
    isn = 1000
    frames = [_seg(isn, flags="S"), _seg(isn + 1, MSG[:50], ipid=2), _seg(isn + 51, MSG[50:], ipid=3),
              _seg(isn + 1 + len(MSG), flags="FA", ipid=4)]
    data, ds, _ = _stream(frames)
    assert data == MSG and len(ds) == 2
    assert (ds[0].src_port, ds[0].dst_port) == (40000, 5060)


def test_out_of_order_gap_filled_delivers_coalesced_bytes():
    a, b, c3 = MSG[:40], MSG[40:90], MSG[90:]
    frames = [_seg(1, flags="S"), _seg(2 + 90, c3, ipid=2), _seg(2 + 40, b, ipid=3), _seg(2, a, ipid=4)]
    data, ds, c = _stream(frames)
    assert data == MSG
    assert len(ds) == 1 and ds[0].payload == MSG      # one chunk once the hole closed
    assert c["net.tcp.out_of_order"] == 2


def test_retransmission_and_overlap_delivered_once():
    frames = [_seg(2, MSG[:60], ipid=1), _seg(2, MSG[:60], ipid=2),          # pure retransmit
              _seg(2 + 30, MSG[30:100], ipid=3),                             # overlaps 30 bytes
              _seg(2 + 100, MSG[100:], ipid=4), _seg(2 + 50, MSG[50:120], ipid=5)]
    data, ds, c = _stream(frames)
    assert data == MSG
    assert c["net.tcp.retransmit"] == 2


def test_midstream_pickup_without_syn():
    data, ds, c = _stream([_seg(555_555, MSG[:70]), _seg(555_555 + 70, MSG[70:], ipid=2)])
    assert data == MSG and c["net.tcp.midstream"] == 1


def test_sequence_wraparound():
    start = 0xFFFFFFFF - 20
    frames = [_seg(start, MSG[:50]), _seg((start + 100) & 0xFFFFFFFF, MSG[100:], ipid=2),
              _seg((start + 50) & 0xFFFFFFFF, MSG[50:100], ipid=3)]
    data, _, _ = _stream(frames)
    assert data == MSG


def test_two_directions_are_separate_flows():
    fwd = _seg(10, b"REQUEST")
    rev = (Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=5060, dport=40000, seq=99)
           / Raw(b"RESPONSE"))
    ds, _ = decode_all([fwd, rev])
    assert [(d.src_ip, d.payload) for d in ds] == [("10.0.0.1", b"REQUEST"), ("10.0.0.2", b"RESPONSE")]


def test_reassembler_rst_and_port_reuse():
    c: Counter = Counter()
    r = TcpReassembler(c)
    key = (b"\x0a\0\0\x01", 1, b"\x0a\0\0\x02", 2)
    assert r.segment(T0_NS, key, 100, TCP_SYN, b"") is None
    assert r.segment(T0_NS, key, 101, 0, b"abc") == b"abc"
    assert r.segment(T0_NS, key, 104, TCP_RST, b"") is None
    assert len(r) == 0 and c["net.tcp.rst"] == 1
    # a new connection on the same 4-tuple with another ISN starts afresh
    assert r.segment(T0_NS, key, 5000, TCP_SYN, b"") is None
    assert r.segment(T0_NS, key, 5001, 0, b"new") == b"new"
    assert r.segment(T0_NS, key, 5004, TCP_FIN, b"end") == b"end"
    assert r.segment(T0_NS, key, 5004, TCP_FIN, b"end") is None   # retransmitted after FIN


def test_out_of_order_bound_skips_the_hole():
    c: Counter = Counter()
    r = TcpReassembler(c, flow_max_bytes=100)
    key = (b"a", 1, b"b", 2)
    assert r.segment(T0_NS, key, 0, 0, b"x" * 10) == b"x" * 10
    # bytes 10..19 are lost forever; later segments pile up until the bound
    assert r.segment(T0_NS, key, 20, 0, b"A" * 60) is None
    assert r.segment(T0_NS, key, 80, 0, b"B" * 30) is None
    out = r.segment(T0_NS, key, 110, 0, b"C" * 30)   # would exceed 100 buffered bytes
    assert out == b"A" * 60 + b"B" * 30 + b"C" * 30
    assert c["net.tcp.gap"] == 1 and r.buffered_bytes == 0


def test_total_buffer_bound_and_idle_expiry():
    c: Counter = Counter()
    r = TcpReassembler(c, total_max_bytes=50, idle_timeout_ns=10)
    k1, k2 = (b"a", 1, b"b", 2), (b"a", 3, b"b", 4)
    r.segment(T0_NS, k1, 0, 0, b"1")
    r.segment(T0_NS, k1, 10, 0, b"x" * 40)
    r.segment(T0_NS, k2, 0, 0, b"1")
    r.segment(T0_NS, k2, 10, 0, b"y" * 40)        # over the total bound: k2 skips its hole
    assert r.buffered_bytes <= 50
    r.expire(T0_NS + 100)
    assert len(r) == 0 and r.buffered_bytes == 0 and c["net.tcp.expired"] == 2

"""The HEP3 decoder on literal bytes, and fuzzed: it never raises, it counts what it skips."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.net.datagram import TCP, UDP
from agent.net.hep import (HepStreamSplitter, auth_ok, encode_hep3, parse_hep3, to_datagram)

# A HEP3 message written out by hand from the spec (not by encode_hep3): Kamailio-style SIP
# over UDP, 10.0.0.1:5060 -> 10.0.0.2:5080, 2026-01-15 10:00:00.123456 UTC, agent 2001,
# auth key "secret", payload "OPTIONS".
LITERAL = bytes.fromhex(
    "48455033" "0076"                    # HEP3, total length 118
    "0000 0001 0007 02"                  # IP family: IPv4
    "0000 0002 0007 11"                  # IP protocol: UDP
    "0000 0003 000a 0a000001"            # IPv4 src 10.0.0.1
    "0000 0004 000a 0a000002"            # IPv4 dst 10.0.0.2
    "0000 0007 0008 13c4"                # src port 5060
    "0000 0008 0008 13d8"                # dst port 5080
    "0000 0009 000a 6968baa0"            # ts seconds 1768471200
    "0000 000a 000a 0001e240"            # ts microseconds 123456
    "0000 000b 0007 01"                  # protocol type: SIP
    "0000 000c 000a 000007d1"            # capture agent id 2001
    "0000 000e 000c 736563726574"        # auth key "secret"
    "0000 000f 000d 4f5054494f4e53"      # payload "OPTIONS"
    .replace(" ", ""))


def test_literal_message_decodes_to_the_datagram_a_span_port_shows():
    c = Counter()
    pkt = parse_hep3(LITERAL, c)
    assert pkt is not None and not c
    assert (pkt.agent_id, pkt.auth_key, pkt.proto_type) == (2001, b"secret", 1)
    d = to_datagram(pkt, c, fallback_ts_ns=0)
    assert (d.src_ip, d.src_port, d.dst_ip, d.dst_port, d.transport) == (
        "10.0.0.1", 5060, "10.0.0.2", 5080, UDP)
    assert d.ts_ns == 1768471200_123456000
    assert d.payload == b"OPTIONS"
    assert d.src_mac == b"" and d.dst_mac == b""
    assert c["hep.datagrams"] == 1


def test_encoder_matches_the_literal_bytes():
    assert encode_hep3(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=5060, dst_port=5080,
                       ts_ns=1768471200_123456789, payload=b"OPTIONS", agent_id=2001,
                       auth_key=b"secret") == LITERAL


def test_ipv6_tcp_rtp():
    msg = encode_hep3(src_ip="2001:db8::1", dst_ip="2001:db8::2", src_port=40000, dst_port=5060,
                      ts_ns=5_000_000_000, payload=b"INVITE", transport=TCP)
    d = to_datagram(parse_hep3(msg, Counter()), Counter(), fallback_ts_ns=0)
    assert (d.src_ip, d.dst_ip, d.transport, d.ts_ns) == ("2001:db8::1", "2001:db8::2", TCP, 5_000_000_000)


def test_vendor_chunks_are_skipped_and_trailing_padding_ignored():
    vendor = struct.pack("!HHH", 0x0003, 0x0020, 9) + b"abc"        # a vendor's own chunk
    body = LITERAL[6:] + vendor
    msg = b"HEP3" + struct.pack("!H", 6 + len(body)) + body + b"\x00\x00"
    c = Counter()
    assert parse_hep3(msg, c).payload == b"OPTIONS"
    assert c["hep.trailing_bytes"] == 1


def test_compressed_payload_zlib_and_gzip():
    for packed in (zlib.compress(b"BYE sip:x SIP/2.0"), gzip.compress(b"BYE sip:x SIP/2.0")):
        chunk = struct.pack("!HHH", 0, 16, 6 + len(packed)) + packed
        body = LITERAL[6:-13] + chunk                      # the plain payload chunk replaced
        msg = b"HEP3" + struct.pack("!H", 6 + len(body)) + body
        assert parse_hep3(msg, Counter()).payload == b"BYE sip:x SIP/2.0"


def test_compressed_bomb_is_refused():
    packed = zlib.compress(b"\x00" * (1 << 20))
    body = LITERAL[6:-13] + struct.pack("!HHH", 0, 16, 6 + len(packed)) + packed
    c = Counter()
    assert parse_hep3(b"HEP3" + struct.pack("!H", 6 + len(body)) + body, c) is None
    assert c["hep.skip.bad_compressed_payload"] == 1


def test_malformed_messages_are_counted_by_reason():
    cases = {
        b"HEP2" + LITERAL[4:]: "hep.skip.not_hep3",
        LITERAL[:40]: "hep.skip.bad_length",                             # cut short
        LITERAL[:4] + b"\x00\x03" + LITERAL[6:]: "hep.skip.bad_length",     # length < header
        LITERAL[:4] + b"\x00\x08" + LITERAL[6:]: "hep.skip.truncated_chunk",
        LITERAL[:10] + b"\x00\x02" + LITERAL[12:]: "hep.skip.bad_chunk_length",  # chunk len < 6
        LITERAL[:10] + b"\x00\x08" + LITERAL[12:]: "hep.skip.bad_chunk_length",  # family 2 bytes
        LITERAL[:10] + b"\x00\xff" + LITERAL[12:]: "hep.skip.bad_chunk_length",  # past the end
    }
    for msg, reason in cases.items():
        c = Counter()
        assert parse_hep3(msg, c) is None, reason
        assert c == Counter({reason: 1}), (reason, c)


def test_non_sip_rtp_and_incomplete_packets_make_no_datagram():
    rtcp_json = encode_hep3(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2, ts_ns=0,
                            payload=b"{}", proto_type=5)
    c = Counter()
    assert to_datagram(parse_hep3(rtcp_json, c), c, fallback_ts_ns=0) is None
    assert c["hep.skip.not_sip_or_rtp"] == 1
    no_payload = LITERAL[:4] + struct.pack("!H", len(LITERAL) - 13) + LITERAL[6:-13]
    c = Counter()
    assert to_datagram(parse_hep3(no_payload, c), c, fallback_ts_ns=0) is None
    assert c["hep.skip.no_ports_or_payload"] == 1


def test_missing_timestamp_takes_the_arrival_time():
    # drop the two timestamp chunks (10 bytes each, at offsets 56 and 66)
    body = LITERAL[6:56] + LITERAL[76:]
    msg = b"HEP3" + struct.pack("!H", 6 + len(body)) + body
    c = Counter()
    d = to_datagram(parse_hep3(msg, c), c, fallback_ts_ns=77)
    assert d.ts_ns == 77 and c["hep.no_timestamp"] == 1


def test_auth_key():
    pkt = parse_hep3(LITERAL, Counter())
    assert auth_ok(pkt, b"secret")
    assert not auth_ok(pkt, b"secreT")
    nul_terminated = parse_hep3(encode_hep3(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1,
                                            dst_port=2, ts_ns=0, payload=b"x",
                                            auth_key=b"secret\x00"), Counter())
    assert auth_ok(nul_terminated, b"secret")
    no_key = parse_hep3(encode_hep3(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                                    ts_ns=0, payload=b"x"), Counter())
    assert not auth_ok(no_key, b"secret")


def test_stream_splitter_cuts_messages_across_reads_and_resyncs_after_garbage():
    c = Counter()
    s = HepStreamSplitter(c)
    stream = LITERAL + b"garbage!HE" + LITERAL + LITERAL
    got = []
    for i in range(0, len(stream), 7):                 # 7-byte reads: every split point varies
        got += s.feed(stream[i:i + 7])
    assert got == [LITERAL] * 3
    assert c["hep.skip.stream_resync"] >= 1


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_never_raise(data):
    c = Counter()
    pkt = parse_hep3(b"HEP3" + data, c)
    if pkt is not None:
        to_datagram(pkt, c, fallback_ts_ns=0)
    HepStreamSplitter(c).feed(b"HEP3" + data)


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, len(LITERAL) - 1), st.integers(0, 255))
def test_fuzz_one_byte_flipped_never_raises_and_counts_every_skip(pos, value):
    msg = bytearray(LITERAL)
    msg[pos] = value
    c = Counter()
    pkt = parse_hep3(bytes(msg), c)
    d = to_datagram(pkt, c, fallback_ts_ns=0) if pkt is not None else None
    if d is None:
        assert sum(n for k, n in c.items() if k.startswith("hep.skip.")) == 1

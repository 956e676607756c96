"""Strange-but-valid SIP parses; malformed SIP is rejected without touching other calls."""

from __future__ import annotations

import os
import random

import pytest

from agent.errors import SipParseError
from agent.sip.message import looks_like_sip, parse_message
from agent.sip.sdp import parse_sdp
from agent.sip.uri import parse_name_addr, parse_uri

from _hostile_lib import PCAPS, essentials, read_records, run_engine, sip, udp, write_pcap

# ----------------------------------------------------------------------------- strange but valid

STRANGE = (
    b"FOOBAR   sip:%61lice;phone-context=x@[2001:db8::1]:5070;transport=tcp?subject=hi   SIP/2.0\n"
    b"Via :  SIP/2.0/UDP [2001:db8::9]:5060 ;branch=z9hG4bK-1;received=2001:db8::9\n"
    b"From\t:\t\"Doe, \\\"JJ\\\" \\\\ x\" <sip:a@h>;tag=1\n"
    b"to:Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac <sips:b@h>\n"
    b"i:   abc@h   \n"
    b"CSEQ:   7   FOOBAR\n"
    b"X-Long: " + b"a" * 20000 + b"\n"
    b"Subject: line one\n   continued\n\tand more\n"
    b"\n")


def test_whitespace_escapes_utf8_long_headers_unknown_method_ipv6():
    assert looks_like_sip(STRANGE)
    m = parse_message(STRANGE)
    assert (m.is_request, m.method) == (True, "FOOBAR")
    assert m.call_id == "abc@h"
    assert m.from_addr.display == 'Doe, "JJ" \\ x' and m.from_tag == "1"
    assert m.to_addr.display == "Zoë 日本" and m.to_addr.uri.scheme == "sips"
    assert (m.cseq_num, m.cseq_method) == (7, "FOOBAR")
    assert m.header("subject") == "line one continued and more"
    assert m.header("x-long") == "a" * 20000
    assert m.via_branch == "z9hG4bK-1" and m.via_transport == "UDP"
    uri = parse_uri(m.request_uri)
    assert (uri.user, uri.host, uri.port, uri.params) == (
        "alice;phone-context=x", "2001:db8::1", 5070, {"transport": "tcp"})


@pytest.mark.parametrize("text, scheme, user, host, port", [
    ("sip:alice:secret@example.com:5061;transport=tls?x=y", "sip", "alice", "example.com", 5061),
    ("SIP:Bob@EXAMPLE.com", "sip", "Bob", "EXAMPLE.com", None),
    ("sips:[::1]", "sips", None, "::1", None),
    ("sip:+1%20555@[2001:db8::2]:65535", "sip", "+1 555", "2001:db8::2", 65535),
    ("sip:2001:db8::3", "sip", None, "2001:db8::3", None),          # bare IPv6, seen in the wild
    ("tel:+1-201-555-0123;phone-context=example.com", "tel", "+1-201-555-0123", "", None),
    ("urn:service:sos", "urn", None, "", None),
])
def test_unusual_uris(text, scheme, user, host, port):
    u = parse_uri(text)
    assert (u.scheme, u.user, u.host, u.port) == (scheme, user, host, port)


@pytest.mark.parametrize("text, display, user", [
    ('"Ünïcödé \\"Q\\"" <sip:1@h>;tag=x', 'Ünïcödé "Q"', "1"),
    ("John  Q.  Public<sip:2@h>", "John  Q.  Public", "2"),
    ('""<sip:3@h>', "", "3"),
    ("<tel:4>", None, "4"),
    ("sip:5@h;tag=t", None, "5"),
])
def test_display_names(text, display, user):
    na = parse_name_addr(text)
    assert (na.display, na.uri.user) == (display, user)


def test_compact_lf_only_response_and_ipv6_sdp():
    body = b"v=0\no=- 1 1 IN IP6 2001:db8::5\ns=-\nc=IN IP6 2001:DB8:0::5\nt=0 0\nm=audio 4000 RTP/AVP 0\n"
    data = (b"SIP/2.0 200 OK\nv: SIP/2.0/UDP [2001:db8::9]\nf: <sip:a@h>;tag=1\nt: <sip:b@h>;tag=2\n"
            b"i: x\nCSeq: 1 INVITE\nc: application/sdp\nl: %d\n\n" % len(body)) + body
    m = parse_message(data)
    assert (m.status_code, m.method, m.to_tag) == (200, "INVITE", "2")
    sdp = parse_sdp(m.sdp_body())
    assert sdp.audio[0].connection_ip == "2001:db8::5" and sdp.audio[0].port == 4000


# ----------------------------------------------------------------------------- malformed

_OK_HEADERS = [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("From", "<sip:a@h>;tag=1"),
               ("To", "<sip:b@h>"), ("Call-ID", "c1"), ("CSeq", "1 INVITE")]


@pytest.mark.parametrize("data", [
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS, b"v=0\r\n", content_length="12"),   # > body
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS, b"v=0\r\n", content_length="-1"),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS, b"v=0\r\n", content_length="abc"),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS, b"v=0\r\n", content_length="99999999999999"),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS + [("l", "3")], b"v=0\r\n"),        # conflicting
    sip("INVITE sip:b@h SIP/2.0", [h for h in _OK_HEADERS if h[0] != "Call-ID"]),
    sip("INVITE sip:b@h SIP/2.0", [h for h in _OK_HEADERS if h[0] != "From"]),
    sip("INVITE sip:b@h SIP/2.0", [h for h in _OK_HEADERS if h[0] != "To"]),
    sip("INVITE sip:b@h SIP/2.0", [h for h in _OK_HEADERS if h[0] != "CSeq"]),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS[:3] + [("Call-ID", "")] + _OK_HEADERS[4:]),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS[:4] + [("CSeq", "x INVITE")]),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS[:4] + [("CSeq", "99999999999 INVITE")]),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS[:1] + [("From", '"unterminated <sip:a@h>')] + _OK_HEADERS[2:]),
    sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS).replace(b"Call-ID", b"Call\x00ID"),
    b"INVITE sip:b@h SIP/2.0\x01\r\n" + sip("X", _OK_HEADERS).split(b"\r\n", 1)[1],
    sip("SIP/2.0 999 Nope", _OK_HEADERS),
    sip("SIP/2.0 20 OK", _OK_HEADERS),
    sip("INVITE b-without-scheme SIP/2.0", _OK_HEADERS),
    b"\x80\x00\x12\x34" + os.urandom(200),
    b"\r\n\r\n",
    b"",
])
def test_malformed_is_rejected_with_sip_parse_error(data):
    with pytest.raises(SipParseError):
        parse_message(data)


def test_oversize_message_rejected():
    big = sip("INVITE sip:b@h SIP/2.0", _OK_HEADERS + [("X-Pad", "p" * 70_000)])
    with pytest.raises(SipParseError):
        parse_message(big)


# ----------------------------------------------------------------------------- engine: junk beside a real call

def _junk_frames(ts0: int, rng: random.Random) -> list[tuple[int, int, bytes]]:
    """Malformed SIP aimed at the real call (same Call-ID, same IPs and ports), binary junk on
    the SIP port and on the media ports, and strange-but-valid calls of its own."""
    real_cid = "basic_udp-0001@callntest.example"
    a, b = "10.0.0.10", "10.0.0.20"
    bye = [("Via", "SIP/2.0/UDP 10.0.0.10;branch=z9hG4bKjunk"),
           ("From", '"Alice" <sip:1001@10.0.0.10>;tag=ft-basic_udp'),
           ("To", "<sip:1002@10.0.0.20>;tag=tt-basic_udp"), ("Call-ID", real_cid), ("CSeq", "9 BYE")]
    payloads = [
        sip("BYE sip:1002@10.0.0.20 SIP/2.0", bye, b"x", content_length="50"),       # bad C-L
        sip("BYE sip:1002@10.0.0.20 SIP/2.0", [h for h in bye if h[0] != "CSeq"]),    # no CSeq
        sip("CANCEL sip:1002@10.0.0.20 SIP/2.0", bye).replace(b"CANCEL", b"CAN\x00EL"),
        sip("SIP/2.0 603 Decline", bye[:4] + [("CSeq", "1 INV ITE")]),
        sip("BYE sip:1002@10.0.0.20 SIP/2.0", bye).replace(b"\r\n\r\n", b"\x00\xff\r\n\r\n"),
        b"\x00" * 40, bytes(rng.randrange(256) for _ in range(300)),
        b"INVITE sip:x SIP/2.0\r\n" + bytes(rng.randrange(256) for _ in range(200)),
    ]
    frames = []
    t = ts0
    for i, p in enumerate(payloads * 3):
        t += 37_000_000
        frames.append((t, 1, udp(a if i % 2 else b, b if i % 2 else a, 5060, 5060, p)))
        # Not-RTP junk on the media ports (first byte 0x00: not RTP version 2).
        frames.append((t + 1_000, 1, udp(a, b, 40000, 50000, b"\x00" + p[:50])))
    return frames


def test_junk_mixed_with_real_call_leaves_its_record_intact(tmp_path):
    clean = read_records(PCAPS / "basic_udp.pcap")
    want, _ = run_engine(PCAPS / "basic_udp.pcap")
    assert len(want) == 1
    mixed = sorted(clean + _junk_frames(clean[0][0] - 100_000_000, random.Random(7)),
                   key=lambda r: r[0])
    got, counters = run_engine(write_pcap(tmp_path / "mixed.pcap", mixed))
    real = [r for r in got if r["callid"] == want[0]["callid"]]
    assert len(real) == 1
    assert essentials(real[0]) == essentials(want[0])
    assert essentials(real[0])["rtp_packets"] == {0: 150, 1: 152}
    assert counters["sip.skip.malformed"] >= 15
    # No junk became a call of its own.
    assert [r["callid"] for r in got] == [want[0]["callid"]]


def _strange_call(t0: int) -> list[tuple[int, int, bytes]]:
    """A complete call over IPv6 with hostile-looking but valid formatting throughout."""
    a, b = "2001:db8::a", "2001:db8::b"
    cid = "str@nge"
    frm = '"Zoë \\"Z\\" Ünal" <sip:%2B4930123@[2001:db8::a]:5060;user=phone>;tag=ft1'
    to = "Big   Bob<sip:4930999@[2001:db8::b]>"
    sdp_a = (b"v=0\no=- 1 1 IN IP6 2001:db8::a\ns=-\nc=IN IP6 2001:db8::a\nt=0 0\n"
             b"m=audio 40000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n")
    sdp_b = sdp_a.replace(b"::a", b"::b").replace(b"40000", b"50000")
    via = [("v", "SIP/2.0/UDP [2001:db8::a]:5060 ; branch = z9hG4bK-s1")]
    base = [("f", frm), ("i", cid)]
    msgs = [
        (0, a, b, sip("INVITE   sip:4930999@[2001:db8::b]   SIP/2.0",
                      via + base + [("t", to), ("cseq", "1   INVITE"), ("X-Junk", "x" * 3000)],
                      sdp_a, eol="\n")),
        (50, b, a, sip("SIP/2.0 200 Fine,  thanks", via + base + [("t", to + " ;tag=tt1"),
                                                                  ("CSeq", "1 INVITE")], sdp_b)),
        (60, a, b, sip("ACK sip:4930999@[2001:db8::b] SIP/2.0",
                       via + base + [("t", to + ";tag=tt1"), ("CSeq", "1 ACK")])),
        (1260, a, b, sip("BYE sip:4930999@[2001:db8::b] SIP/2.0",
                         via + base + [("t", to + ";tag=tt1"), ("CSeq", "2 BYE")])),
        (1270, b, a, sip("SIP/2.0 200 OK", via + base + [("t", to + ";tag=tt1"), ("CSeq", "2 BYE")])),
    ]
    frames = [(t0 + ms * 1_000_000, 1, udp(s, d, 5060, 5060, p)) for ms, s, d, p in msgs]
    for i in range(50):
        for s, d, sp, dp, ssrc in ((a, b, 40000, 50000, 1), (b, a, 50000, 40000, 2)):
            rtp = bytes([0x80, 0]) + i.to_bytes(2, "big") + (i * 160).to_bytes(4, "big") \
                + ssrc.to_bytes(4, "big") + b"\xff" * 160
            frames.append((t0 + (100 + 20 * i) * 1_000_000 + ssrc * 1000, 1, udp(s, d, sp, dp, rtp)))
    return sorted(frames, key=lambda r: r[0])


def test_strange_but_valid_call_is_recorded(tmp_path):
    t0 = 1_768_471_200 * 10**9
    recs, _ = run_engine(write_pcap(tmp_path / "strange.pcap", _strange_call(t0)))
    assert len(recs) == 1
    r = recs[0]
    assert r["callid"] == "str@nge"
    assert r["callername"] == 'Zoë "Z" Ünal'
    assert r["callerphone"] == "+4930123"
    assert (r["destinationname"], r["destinationphone"]) == ("Big   Bob", "4930999")
    assert r["answered"] is True and r["end_reason"] == "bye"
    assert r["destinationmediaendpoint"] == "[2001:db8::b]:50000"
    assert essentials(r)["rtp_packets"] == {0: 50, 1: 50}

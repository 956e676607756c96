"""SIP message parsing with literal bytes: start lines, headers, bodies, rejection."""

import pytest

from agent.errors import SipParseError
from agent.sip.message import looks_like_sip, parse_message

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"User-Agent: TestPhone/1.0 (build 7, rev 2)\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 10\r\n"
    b"\r\n"
    b"v=0\r\ns=-\r\n"
)

# Same message in compact form, bare LF line ends, odd spacing and a folded header.
COMPACT = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\n"
    b"v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\n"
    b"v:SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2\n"
    b"t :  <sip:bob@biloxi.example.com>\n"
    b"f:\t<sip:alice@atlanta.example.com>;tag=88sja8x\n"
    b"i: 98asjd8\n"
    b"CSEQ: 1\n"
    b"  INVITE\n"
    b"m: <sip:alice@pc33.atlanta.example.com>\n"
    b"k: 100rel, timer\n"
    b"s: Need\n"
    b"\tmore folding\n"
    b"c: Application/SDP; charset=utf-8\n"
    b"\n"
    b"v=0\n"
)
SIP_I_INVITE = (
    b'INVITE sip:9275890000@VMSSM;user=phone SIP/2.0\r\n'
    b'Content-Length:657\r\n'
    b'From:<sip:9171969136@astrakhan.megafonvolga.ru;user=phone>;tag=9Ub.i1YV7Yag2._5\r\n'
    b'To:<sip:9275890000@VMSSM;user=phone>\r\n'
    b'Via:SIP/2.0/SCTP 10.249.30.11:5060;branch=z9hG4bKXfVD0C87Be5AV626;yop=00.00.08D69D07.0000.7008\r\n'
    b'Call-ID:717B2539AD2002C9152DC497@0870ffffffff\r\n'
    b'CSeq:1 INVITE\r\n'
    b'Max-Forwards:70\r\n'
    b'Route:<sip:VMSSM:5060;transport=SCTP;lr>\r\n'
    b'Record-Route:<sip:AAQACCENwAAArAAAAEQAAfB4K@10.249.30.11:5060;yop=00.00.08D69D07.0000.7008;transport=SCTP;lr>\r\n'
    b'Request-Disposition:no-fork\r\n'
    b'P-Asserted-Identity:<sip:9171969136@astrakhan.megafonvolga.ru;user=phone>,<tel:9171969136;phone-context=+7>\r\n'
    b'Session-Expires:1800;refresher=uac\r\n'
    b'Contact:<sip:7008@10.249.30.11:5060;transport=SCTP;yop=00.00.08D69D07.0000.7008>\r\n'
    b'Supported:100rel,timer\r\n'
    b'Allow:ACK,BYE,CANCEL,INFO,INVITE,NOTIFY,OPTIONS,PRACK,UPDATE\r\n'
    b'P-Charging-Vector:icid-value=l3IAkHDw~~~~~~~~~~~~~0OHYPQA;icid-generated-at=10.249.30.11;orig-ioi=astrakhan.megafonvolga.ru\r\n'
    b'P-Early-Media:supported\r\n'
    b'Content-Type:multipart/mixed;boundary=8AF759A68474B6758999EB624E30C5271AF8251E\r\n'
    b'MIME-Version:1.0\r\n'
    b'\r\n'
    b'--8AF759A68474B6758999EB624E30C5271AF8251E\r\n'
    b'Content-Type:application/sdp\r\n'
    b'Content-Disposition:session;handling=required\r\n'
    b'\r\n'
    b'v=0\r\n'
    b'o=- 0 0 IN IP4 10.249.30.2\r\n'
    b's=-\r\n'
    b'c=IN IP4 10.249.30.145\r\n'
    b't=0 0\r\n'
    b'm=audio 38060 RTP/AVP 8 13 96\r\n'
    b'b=AS:80\r\n'
    b'a=rtpmap:8 PCMA/8000\r\n'
    b'a=rtpmap:13 CN/8000\r\n'
    b'a=rtpmap:96 telephone-event/8000\r\n'
    b'a=ptime:20\r\n'
    b'a=maxptime:20\r\n'
    b'a=3gOoBTC\r\n'
    b'\r\n'
    b'--8AF759A68474B6758999EB624E30C5271AF8251E\r\n'
    b'Content-Type:application/ISUP;base=itu-t92+;version=itu-t92+\r\n'
    b'Content-Disposition:signal;handling=required\r\n'
    b'Content-Transfer-Encoding:binary\r\n'
    b'\r\n'
    b'\x01\x00 \x01\n'
    b'\x00\x02\n'
    b'\x08\x83\x10)W\x98\x00\x00\x0f\n'
    b'\x07\x03\x13\x19\x17i\x19c\x0b\x07\x03\x14)W\x86\x15"\x13\x02\x03\x11(\x07\x03\x14)W\x86\x15"\x1d\x03\x80\x90\xa31\x02\x00Zo\x08\x84\x14\x97r\x85\t\x00\x009\x041\xd0o\xc0\x00\r\n'
    b'--8AF759A68474B6758999EB624E30C5271AF8251E--'
)


def test_request_basic_fields():
    msg = parse_message(INVITE)
    assert msg.is_request
    assert msg.method == "INVITE"
    assert msg.request_uri == "sip:bob@biloxi.example.com"
    assert msg.status_code is None
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq_num == 314159
    assert msg.cseq_method == "INVITE"
    assert msg.from_addr.display == "Alice"
    assert msg.from_addr.uri.user == "alice"
    assert msg.from_tag == "1928301774"
    assert msg.to_tag is None
    assert msg.to_addr.uri.host == "biloxi.example.com"
    assert msg.via_branch == "z9hG4bK776asdhds"
    assert msg.via_transport == "UDP"
    assert msg.content_type == "application/sdp"
    assert msg.user_agent == "TestPhone/1.0 (build 7, rev 2)"
    assert msg.body == b"v=0\r\ns=-\r\n"
    assert msg.sdp_body() == b"v=0\r\ns=-\r\n"
    assert msg.headers[0] == ("via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds")
    assert [name for name, _ in msg.headers] == [
        "via", "max-forwards", "to", "from", "call-id", "cseq", "contact",
        "user-agent", "content-type", "content-length",
    ]


def test_header_lookup_is_case_insensitive_and_accepts_compact_names():
    msg = parse_message(INVITE)
    assert msg.header("CALL-ID") == msg.call_id
    assert msg.header("i") == msg.call_id
    assert msg.header("X-Missing") is None
    assert msg.header_values("x-missing") == []


def test_compact_headers_folding_and_bare_lf():
    msg = parse_message(COMPACT)
    assert msg.call_id == "98asjd8"
    assert msg.cseq_num == 1 and msg.cseq_method == "INVITE"
    assert msg.header("cseq") == "1 INVITE"
    assert msg.header("subject") == "Need more folding"
    assert msg.from_tag == "88sja8x"
    assert msg.to_addr.uri.user == "bob"
    assert msg.header_values("via") == [
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8",
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2",
    ]
    assert msg.via_branch == "z9hG4bKnashds8"
    assert msg.header_values("supported") == ["100rel", "timer"]
    assert msg.header("contact") == "<sip:alice@pc33.atlanta.example.com>"
    assert msg.content_type == "application/sdp"
    names = {name for name, _ in msg.headers}
    assert names == {"via", "to", "from", "call-id", "cseq", "contact", "supported",
                     "subject", "content-type"}
    # No Content-Length on a datagram: the body is the rest of the datagram.
    assert msg.body == b"v=0\n"
    assert msg.sdp_body() == b"v=0\n"


@pytest.mark.parametrize(
    "compact,long_name",
    [("i", "call-id"), ("f", "from"), ("t", "to"), ("m", "contact"), ("l", "content-length"),
     ("c", "content-type"), ("v", "via"), ("k", "supported"), ("s", "subject"),
     ("e", "content-encoding"), ("o", "event"), ("r", "refer-to"), ("b", "referred-by"),
     ("x", "session-expires"), ("u", "allow-events"), ("a", "accept-contact"),
     ("j", "reject-contact"), ("d", "request-disposition"), ("y", "identity"),
     ("n", "identity-info")],
)
def test_every_compact_form_maps_to_long_name(compact, long_name):
    extra = b"" if compact in "iftl" else compact.upper().encode() + b": zz\r\n"
    data = (
        b"OPTIONS sip:x@y SIP/2.0\r\n"
        b"i: c1\r\nf: <sip:a@b>;tag=1\r\nt: <sip:x@y>\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n" + extra + b"\r\n"
    )
    msg = parse_message(data)
    assert any(name == long_name for name, _ in msg.headers)
    assert all(len(name) > 1 for name, _ in msg.headers)


def test_response_takes_method_from_cseq():
    data = (
        b"SIP/2.0 180 Ringing\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;rport=5060\r\n"
        b"From: <sip:1001@10.0.0.1>;tag=aaa\r\n"
        b"To: <sip:2002@10.0.0.2>;tag=bbb\r\n"
        b"Call-ID: call-1\r\n"
        b"CSeq: 2 INVITE\r\n"
        b"Server: FreeSWITCH-mod_sofia/1.6.12\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert not msg.is_request
    assert msg.status_code == 180
    assert msg.reason == "Ringing"
    assert msg.method == "INVITE"
    assert msg.request_uri is None
    assert msg.to_tag == "bbb"
    assert msg.user_agent == "FreeSWITCH-mod_sofia/1.6.12"
    assert msg.body == b""
    assert msg.sdp_body() is None


def test_status_line_without_reason_phrase():
    data = b"SIP/2.0 200\r\nCall-ID: x\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 BYE\r\n\r\n"
    msg = parse_message(data)
    assert msg.status_code == 200
    assert msg.reason == ""
    assert msg.method == "BYE"


def test_multi_word_reason_phrase():
    data = (b"SIP/2.0 403 The reason is nocallee\r\nCall-ID: x\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>\r\nCSeq: 1 INVITE\r\n\r\n")
    assert parse_message(data).reason == "The reason is nocallee"


def _with_body(content_length: bytes | None, body: bytes) -> bytes:
    head = (b"MESSAGE sip:u@h SIP/2.0\r\nCall-ID: m1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:u@h>\r\n"
            b"CSeq: 7 MESSAGE\r\nContent-Type: text/plain\r\n")
    if content_length is not None:
        head += b"Content-Length: " + content_length + b"\r\n"
    return head + b"\r\n" + body


def test_udp_content_length_absent_takes_rest_of_datagram():
    assert parse_message(_with_body(None, b"hello world")).body == b"hello world"


def test_udp_content_length_shorter_truncates_body():
    assert parse_message(_with_body(b"5", b"hello world")).body == b"hello"


def test_udp_content_length_exact():
    assert parse_message(_with_body(b"11", b"hello world")).body == b"hello world"


def test_udp_content_length_longer_rejects():
    with pytest.raises(SipParseError):
        parse_message(_with_body(b"12", b"hello world"))


def test_content_length_not_a_number_rejects():
    with pytest.raises(SipParseError):
        parse_message(_with_body(b"five", b"hello"))


def test_conflicting_content_lengths_reject():
    data = _with_body(b"5", b"hello").replace(b"Content-Length: 5\r\n", b"Content-Length: 5\r\nl: 3\r\n")
    with pytest.raises(SipParseError):
        parse_message(data)


def test_stream_message_without_content_length_has_empty_body():
    # RFC 3261 18.3: on streams an absent Content-Length means 0.
    assert parse_message(_with_body(None, b""), stream=True).body == b""


def test_trailing_crlf_keepalives_are_tolerated():
    data = b"\r\n\r\n" + _with_body(b"0", b"") + b"\r\n\r\n"
    msg = parse_message(data)
    assert msg.method == "MESSAGE"
    assert msg.body == b""
    no_cl = _with_body(None, b"\r\n\r\n")
    assert parse_message(no_cl).body == b""


def test_message_without_blank_line_and_without_body_is_accepted():
    data = b"BYE sip:u@h SIP/2.0\r\nCall-ID: z\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:u@h>;tag=2\r\nCSeq: 3 BYE"
    msg = parse_message(data)
    assert msg.method == "BYE"
    assert msg.to_tag == "2"


def test_unknown_method_is_fine():
    data = b"FROBNICATE sip:u@h SIP/2.0\r\nCall-ID: z\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:u@h>\r\nCSeq: 1 FROBNICATE\r\n\r\n"
    assert parse_message(data).method == "FROBNICATE"


def test_strange_but_valid_message_accepted():
    # Lowercase version, tabs around ':', addr-spec From, unquoted display name,
    # repeated headers, empty header value, Latin-1 display name.
    data = (
        b"NOTIFY sip:u@[2001:db8::1]:5060 sip/2.0\r\n"
        b"CALL-ID\t:\tn-1@host\r\n"
        b"FROM:sip:a@b;tag=t1\r\n"
        b"To: Ren\xe9 Dupont <sip:u@[2001:db8::1]>\r\n"
        b"cseq: 9 NOTIFY\r\n"
        b"Subject:\r\n"
        b"X-Custom: one, two\r\n"
        b"X-Custom: three\r\n"
        b"\r\n"
    )
    msg = parse_message(data)
    assert msg.request_uri == "sip:u@[2001:db8::1]:5060"
    assert msg.call_id == "n-1@host"
    assert msg.from_tag == "t1"
    assert msg.from_addr.uri.params == {}
    assert msg.to_addr.display == "Ren\xe9 Dupont"
    assert msg.to_addr.uri.host == "2001:db8::1"
    assert msg.header("subject") == ""
    # X-Custom is not a known list header: occurrences are not comma-split.
    assert msg.header_values("x-custom") == ["one, two", "three"]


def test_quoted_utf8_display_names_in_from():
    data = (
        "INVITE sip:u@h SIP/2.0\r\nCall-ID: u8\r\n"
        'From: "Zoë \\"Z\\" Ünal" <sip:zoe@h>;tag=9\r\n'
        "To: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n"
    ).encode("utf-8")
    assert parse_message(data).from_addr.display == 'Zoë "Z" Ünal'


def test_pai_with_sip_and_tel_rpid_diversion_session_id():
    data = (
        b"INVITE sip:+15551230000@gw.example SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKpai\r\n"
        b"From: \"Anon\" <sip:anonymous@anonymous.invalid>;tag=a1\r\n"
        b"To: <sip:+15551230000@gw.example>\r\n"
        b"Call-ID: pai-1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"P-Asserted-Identity: \"Alice Smith\" <sip:+15550001111@carrier.example;user=phone>, <tel:+15550001111>\r\n"
        b"Remote-Party-ID: \"Alice\" <sip:5550001111@carrier.example>;party=calling;privacy=full;screen=yes\r\n"
        b"Diversion: <sip:2001@pbx.example>;reason=unconditional;counter=1\r\n"
        b"Diversion: \"Desk, Front\" <tel:+15559990000>;reason=user-busy, <sip:2002@pbx.example>;reason=no-answer\r\n"
        b"Session-ID: AB30317F1A784DC48FF824D0D3715D86;remote=00000000000000000000000000000000\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert len(msg.pai) == 2
    assert msg.pai[0].display == "Alice Smith"
    assert msg.pai[0].uri.scheme == "sip"
    assert msg.pai[0].uri.user == "+15550001111"
    assert msg.pai[0].uri.params == {"user": "phone"}
    assert msg.pai[1].uri.scheme == "tel"
    assert msg.pai[1].uri.user == "+15550001111"
    assert msg.rpid is not None
    assert msg.rpid.display == "Alice"
    assert msg.rpid.uri.user == "5550001111"
    assert msg.rpid.params == {"party": "calling", "privacy": "full", "screen": "yes"}
    assert [d.uri.user for d in msg.diversion] == ["2001", "+15559990000", "2002"]
    assert msg.diversion[1].display == "Desk, Front"
    assert [d.params["reason"] for d in msg.diversion] == ["unconditional", "user-busy", "no-answer"]
    assert msg.session_id == "ab30317f1a784dc48ff824d0d3715d86"
    assert msg.via_transport == "TCP"


def test_missing_optional_identities():
    msg = parse_message(INVITE)
    assert msg.pai == []
    assert msg.rpid is None
    assert msg.diversion == []
    assert msg.session_id is None


def test_null_session_id_is_none():
    data = INVITE.replace(b"Max-Forwards: 70\r\n", b"Session-ID: 00000000000000000000000000000000\r\n")
    assert parse_message(data).session_id is None


def test_sip_i_multipart_sdp_and_isup():
    msg = parse_message(SIP_I_INVITE)
    assert msg.method == "INVITE"
    assert msg.content_type == "multipart/mixed"
    assert len(msg.body) == 657
    assert msg.body.endswith(b"--8AF759A68474B6758999EB624E30C5271AF8251E--")
    sdp = msg.sdp_body()
    assert sdp is not None
    assert sdp.startswith(b"v=0\r\no=- 0 0 IN IP4 10.249.30.2\r\n")
    assert sdp.endswith(b"a=3gOoBTC\r\n")
    assert b"ISUP" not in sdp
    assert [p.uri.scheme for p in msg.pai] == ["sip", "tel"]
    assert msg.pai[1].uri.user == "9171969136"
    assert msg.pai[1].uri.params == {"phone-context": "+7"}
    assert msg.from_addr.uri.user == "9171969136"
    assert msg.from_tag == "9Ub.i1YV7Yag2._5"
    assert msg.via_transport == "SCTP"
    assert msg.header("request-disposition") == "no-fork"


def test_multipart_alternative_with_quoted_boundary_and_lf():
    body = (
        b"preamble\n"
        b"--b1\n"
        b"Content-Type: text/plain\n\n"
        b"hello\n"
        b"--b1\n"
        b"Content-Type: application/SDP\n\n"
        b"v=0\nm=audio 4000 RTP/AVP 0\n"
        b"--b1--\n"
    )
    data = (
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: mp\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:u@h>\r\n"
        b"CSeq: 1 INVITE\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n" + body
    )
    msg = parse_message(data)
    assert msg.sdp_body() == b"v=0\nm=audio 4000 RTP/AVP 0"


def test_non_sdp_body_gives_no_sdp():
    assert parse_message(_with_body(b"5", b"hello")).sdp_body() is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"HELLO WORLD\r\n\r\n",
        b"INVITE sip:u@h SIP/3.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"SIP/2.0 99 Low\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"SIP/2.0 2000 Big\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INV(TE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        # each mandatory header missing in turn
        b"INVITE sip:u@h SIP/2.0\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\n\r\n",
        # bad CSeq, bad From, header line without colon, fold before any header, binary junk
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: one INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: \"x <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\nGarbage line\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\n folded\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: x\x00\x01\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"INVITE sip:u@h SIP/2.0\r\nCall-ID: \r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n",
        b"\x80\x00\x12\x34" + b"\x00" * 160,
    ],
)
def test_malformed_messages_rejected(data):
    with pytest.raises(SipParseError):
        parse_message(data)


def test_size_limit():
    big = _with_body(None, b"x" * 70_000)
    with pytest.raises(SipParseError):
        parse_message(big)
    assert len(parse_message(big, max_bytes=100_000).body) == 70_000


def test_looks_like_sip():
    assert looks_like_sip(INVITE)
    assert looks_like_sip(COMPACT)
    assert looks_like_sip(SIP_I_INVITE)
    assert looks_like_sip(b"SIP/2.0 200 OK\r\n")
    assert looks_like_sip(b"\r\nOPTIONS sip:x SIP/2.0\r\n")
    assert looks_like_sip(b"FOO sip:x SIP/2.0\n")
    assert not looks_like_sip(b"")
    assert not looks_like_sip(b"\r\n\r\n")
    assert not looks_like_sip(b"\x80\x08\x00\x01" + bytes(160))  # RTP
    assert not looks_like_sip(b"GET / HTTP/1.1\r\n")
    assert not looks_like_sip(b"SIP/2.0 abc\r\n")
    assert not looks_like_sip(b"HELLO there SIP/2.0 is nice\r\n")
    assert looks_like_sip(b"INVITE sip:x SIP/2.0")  # no line end yet: the payload is the line
    assert not looks_like_sip(b"\x16\x03\x01\x02\x00")  # TLS record


def test_looks_like_sip_is_fast_on_rtp():
    import time

    rtp = b"\x80\x00\x12\x34" + bytes(168)
    start = time.perf_counter()
    for _ in range(100_000):
        looks_like_sip(rtp)
    # Generous bound (2 µs/packet) so a loaded CI box passes; typical is ~0.1 µs.
    assert time.perf_counter() - start < 0.2


def test_control_bytes_inside_a_header_value_are_tolerated():
    # Seen in erspan_sip_ipv4_udp.pcapng: raw bytes in a Via branch of a real 481.
    data = (b"SIP/2.0 481 Call leg/Transaction does not exist\r\n"
            b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-5af571e&Sy\x18\x01\r\n"
            b"From: sip:20008909@192.168.1.191;tag=1\r\nTo: sip:x@y\r\nCall-ID: c\r\nCSeq: 1 BYE\r\n\r\n")
    msg = parse_message(data)
    assert msg.status_code == 481
    assert msg.via_branch == "z9hG4bK-5af571e&Sy\x18\x01"


def test_control_bytes_in_the_start_line_are_rejected():
    data = b"INVITE sip:u@h\x01 SIP/2.0\r\nCall-ID: x\r\nFrom: <sip:a@b>\r\nTo: <sip:u@h>\r\nCSeq: 1 INVITE\r\n\r\n"
    with pytest.raises(SipParseError):
        parse_message(data)


def test_hand_built_message_views_work_without_parse():
    from agent.sip.message import SipMessage

    msg = SipMessage(
        is_request=True, method="BYE", request_uri="sip:u@h", status_code=None, reason="",
        headers=[("call-id", "hb-1"), ("from", "<sip:a@b>;tag=x"), ("to", "<sip:u@h>;tag=y"),
                 ("cseq", "4 BYE")],
        body=b"",
    )
    assert msg.call_id == "hb-1"
    assert msg.from_tag == "x" and msg.to_tag == "y"
    assert (msg.cseq_num, msg.cseq_method) == (4, "BYE")

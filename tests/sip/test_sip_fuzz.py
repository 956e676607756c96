"""Property tests: the parsers return or raise their ParseError subclass, never anything else."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import SdpParseError, SipParseError
from agent.sip.dtmf_info import parse_dtmf_info
from agent.sip.framing import SipStreamFramer
from agent.sip.message import looks_like_sip, parse_message
from agent.sip.sdp import parse_sdp
from agent.sip.uri import parse_name_addr, parse_uri, split_header_values

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = (
    b"INVITE sip:bob@[2001:db8::1]:5060 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    b'f: "A\\"b" <sip:a@h>;tag=1\r\nt: Bob <sip:b@h>\r\ni: c\r\nCSeq: 1 INVITE\r\n'
    b"P-Asserted-Identity: <sip:1@h>, <tel:+1;phone-context=x>\r\n"
    b"Content-Type: multipart/mixed;boundary=zz\r\nl: 60\r\n\r\n"
    b"--zz\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n--zz--\r\n"
)

# Mutations of a valid message reach much deeper than uniformly random bytes.
mutated = st.builds(
    lambda data, pos, junk: data[:pos] + junk + data[pos + len(junk) :],
    st.just(VALID),
    st.integers(min_value=0, max_value=len(VALID)),
    st.binary(max_size=8),
)

SIP_ALPHABET = st.sampled_from(
    [b"SIP/2.0", b" ", b"\r\n", b"\n", b":", b";", b",", b"<", b">", b'"', b"\\", b"sip:", b"tel:",
     b"INVITE", b"Call-ID", b"From", b"To", b"CSeq", b"l", b"Content-Length", b"1", b"0", b"\t",
     b"@", b"[", b"]", b"=", b"tag", b"\xff", b"\x00", b"multipart/mixed", b"boundary", b"--"]
)
tokens = st.lists(SIP_ALPHABET, max_size=60).map(b"".join)


def _check_message(data: bytes) -> None:
    looks_like_sip(data)
    for stream in (False, True):
        try:
            msg = parse_message(data, stream=stream)
        except SipParseError:
            continue
        # The lazy views must not raise anything either.
        msg.pai, msg.rpid, msg.diversion, msg.session_id, msg.via_branch, msg.via_transport
        msg.content_type, msg.user_agent, msg.header_values("via")
        body = msg.sdp_body()
        if body is not None:
            try:
                parse_sdp(body)
            except SdpParseError:
                pass


@SETTINGS
@given(st.binary(max_size=2048))
def test_parse_message_arbitrary_bytes(data):
    _check_message(data)


@SETTINGS
@given(st.one_of(mutated, tokens))
def test_parse_message_structured_junk(data):
    _check_message(data)


SDP_ALPHABET = st.sampled_from(
    [b"v=0", b"m=", b"c=", b"a=", b"o=", b"audio ", b"video ", b"IN IP4 ", b"IN IP6 ", b"rtpmap:",
     b"fmtp:", b"ptime:", b"rtcp:", b"crypto:", b"sendonly", b"RTP/AVP ", b"RTP/SAVP", b"/", b" ",
     b"\r\n", b"\n", b"0", b"8", b"96", b"65535", b"99999999999", b"-1", b"::", b"0.0.0.0", b"\xff"]
)


@SETTINGS
@given(st.one_of(st.binary(max_size=2048), st.lists(SDP_ALPHABET, max_size=80).map(b"".join)))
def test_parse_sdp_arbitrary_bytes(data):
    try:
        sdp = parse_sdp(data)
    except SdpParseError:
        return
    for m in sdp.media:
        assert 0 <= m.port <= 65535
        assert all(0 <= pt <= 127 for pt in m.payload_types)
        m.is_hold


@SETTINGS
@given(st.text(max_size=300))
def test_parse_uri_and_name_addr_arbitrary_text(text):
    for func in (parse_uri, parse_name_addr):
        try:
            func(text)
        except SipParseError:
            pass
    split_header_values(text)


@SETTINGS
@given(st.text(max_size=40), st.binary(max_size=200))
def test_parse_dtmf_info_never_raises(ctype, body):
    result = parse_dtmf_info(ctype, body)
    assert result is None or result[0] in "0123456789*#ABCD"


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=200), tokens, st.just(VALID)), max_size=20))
def test_framer_never_raises_and_stays_bounded(chunks):
    framer = SipStreamFramer(max_buffer=4096)
    for chunk in chunks:
        for raw in framer.feed(chunk):
            try:
                parse_message(raw, stream=True)
            except SipParseError:
                pass
        assert framer.buffered_bytes <= 4096 + 8192 + 300

"""SDP parsing with literal bodies: connections, hold, codecs, encryption, hostile input."""

import pytest

from agent.errors import SdpParseError
from agent.sip.sdp import RtpMap, parse_sdp

OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844527 IN IP4 host.atlanta.example.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8 18 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=fmtp:18 annexb=no\r\n"
    b"a=ptime:20\r\n"
    b"a=rtcp:49173\r\n"
    b"m=video 51372 RTP/AVP 99\r\n"
    b"c=IN IP4 192.0.2.102\r\n"
    b"a=rtpmap:99 H264/90000\r\n"
    b"a=recvonly\r\n"
)


def test_offer_session_and_media_level():
    sdp = parse_sdp(OFFER)
    assert sdp.origin is not None
    assert sdp.origin.username == "alice"
    assert sdp.origin.session_id == "2890844526"
    assert sdp.origin.version == "2890844527"
    assert sdp.origin.addr == "host.atlanta.example.com"
    assert sdp.connection_ip == "192.0.2.101"
    assert sdp.direction == "sendrecv"
    assert len(sdp.media) == 2
    audio = sdp.audio
    assert len(audio) == 1
    a = audio[0]
    assert a.kind == "audio"
    assert a.port == 49172
    assert a.port_count == 1
    assert a.proto == "RTP/AVP"
    assert a.formats == ("0", "8", "18", "101")
    assert a.payload_types == (0, 8, 18, 101)
    assert a.connection_ip == "192.0.2.101"  # session-level c=
    assert a.rtpmaps == {
        0: RtpMap(0, "PCMU", 8000, 1),
        8: RtpMap(8, "PCMA", 8000, 1),
        18: RtpMap(18, "G729", 8000, 1),
        101: RtpMap(101, "telephone-event", 8000, 1),
    }
    assert a.fmtp == {101: "0-16", 18: "annexb=no"}
    assert a.ptime_ms == 20
    assert a.rtcp_port == 49173
    assert not a.rtcp_mux
    assert a.direction == "sendrecv"
    assert not a.is_hold
    assert not a.encrypted
    v = sdp.media[1]
    assert v.kind == "video"
    assert v.connection_ip == "192.0.2.102"  # media-level c= wins
    assert v.rtpmaps == {99: RtpMap(99, "H264", 90000, 1)}
    assert v.direction == "recvonly"
    assert not v.is_hold


def test_lf_line_ends_trailing_spaces_and_unknown_lines():
    body = (
        b"v=0  \n"
        b"o=- 1 2 IN IP4 10.0.0.1 \n"
        b"this is not an sdp line\n"
        b"x=whatever\n"
        b"c=IN IP4 10.0.0.1/127\n"
        b"\n"
        b"m=audio 4000 RTP/AVP 8   \n"
        b"a=X-nonsense:1\n"
    )
    sdp = parse_sdp(body)
    assert sdp.connection_ip == "10.0.0.1"  # multicast TTL suffix removed
    m = sdp.media[0]
    assert m.port == 4000
    assert m.payload_types == (8,)
    assert m.rtpmaps[8] == RtpMap(8, "PCMA", 8000, 1)


def test_ipv6_connection():
    body = (b"v=0\r\no=- 1 1 IN IP6 2001:DB8::1\r\ns=-\r\nc=IN IP6 2001:DB8:0:0::0:10\r\nt=0 0\r\n"
            b"m=audio 5004 RTP/AVP 0\r\n")
    sdp = parse_sdp(body)
    assert sdp.connection_ip == "2001:db8::10"
    assert sdp.media[0].connection_ip == "2001:db8::10"
    assert sdp.origin is not None and sdp.origin.addr == "2001:DB8::1"


@pytest.mark.parametrize(
    "session_attr,media_attr,conn,hold,direction",
    [
        (b"", b"a=sendonly\r\n", b"10.0.0.1", True, "sendonly"),
        (b"", b"a=inactive\r\n", b"10.0.0.1", True, "inactive"),
        (b"", b"a=recvonly\r\n", b"10.0.0.1", False, "recvonly"),
        (b"", b"", b"0.0.0.0", True, "sendrecv"),  # RFC 2543 hold
        (b"a=sendonly\r\n", b"", b"10.0.0.1", True, "sendonly"),  # session-level direction
        (b"a=sendonly\r\n", b"a=sendrecv\r\n", b"10.0.0.1", False, "sendrecv"),  # media wins
    ],
)
def test_hold_forms(session_attr, media_attr, conn, hold, direction):
    body = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 " + conn + b"\r\nt=0 0\r\n"
            + session_attr + b"m=audio 4000 RTP/AVP 0\r\n" + media_attr)
    m = parse_sdp(body).media[0]
    assert m.direction == direction
    assert m.is_hold is hold
    assert m.connection_ip == conn.decode()


def test_rtcp_mux_and_rtcp_with_address():
    body = b"v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:4001 IN IP4 10.0.0.9\r\n"
    m = parse_sdp(body).media[0]
    assert m.rtcp_mux
    assert m.rtcp_port == 4001
    assert m.connection_ip is None


def test_static_payload_type_defaults():
    body = b"v=0\r\nm=audio 4000 RTP/AVP 0 3 4 5 6 7 8 9 10 11 13 18\r\n"
    maps = parse_sdp(body).media[0].rtpmaps
    assert {pt: (r.encoding, r.clock_rate_hz, r.channels) for pt, r in maps.items()} == {
        0: ("PCMU", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1), 5: ("DVI4", 8000, 1),
        6: ("DVI4", 16000, 1), 7: ("LPC", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1),
        10: ("L16", 44100, 2), 11: ("L16", 44100, 1), 13: ("CN", 8000, 1), 18: ("G729", 8000, 1),
    }


def test_explicit_rtpmap_overrides_static_default_and_dynamic_without_rtpmap_is_absent():
    body = b"v=0\r\nm=audio 4000 RTP/AVP 0 96 97\r\na=rtpmap:0 pcmu/8000\r\na=rtpmap:97 opus/48000/2\r\n"
    m = parse_sdp(body).media[0]
    assert m.rtpmaps[0] == RtpMap(0, "pcmu", 8000, 1)
    assert 96 not in m.rtpmaps
    assert m.rtpmaps[97] == RtpMap(97, "opus", 48000, 2)
    assert m.payload_types == (0, 96, 97)


def test_dynamic_codecs_from_the_lab_captures():
    body = (b"v=0\r\nm=audio 4000 RTP/AVP 112 113 101\r\na=rtpmap:112 G726-32/8000\r\n"
            b"a=rtpmap:113 iLBC/8000\r\na=fmtp:113 mode=30\r\na=rtpmap:101 telephone-event/8000\r\n"
            b"a=fmtp:101 0-16\r\na=ptime:30.0\r\n")
    m = parse_sdp(body).media[0]
    assert m.rtpmaps[112].encoding == "G726-32"
    assert m.rtpmaps[113] == RtpMap(113, "iLBC", 8000, 1)
    assert m.fmtp[113] == "mode=30"
    assert m.rtpmaps[101].encoding == "telephone-event"
    assert m.ptime_ms == 30


@pytest.mark.parametrize(
    "media,encrypted",
    [
        (b"m=audio 4000 RTP/SAVP 0\r\n", True),
        (b"m=audio 4000 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n", True),
        (b"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD\r\na=setup:actpass\r\n", True),
        (b"m=audio 4000 RTP/AVP 0\r\na=zrtp-hash:1.10 fe30efd02423cb054e50efd0248742ac7a52c8f91bc2df881ae642c371ba46df\r\n", True),
        (b"m=audio 4000 RTP/AVP 0\r\n", False),
        (b"m=audio 4000 RTP/AVP 0\r\na=fingerprint:sha-1 AA:BB\r\n", False),  # no DTLS proto
    ],
)
def test_encrypted_detection(media, encrypted):
    m = parse_sdp(b"v=0\r\nc=IN IP4 10.0.0.1\r\n" + media).media[0]
    assert m.encrypted is encrypted


def test_crypto_lines_collected():
    key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"        # 30 bytes: AES-128 key || salt
    body = (b"v=0\r\nm=audio 4000 RTP/SAVP 0\r\n"
            b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + key.encode() + b"|2^20|1:4\r\n"
            b"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:" + key.encode() + b" KDR=1\r\n"
            b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:not-base64!\r\n")
    m = parse_sdp(body).media[0]
    assert [(c.tag, c.suite, c.mki_bytes, c.session_params) for c in m.crypto] == [
        (1, "AES_CM_128_HMAC_SHA1_80", 4, ()),
        (2, "AES_CM_128_HMAC_SHA1_32", 0, ("KDR=1",)),
    ]
    assert m.crypto[0].keys[0].lifetime_packets == 1 << 20 and m.crypto[0].keys[0].mki == 1
    assert m.crypto_skipped == 1
    assert key not in repr(m)


def test_session_level_zrtp_hash_marks_media_encrypted():
    body = b"v=0\r\na=zrtp-hash:1.10 00ff\r\nm=audio 4000 RTP/AVP 0\r\n"
    assert parse_sdp(body).media[0].encrypted


def test_video_and_t38_image_lines():
    body = (
        b"v=0\r\no=- 1 2 IN IP4 10.35.60.100\r\ns=-\r\nc=IN IP4 10.35.60.100\r\nt=0 0\r\n"
        b"m=video 0 RTP/AVP 31\r\n"
        b"m=image 16390 udptl t38\r\n"
        b"a=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\na=T38FaxRateManagement:transferredTCF\r\n"
    )
    sdp = parse_sdp(body)
    video, image = sdp.media
    assert video.kind == "video"
    assert video.port == 0 and video.disabled
    assert video.rtpmaps[31].encoding == "H261"
    assert image.kind == "image"
    assert image.proto == "udptl"
    assert image.formats == ("t38",)
    assert image.payload_types == ()
    assert image.rtpmaps == {}
    assert image.port == 16390
    assert sdp.audio == []


def test_port_zero_rejected_stream_and_port_count():
    body = b"v=0\r\nm=audio 0 RTP/AVP 0\r\nm=audio 4000/2 RTP/AVP 8\r\n"
    sdp = parse_sdp(body)
    assert sdp.media[0].port == 0 and sdp.media[0].disabled
    assert sdp.media[1].port_count == 2


def test_hostile_numbers_are_clamped_or_ignored():
    body = (
        b"v=0\r\n"
        b"m=audio 65535/99999 RTP/AVP 0 300 -1 abc 96\r\n"
        b"a=rtpmap:96 foo/99999999999\r\n"  # clock rate too long: ignored
        b"a=rtpmap:300 bar/8000\r\n"  # PT out of range: ignored
        b"a=rtpmap:97 baz/9999999/9999\r\n"
        b"a=ptime:999999999\r\n"
        b"a=rtcp:99999\r\n"
        b"a=fmtp:x y\r\n"
    )
    m = parse_sdp(body).media[0]
    assert m.port_count == 1
    assert m.payload_types == (0, 96)
    assert 96 not in m.rtpmaps
    assert m.rtpmaps[97].clock_rate_hz == 1_000_000
    assert m.rtpmaps[97].channels == 64
    assert m.ptime_ms is None
    assert m.rtcp_port is None
    assert m.fmtp == {}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"hello world",
        b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\nm=audio abc RTP/AVP 0\r\n",
        b"v=0\r\nm=audio 4000\r\n",
        b"v=0\r\nm=audio \xd9\xa1\xd9\xa2 RTP/AVP 0\r\n",  # Arabic-Indic digits are not a port
        b"v=0\r\n" + b"m=audio 4000 RTP/AVP 0\r\n" * 100,
        b"v=0\r\n" + b"a=x\r\n" * 5000,
    ],
)
def test_hopeless_sdp_raises_sdp_parse_error(body):
    with pytest.raises(SdpParseError):
        parse_sdp(body)

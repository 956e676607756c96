"""SIP-over-TCP framing: split and coalesced messages, keep-alives, junk, WebSocket, TLS."""

import os

from agent.sip.framing import SipStreamFramer
from agent.sip.message import parse_message

BODY = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"

MSG_WITH_BODY = (
    b"INVITE sip:201@10.0.0.2 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK-a\r\n"
    b"From: <sip:101@10.0.0.1>;tag=f1\r\n"
    b"To: <sip:201@10.0.0.2>\r\n"
    b"Call-ID: tcp-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
MSG_NO_BODY = (
    b"SIP/2.0 100 Trying\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK-a\r\n"
    b"From: <sip:101@10.0.0.1>;tag=f1\r\n"
    b"To: <sip:201@10.0.0.2>\r\n"
    b"Call-ID: tcp-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"l: 0\r\n"
    b"\r\n"
)
# No Content-Length at all: on a stream that means an empty body.
MSG_NO_CL = (
    b"ACK sip:201@10.0.0.2 SIP/2.0\r\n"
    b"From: <sip:101@10.0.0.1>;tag=f1\r\nTo: <sip:201@10.0.0.2>;tag=t2\r\n"
    b"Call-ID: tcp-1\r\nCSeq: 1 ACK\r\n\r\n"
)


def test_single_message_in_one_chunk():
    framer = SipStreamFramer()
    assert framer.feed(MSG_WITH_BODY) == [MSG_WITH_BODY]
    assert framer.kind == "sip"
    assert framer.buffered_bytes == 0
    assert parse_message(MSG_WITH_BODY, stream=True).body == BODY


def test_coalesced_messages_with_keepalives():
    framer = SipStreamFramer()
    stream = b"\r\n\r\n" + MSG_WITH_BODY + b"\r\n" + MSG_NO_BODY + b"\r\n\r\n" + MSG_NO_CL
    assert framer.feed(stream) == [MSG_WITH_BODY, MSG_NO_BODY, MSG_NO_CL]
    assert framer.keepalives == 10
    assert framer.skipped_bytes == 0
    assert framer.resyncs == 0
    assert framer.messages == 3


def test_keepalive_only_chunks_produce_nothing():
    framer = SipStreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []
    assert framer.feed(MSG_NO_BODY) == [MSG_NO_BODY]
    assert framer.kind == "sip"


def test_message_split_at_every_byte_position():
    stream = MSG_WITH_BODY + MSG_NO_BODY + MSG_NO_CL
    for cut in range(1, len(stream)):
        framer = SipStreamFramer()
        out = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert out == [MSG_WITH_BODY, MSG_NO_BODY, MSG_NO_CL], cut
        assert framer.skipped_bytes == 0


def test_message_fed_one_byte_at_a_time():
    framer = SipStreamFramer()
    out: list[bytes] = []
    for i in range(len(MSG_WITH_BODY)):
        out += framer.feed(MSG_WITH_BODY[i : i + 1])
    assert out == [MSG_WITH_BODY]


def test_random_chunking_is_equivalent():
    rng = __import__("random").Random(7)
    stream = (MSG_WITH_BODY + b"\r\n\r\n" + MSG_NO_BODY) * 20
    framer = SipStreamFramer()
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 300)
        out += framer.feed(stream[pos : pos + step])
        pos += step
    assert out == [MSG_WITH_BODY, MSG_NO_BODY] * 20


def test_bare_lf_message():
    msg = MSG_NO_BODY.replace(b"\r\n", b"\n")
    framer = SipStreamFramer()
    assert framer.feed(msg + msg) == [msg, msg]


def test_junk_before_first_message_resyncs():
    # A capture that starts mid-message: the tail of a body, then a real message.
    junk = b"a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    framer = SipStreamFramer()
    assert framer.feed(junk + MSG_NO_BODY) == [MSG_NO_BODY]
    assert framer.kind == "sip"
    assert framer.skipped_bytes == len(junk)
    assert framer.resyncs == 1


def test_binary_junk_between_messages_resyncs():
    junk = bytes(range(256)) * 3 + b"\n"
    framer = SipStreamFramer()
    out = framer.feed(MSG_NO_BODY + junk + MSG_WITH_BODY)
    assert out == [MSG_NO_BODY, MSG_WITH_BODY]
    assert framer.skipped_bytes == len(junk)
    assert framer.resyncs == 1


def test_junk_tail_waits_for_more_bytes():
    framer = SipStreamFramer()
    assert framer.feed(b"garbage line\r\nINVITE sip:201@10.0.") == []
    assert framer.skipped_bytes == len(b"garbage line\r\n")
    rest = MSG_WITH_BODY[len(b"INVITE sip:201@10.0.") :]
    assert framer.feed(rest) == [MSG_WITH_BODY]


def test_buffer_is_bounded_when_no_header_end_arrives():
    framer = SipStreamFramer(max_buffer=4096)
    head = b"INVITE sip:x@y SIP/2.0\r\n"
    assert framer.feed(head) == []
    for _ in range(100):
        framer.feed(b"X-Filler: " + b"a" * 100 + b"\r\n")
        assert framer.buffered_bytes <= 4096 + 200
    assert framer.resyncs >= 1
    assert framer.skipped_bytes > 0
    # And it recovers on the next real message.
    assert framer.feed(b"\r\n\r\n" + MSG_NO_BODY)[-1:] == [MSG_NO_BODY]


def test_oversized_content_length_is_dropped():
    huge = MSG_NO_BODY.replace(b"l: 0", b"l: 9999999")
    framer = SipStreamFramer(max_buffer=64 * 1024)
    out = framer.feed(huge + MSG_NO_CL)
    assert out == [MSG_NO_CL]
    assert framer.resyncs == 1


def test_tls_stream_detected_and_skipped():
    framer = SipStreamFramer()
    record = b"\x16\x03\x01\x00\x05hello"
    assert framer.feed(record) == []
    assert framer.kind == "tls"
    assert framer.feed(b"\x17\x03\x03\x00\x02ab") == []
    assert framer.skipped_bytes == len(record) + 7
    assert framer.buffered_bytes == 0


def test_kind_undecided_until_first_line_complete():
    framer = SipStreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.kind is None
    assert framer.feed(b"INVI") == []
    assert framer.kind is None
    assert framer.feed(MSG_WITH_BODY[4:]) == [MSG_WITH_BODY]
    assert framer.kind == "sip"


def test_non_sip_stream_is_unknown():
    framer = SipStreamFramer()
    assert framer.feed(b"SSH-2.0-OpenSSH_9.6\r\n" + os.urandom(500).replace(b"\n", b"")) == []
    assert framer.kind == "unknown"
    assert framer.skipped_bytes > 0


def _ws_frame(payload: bytes, *, mask: bytes | None = None, opcode: int = 1, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes([b0, (0x80 if mask else 0) | n])
    elif n < 65536:
        header = bytes([b0, (0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([b0, (0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + payload
    return header + payload


def test_websocket_upgrade_then_masked_frames():
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: 10.0.0.2:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Protocol: sip\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    stream = (
        upgrade
        + _ws_frame(MSG_WITH_BODY, mask=b"\x01\x02\x03\x04")
        + _ws_frame(b"", opcode=9)  # ping
        + _ws_frame(MSG_NO_BODY[:30], mask=b"\xaa\xbb\xcc\xdd", fin=False)
        + _ws_frame(MSG_NO_BODY[30:], mask=b"\x11\x22\x33\x44", opcode=0)
    )
    for cut in (1, len(upgrade), len(upgrade) + 3, len(stream) - 5):
        framer = SipStreamFramer()
        out = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert framer.kind == "websocket"
        assert out == [MSG_WITH_BODY, MSG_NO_BODY], cut


def test_websocket_server_side_unmasked_frames_after_101():
    response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    framer = SipStreamFramer()
    big = MSG_NO_BODY.replace(b"l: 0", b"X-Pad: " + b"p" * 300 + b"\r\nl: 0")
    out = framer.feed(response + _ws_frame(big) + _ws_frame(MSG_NO_CL))
    assert framer.kind == "websocket"
    assert out == [big, MSG_NO_CL]


def test_websocket_frames_without_handshake_in_capture():
    framer = SipStreamFramer()
    assert framer.feed(_ws_frame(MSG_NO_BODY, mask=b"abcd")) == [MSG_NO_BODY]
    assert framer.kind == "websocket"

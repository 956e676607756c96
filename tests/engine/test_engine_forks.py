"""Early media from several forks: after the answer only the answering fork's media is kept."""

from collections import Counter

from agent.calls.tracker import CallTracker
from agent.config import SipSection
from agent.net.datagram import Datagram
from agent.sip.message import parse_message

CALLER_IP, PROXY_IP = "10.0.0.10", "10.0.0.1"


def _sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _msg(first: str, to_tag: str, cseq: str, body: str = "") -> bytes:
    to = "<sip:1002@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = (f"{first}\r\nVia: SIP/2.0/UDP {CALLER_IP};branch=z9hG4bK1\r\n"
            f"From: <sip:1001@example.com>;tag=from1\r\nTo: {to}\r\nCall-ID: fork-1\r\nCSeq: {cseq}\r\n")
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n" + body).encode()


def test_answer_keeps_only_the_answering_forks_media():
    tracker = CallTracker(SipSection(), Counter())

    def feed(ts_s: float, src: str, dst: str, data: bytes) -> None:
        dgram = Datagram(int(ts_s * 1e9), src, 5060, dst, 5060, "udp", data)
        tracker.on_sip(parse_message(data), dgram)

    feed(0.0, CALLER_IP, PROXY_IP, _msg("INVITE sip:1002@example.com SIP/2.0", "", "1 INVITE",
                                          _sdp(CALLER_IP, 40000)))
    feed(0.1, PROXY_IP, CALLER_IP, _msg("SIP/2.0 183 Session Progress", "fork-a", "1 INVITE",
                                          _sdp("10.0.0.21", 50000)))
    feed(0.2, PROXY_IP, CALLER_IP, _msg("SIP/2.0 183 Session Progress", "fork-b", "1 INVITE",
                                          _sdp("10.0.0.22", 52000)))
    assert ("10.0.0.21", 50000) in tracker.endpoints and ("10.0.0.22", 52000) in tracker.endpoints
    feed(1.0, PROXY_IP, CALLER_IP, _msg("SIP/2.0 200 OK", "fork-b", "1 INVITE", _sdp("10.0.0.22", 52000)))
    assert ("10.0.0.21", 50000) not in tracker.endpoints        # the fork that lost
    assert tracker.endpoints[("10.0.0.22", 52000)][1] == 1      # the answering fork, callee side
    assert tracker.endpoints[(CALLER_IP, 40000)][1] == 0
    call = tracker.calls["fork-1"]
    assert call.parties[1].sdp_endpoints == [("10.0.0.22", 52000)]
    assert tracker.counters["calls.fork_media_dropped"] == 1

"""Parse every SIP message in real public captures and agree with the tshark truth files.

The captures live outside the repo (../shared/pcaps/public); these tests skip
cleanly when it is absent. scapy only extracts UDP/TCP payloads here: it is a
test oracle, never used by the agent itself.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from agent.errors import ParseError
from agent.sip.dtmf_info import parse_dtmf_info
from agent.sip.framing import SipStreamFramer
from agent.sip.message import SipMessage, looks_like_sip, parse_message
from agent.sip.sdp import parse_sdp

PUBLIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "public"

pytestmark = pytest.mark.skipif(not PUBLIC.is_dir(), reason="public captures not available")

# Files whose SIP is all UDP (port 5060), so the UDP payload count is the message count.
UDP_FILES = [
    "sip-rtp-g711.pcap",
    "aaa.pcap",
    "sip_dtmf2.pcap",
    "sip-rtp-g726.pcap",
    "sip-rtp-l16.pcap",
    "dtmfsipinfo.pcap",
    "magicjack_short_call.pcap",
    "sip_call_rtp_g711.pcap",
    "sip_ipv6_udp.pcap",
    "erspan_sip_ipv4_udp.pcapng",  # includes raw control bytes inside Via branches
    "asterisk_zfone_xlite.pcap",
]
TCP_FILES = ["sip-over-tcp.pcap", "fragmented_tcp_sip.pcap", "sip_tcp_websocket.pcap"]


def _truth(name: str) -> dict:
    return json.loads((PUBLIC / "truth" / f"{name}.json").read_text())


def _udp_messages(name: str) -> tuple[dict[int, tuple[str, SipMessage]], int]:
    """frame number -> (src "ip:port", message) for every UDP SIP payload; and failures."""
    scapy_all = pytest.importorskip("scapy.all")
    messages: dict[int, tuple[str, SipMessage]] = {}
    failures = 0
    for frame_no, pkt in enumerate(scapy_all.rdpcap(str(PUBLIC / name)), start=1):
        udp = pkt.getlayer(scapy_all.UDP)
        if udp is None:
            continue
        payload = bytes(udp.payload)
        if not looks_like_sip(payload):
            continue
        ip = udp.underlayer  # the innermost IP (ERSPAN/GRE captures have two)
        try:
            src = f"[{ip.src}]" if ":" in ip.src else ip.src
            messages[frame_no] = (f"{src}:{udp.sport}", parse_message(payload))
        except ParseError:
            failures += 1
    return messages, failures


def _sdp_view(msg: SipMessage) -> list[dict]:
    body = msg.sdp_body()
    assert body is not None
    out = []
    for m in parse_sdp(body).media:
        payloads = []
        for pt in m.payload_types:
            rtpmap = m.rtpmaps.get(pt)
            if rtpmap is not None:
                text = f"{pt}={rtpmap.encoding}/{rtpmap.clock_rate_hz}"
                payloads.append(text + (f"/{rtpmap.channels}" if rtpmap.channels > 1 else ""))
        out.append(
            {
                "media": m.kind,
                "connection": m.connection_ip,
                "port": m.port,
                "proto": m.proto,
                "payloads": payloads,
                "direction": m.direction,
            }
        )
    return out


@pytest.mark.parametrize("name", UDP_FILES)
def test_udp_capture_messages_calls_and_sdp_match_truth(name):
    truth = _truth(name)
    messages, failures = _udp_messages(name)
    assert failures == 0
    assert len(messages) == truth["summary"]["sip_messages"]

    by_call: dict[str, list[SipMessage]] = {}
    for _, msg in messages.values():
        by_call.setdefault(msg.call_id, []).append(msg)
    for call in truth["calls"]:
        msgs = by_call[call["call_id"]]
        first = next((m for m in msgs if m.is_request and m.method == "INVITE"), msgs[0])
        assert first.from_addr.uri.user == call["from"]["user"]
        # tshark cuts a bracket-less IPv6 host at its first colon; we keep the address.
        assert first.from_addr.uri.host.split(":")[0] == call["from"]["host"]
        assert first.from_addr.display == call["from"]["display"]
        assert first.from_tag == call["from"]["tag"]
        assert first.to_addr.uri.user == call["to"]["user"]
        assert first.to_addr.display == call["to"]["display"]
        if call["invite_request_captured"]:
            assert f"INVITE {first.request_uri} SIP/2.0" == call["request_line"]

        for offer in call["sdp"]:
            src, msg = messages[offer["frame"]]
            assert src == offer["src"]
            assert msg.call_id == call["call_id"]
            got = _sdp_view(msg)
            want = [
                {k: media[k] for k in ("media", "connection", "port", "proto", "payloads", "direction")}
                for media in offer["media"]
            ]
            for w in want:
                # The truth spells the default "sendrecv(default)" and keeps a written "/1".
                w["direction"] = w["direction"].removesuffix("(default)")
                w["payloads"] = [p.removesuffix("/1") for p in w["payloads"] if "=" in p]
                if ":" in (w["connection"] or ""):
                    # We normalise IPv6 to the compressed form packets are reported in.
                    w["connection"] = ipaddress.IPv6Address(w["connection"]).compressed
            # tshark lists payloads without a known mapping differently; compare what both know.
            for g, w in zip(got, want, strict=True):
                w_payloads = w.pop("payloads")
                g_payloads = g.pop("payloads")
                assert g == w
                assert [p for p in w_payloads if p in g_payloads] == w_payloads


def test_dtmf_info_digits_match_truth():
    name = "dtmfsipinfo.pcap"
    truth = _truth(name)
    messages, _ = _udp_messages(name)
    digits = []
    for frame in sorted(messages):
        _, msg = messages[frame]
        if msg.is_request and msg.method == "INFO":
            parsed = parse_dtmf_info(msg.header("content-type") or "", msg.body)
            if parsed is not None:
                digits.append(parsed)
    want = [(d["digit"], d["duration_ms"]) for d in truth["dtmf"]["sip_info"]]
    assert digits == want
    assert "".join(d for d, _ in digits) == "1342"


def _tcp_streams(name: str) -> dict[tuple, list[bytes]]:
    """Per-direction TCP payloads in sequence order, duplicates dropped (captures are clean)."""
    scapy_all = pytest.importorskip("scapy.all")
    flows: dict[tuple, dict[int, bytes]] = {}
    for pkt in scapy_all.rdpcap(str(PUBLIC / name)):
        tcp = pkt.getlayer(scapy_all.TCP)
        if tcp is None:
            continue
        payload = bytes(tcp.payload)
        if not payload:
            continue
        ip = pkt.getlayer(scapy_all.IP) or pkt.getlayer(scapy_all.IPv6)
        flows.setdefault((ip.src, tcp.sport, ip.dst, tcp.dport), {}).setdefault(tcp.seq, payload)
    return {key: [segs[s] for s in sorted(segs)] for key, segs in flows.items()}


@pytest.mark.parametrize("name", TCP_FILES)
def test_tcp_capture_framing_matches_truth(name):
    truth = _truth(name)
    scapy_all = pytest.importorskip("scapy.all")
    total = 0
    kinds = set()
    for segments in _tcp_streams(name).values():
        framer = SipStreamFramer()
        for segment in segments:
            for raw in framer.feed(segment):
                msg = parse_message(raw, stream=True)
                total += 1
                body = msg.sdp_body()
                if body:
                    parse_sdp(body)
        kinds.add(framer.kind)
        assert framer.skipped_bytes == 0
        assert framer.buffered_bytes == 0
    # Plus any SIP that travelled over UDP in the same file (the WebSocket B2BUA leg).
    for pkt in scapy_all.rdpcap(str(PUBLIC / name)):
        udp = pkt.getlayer(scapy_all.UDP)
        if udp is not None and looks_like_sip(bytes(udp.payload)):
            parse_message(bytes(udp.payload))
            total += 1
    assert total == truth["summary"]["sip_messages"]
    expected_kind = "websocket" if "websocket" in name else "sip"
    assert kinds == {expected_kind}

"""FrameDecoder against real public captures (skipped when they are absent)."""

import json
from collections import Counter
from pathlib import Path

import pytest

from agent.capture.pcapfile import read_capture
from agent.net.decode import FrameDecoder

PUBLIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "public"


def _decode(name):
    p = PUBLIC / name
    if not p.exists():
        pytest.skip(f"public capture {name} not available")
    c: Counter = Counter()
    dec = FrameDecoder(c)
    return [d for ts, lt, f in read_capture(p, c) if (d := dec.decode(ts, lt, f)) is not None], c


def test_ipv6frag_reassembles_invite_with_sdp():
    ds, c = _decode("ipv6frag.pcap")
    invites = [d for d in ds if d.payload.startswith(b"INVITE ")]
    assert len(invites) == 2 and c["net.frag.reassembled"] == 2
    inv = invites[0]
    assert inv.transport == "udp" and inv.src_ip == "fd17:625c:f037:2:a00:27ff:feb9:1521"
    assert len(inv.payload) == 1691 and len(inv.payload) > 1500
    head, _, body = inv.payload.partition(b"\r\n\r\n")
    clen = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
               .split(b":")[1])
    assert len(body) == clen and body.startswith(b"v=0")
    assert inv.src_mac == bytes.fromhex("0050568b531c") and inv.dst_mac == b""


def test_fragmented_tcp_sip_invite_in_order():
    ds, _ = _decode("fragmented_tcp_sip.pcap")
    to_server = b"".join(d.payload for d in ds if d.dst_port == 5060)
    assert to_server.startswith(b"INVITE sip:service@10.108.158.224:5060 SIP/2.0")
    invite_len = sum(len(d.payload) for d in ds[:3])
    assert invite_len == 1448 + 1448 + 2259
    head, _, rest = to_server.partition(b"\r\n\r\n")
    clen = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
               .split(b":")[1])
    assert rest[clen:].startswith(b"ACK sip:")
    assert all(d.transport == "tcp" for d in ds)


def test_erspan_inner_sip_with_inner_macs():
    ds, c = _decode("erspan_sip_ipv4_udp.pcapng")
    assert len(ds) == 140 and c["net.tunnel.gre"] == 140
    d = ds[0]
    assert (d.src_ip, d.dst_ip) == ("180.173.83.248", "101.231.48.19")
    assert d.src_mac == bytes.fromhex("487ada95878d") and d.dst_mac == bytes.fromhex("005056948b61")
    assert d.payload.startswith(b"SUBSCRIBE sip:")


def test_ipip_tcp_sip():
    ds, c = _decode("ipip.pcap")
    assert [d.payload.split(b" ")[0] for d in ds] == [b"INVITE", b"SIP/2.0", b"SIP/2.0", b"BYE"]
    assert c["net.tunnel.ipip"] == 2


def test_ndpi_rtp_vlan_1508():
    ds, _ = _decode("ndpi-rtp.pcapng")
    tagged = [d for d in ds if d.vlan_ids]
    assert len(tagged) == 30 and {d.vlan_ids for d in tagged} == {(1508,)}


def test_pppoe_sip_info_capture():
    ds, _ = _decode("dtmfsipinfo.pcap")
    assert len(ds) == 32 and ds[0].payload.startswith(b"INVITE sip:echo@")


def test_sctp_is_counted():
    ds, c = _decode("sip_sctp.pcap")
    assert ds == [] and c["net.sctp"] == 5


def test_sip_call_rtp_g711_all_udp_frames_decoded():
    ds, c = _decode("sip_call_rtp_g711.pcap")
    truth = json.loads((PUBLIC / "truth" / "sip_call_rtp_g711.pcap.json").read_text())
    streams = truth["rtp_streams"]
    rtp_total = sum(s["packets"] for s in streams)
    udp = [d for d in ds if d.transport == "udp"]
    assert len(udp) >= rtp_total
    assert c["net.duplicate"] == 0

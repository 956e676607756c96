"""Synthetic capture writer for benchmarks: many concurrent G.711 calls, written fast.

Scapy is far too slow for a million packets, so frames are packed with struct here
(the test captures in pcaps/ are built with scapy). Each call: INVITE (with SDP),
180, 200 (with SDP), ACK, then 20 ms PCMU packets both ways, then BYE / 200.
Call starts are staggered so ``concurrent`` calls overlap for most of the file.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

ETH_CALLER = bytes.fromhex("020000000001")
ETH_PBX = bytes.fromhex("020000000002")
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
T0_S = 1_768_471_200          # 2026-01-15 10:00:00 UTC


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def udp_frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes,
              sport: int, dport: int, payload: bytes, ip_id: int = 0) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ip_id & 0xFFFF, 0x4000, 64, 17, 0,
                     src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def _sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n")


def _sip(start_line: str, callid: str, from_tag: str, to_tag: str, cseq: str,
         caller: str, callee: str, body: str = "") -> bytes:
    to = f"<sip:{callee}@pbx.example>" + (f";tag={to_tag}" if to_tag else "")
    headers = (f"{start_line}\r\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bK{callid[:8]}\r\n"
               f"From: \"Caller {caller}\" <sip:{caller}@pbx.example>;tag={from_tag}\r\n"
               f"To: {to}\r\nCall-ID: {callid}\r\nCSeq: {cseq}\r\n"
               f"Contact: <sip:{caller}@10.1.0.1>\r\n")
    if body:
        headers += "Content-Type: application/sdp\r\n"
    headers += f"Content-Length: {len(body)}\r\n\r\n"
    return (headers + body).encode()


def write_calls(path: Path, *, calls: int, concurrent: int, duration_s: float,
                ptime_ms: int = 20, port_groups: int = 10000, loss: float = 0.0,
                reorder: float = 0.0, seed: int = 16) -> int:
    """Write the capture; returns the number of packets written. Call ``n`` uses RTP ports
    20000 / 30000 + 2 * (n % port_groups): a small ``port_groups`` gives many phones the same
    port on different addresses, as real sites do. ``loss``: the fraction of RTP packets
    dropped; ``reorder``: the fraction that arrive one packet late (after their successor),
    both drawn from a generator seeded with ``seed``, so a capture is reproducible."""
    packets_per_call = int(duration_s * 1000 / ptime_ms)
    stagger_ns = int(duration_s * 1e9 / concurrent) if concurrent else 0
    tone = bytes((0x80 + int(40 * math.sin(2 * math.pi * 440 * i / 8000))) & 0xFF for i in range(160))
    written = 0
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        # Calls are generated in start order; frames of overlapping calls are merged by time
        # with a small heap of per-call generators.
        import heapq
        import random

        rng = random.Random(seed)

        def call_frames(n: int):
            start_ns = T0_S * 10**9 + n * stagger_ns
            a_ip = bytes([10, 1, (n >> 8) & 0xFF, n & 0xFF])
            b_ip = bytes([10, 2, (n >> 8) & 0xFF, n & 0xFF])
            a_txt, b_txt = ".".join(map(str, a_ip)), ".".join(map(str, b_ip))
            a_port, b_port = 20000 + 2 * (n % port_groups), 30000 + 2 * (n % port_groups)
            caller, callee = f"1{n:06d}", f"2{n:06d}"
            callid, ftag, ttag = f"bench-{n}@10.1.0.1", f"f{n}", f"t{n}"
            sig = [
                (0, a_ip, b_ip, _sip(f"INVITE sip:{callee}@pbx.example SIP/2.0", callid, ftag, "", "1 INVITE",
                                     caller, callee, _sdp(a_txt, a_port))),
                (5_000_000, b_ip, a_ip, _sip("SIP/2.0 180 Ringing", callid, ftag, ttag, "1 INVITE", caller, callee)),
                (20_000_000, b_ip, a_ip, _sip("SIP/2.0 200 OK", callid, ftag, ttag, "1 INVITE", caller, callee,
                                              _sdp(b_txt, b_port))),
                (25_000_000, a_ip, b_ip, _sip(f"ACK sip:{callee}@pbx.example SIP/2.0", callid, ftag, ttag, "1 ACK",
                                              caller, callee)),
            ]
            for off, src, dst, payload in sig:
                yield start_ns + off, udp_frame(ETH_CALLER if src == a_ip else ETH_PBX,
                                                ETH_PBX if src == a_ip else ETH_CALLER, src, dst, 5060, 5060, payload)
            media_ns = start_ns + 30_000_000
            ssrc_a, ssrc_b = 0x1000 + n, 0x2000 + n
            ptime_ns = ptime_ms * 1_000_000
            media = []
            for i in range(packets_per_call):
                t = media_ns + i * ptime_ns
                hdr_a = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, ssrc_a)
                hdr_b = struct.pack("!BBHII", 0x80, 0, (i + 7) & 0xFFFF, (i * 160 + 999) & 0xFFFFFFFF, ssrc_b)
                for at, frame in ((t, udp_frame(ETH_CALLER, ETH_PBX, a_ip, b_ip, a_port, b_port, hdr_a + tone, i)),
                                  (t + 300_000, udp_frame(ETH_PBX, ETH_CALLER, b_ip, a_ip, b_port, a_port,
                                                          hdr_b + tone, i))):
                    if loss or reorder:
                        draw = rng.random()
                        if draw < loss:
                            continue
                        if draw < loss + reorder:
                            at += ptime_ns + 1_000_000       # arrives just after its successor
                    media.append((at, frame))
            media.sort(key=lambda item: item[0])
            yield from media
            end = media_ns + packets_per_call * ptime_ms * 1_000_000
            yield end, udp_frame(ETH_CALLER, ETH_PBX, a_ip, b_ip, 5060, 5060,
                                 _sip(f"BYE sip:{callee}@pbx.example SIP/2.0", callid, ftag, ttag, "2 BYE", caller, callee))
            yield end + 10_000_000, udp_frame(ETH_PBX, ETH_CALLER, b_ip, a_ip, 5060, 5060,
                                              _sip("SIP/2.0 200 OK", callid, ftag, ttag, "2 BYE", caller, callee))

        gens = (call_frames(n) for n in range(calls))
        for ts_ns, frame in heapq.merge(*gens, key=lambda item: item[0]):
            fh.write(struct.pack("<IIII", ts_ns // 10**9, (ts_ns % 10**9) // 1000, len(frame), len(frame)))
            fh.write(frame)
            written += 1
    return written


VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8", b"\x91\x00")


def with_tags(frame: bytes, tags: bytes) -> bytes:
    """An Ethernet frame with VLAN tags (4 bytes each, outer first) inserted after the MACs."""
    return frame[:12] + tags + frame[12:]


QINQ_TAGS = b"\x88\xa8\x00\x64\x81\x00\x00\x07"     # 802.1ad carrier tag 100, customer VLAN 7


def v6_address(ip4: bytes) -> bytes:
    """2001:db8::a.b.c.d for an IPv4 address."""
    return bytes.fromhex("20010db8") + bytes(8) + ip4


def to_ipv6(frame: bytes) -> bytes:
    """An IPv4/UDP Ethernet frame (any VLAN tags) as IPv6: addresses ``v6_address``, flow
    label from the IPv4 id, SDP moved to IPv6 (Content-Length kept right). Anything else is
    returned as it is."""
    import re

    at = 12
    while frame[at:at + 2] in VLAN_TPIDS:
        at += 4
    if frame[at:at + 2] != b"\x08\x00" or frame[at + 11] != 17:
        return frame
    ip = frame[at + 2:]
    ihl = (ip[0] & 15) * 4
    total = int.from_bytes(ip[2:4], "big")
    udp = ip[ihl:total]
    payload = udp[8:]
    if b"SIP/2.0" in payload[:200]:
        head, sep, body = payload.decode("latin-1").partition("\r\n\r\n")
        if body:
            body = re.sub(r"IN IP4 (\d+)\.(\d+)\.(\d+)\.(\d+)",
                          lambda m: "IN IP6 2001:db8::{:x}:{:x}".format(
                              int(m[1]) << 8 | int(m[2]), int(m[3]) << 8 | int(m[4])), body)
            head = re.sub(r"(?im)^(content-length|l):\s*\d+", lambda m: f"{m[1]}: {len(body)}", head)
        payload = (head + sep + body).encode("latin-1")
        udp = udp[:4] + (8 + len(payload)).to_bytes(2, "big") + udp[6:8] + payload
    flow = int.from_bytes(ip[4:6], "big")
    ip6 = (struct.pack("!IHBB", 0x60000000 | flow, len(udp), 17, 64) + v6_address(ip[12:16])
           + v6_address(ip[16:20]))
    return frame[:at] + b"\x86\xdd" + ip6 + udp


def in_vxlan(frame: bytes, ident: int, vni: int = 4242) -> bytes:
    """``frame`` as cloud traffic mirroring delivers it: inside VXLAN (UDP 4789) from the
    mirror source 192.0.2.1 to the collector 192.0.2.2."""
    vxlan = struct.pack("!II", 0x08000000, vni << 8) + frame
    return udp_frame(bytes.fromhex("0200000000aa"), bytes.fromhex("0200000000bb"), bytes([192, 0, 2, 1]),
                     bytes([192, 0, 2, 2]), 49152 + ident % 16384, 4789, vxlan, ident)


def in_hep(frame: bytes, ident: int) -> bytes:
    """An Ethernet/IPv4/UDP ``frame`` as a HEP collector receives it: its addresses, ports and
    payload in HEP3 over UDP from the sender 192.0.2.1 to the collector 192.0.2.2:9060, with no
    timestamp chunks (the collector's capture time stands in)."""
    import socket

    from agent.net.hep import PROTO_TYPE_RTP, PROTO_TYPE_SIP, encode_hep3
    ihl = (frame[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    hep = encode_hep3(src_ip=socket.inet_ntoa(frame[26:30]), dst_ip=socket.inet_ntoa(frame[30:34]),
                      src_port=sport, dst_port=dport, ts_ns=None, payload=frame[14 + ihl + 8:],
                      proto_type=PROTO_TYPE_SIP if 5060 in (sport, dport) else PROTO_TYPE_RTP)
    return udp_frame(bytes.fromhex("0200000000aa"), bytes.fromhex("0200000000bb"), bytes([192, 0, 2, 1]),
                     bytes([192, 0, 2, 2]), 9061, 9060, hep, ident)


def ip_frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, proto: int, payload: bytes,
             ip_id: int = 0) -> bytes:
    """An Ethernet / IPv4 frame carrying ``payload`` as protocol ``proto``."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ip_id & 0xFFFF, 0x4000, 64, proto, 0,
                     src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + payload


def in_erspan(frame: bytes, seq: int, erspan_type: int = 2) -> bytes:
    """``frame`` as a switch's remote SPAN sends it: GRE to the collector 192.0.2.2, ERSPAN
    type 2 (GRE sequence + 8-byte header), 3 (12-byte header) or 1 (bare GRE), or transparent
    Ethernet bridging (0, GRE with a key)."""
    if erspan_type == 2:
        gre = struct.pack("!HHI", 0x1000, 0x88BE, seq) + struct.pack("!II", 0x10000000 | 7, 0)
    elif erspan_type == 3:
        gre = struct.pack("!HHI", 0x1000, 0x22EB, seq) + struct.pack("!III", 0x20000000 | 7, seq * 100, 0)
    elif erspan_type == 1:
        gre = struct.pack("!HH", 0x0000, 0x88BE)
    else:
        gre = struct.pack("!HHI", 0x2000, 0x6558, 42)
    return ip_frame(bytes.fromhex("0200000000cc"), bytes.fromhex("0200000000bb"), bytes([192, 0, 2, 3]),
                    bytes([192, 0, 2, 2]), 47, gre + frame, seq)


def rewrite_pcap(src: Path, dst: Path, convert, limit: int | None = None, skip: int = 0,
                 keep=None) -> int:
    """Copy a little-endian microsecond pcap written by ``write_calls``, frame by frame through
    ``convert`` (after the first ``skip`` records, at most ``limit``, only record numbers for
    which ``keep`` says so); returns the number of records written."""
    n = 0
    seen = -1
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(24))
        while limit is None or n < limit:
            head = fin.read(16)
            if len(head) < 16:
                break
            sec, usec, caplen, _ = struct.unpack("<IIII", head)
            frame = fin.read(caplen)
            seen += 1
            if skip:
                skip -= 1
                continue
            if keep is not None and not keep(seen):
                continue
            frame = convert(frame)
            fout.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
            n += 1
    return n


if __name__ == "__main__":
    import sys
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/synth.pcap")
    n = write_calls(out, calls=int(sys.argv[2]) if len(sys.argv) > 2 else 200,
                    concurrent=int(sys.argv[3]) if len(sys.argv) > 3 else 200,
                    duration_s=float(sys.argv[4]) if len(sys.argv) > 4 else 60.0,
                    loss=float(sys.argv[5]) if len(sys.argv) > 5 else 0.0,
                    reorder=float(sys.argv[6]) if len(sys.argv) > 6 else 0.0)
    print(f"{n} packets -> {out}")

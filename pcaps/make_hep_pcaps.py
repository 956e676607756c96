#!/usr/bin/env python3
"""Build ``hep_basic_udp.pcap``: the call of ``basic_udp.pcap`` as a HEP collector on port
9060 sees it, and its truth file.

Every UDP datagram of ``basic_udp.pcap`` is wrapped in HEP3 (addresses, ports, capture time
to the microsecond, payload) and sent over UDP to the collector 192.0.2.60:9060 one
millisecond after it was captured: the SIP by a proxy's siptrace (agent ID 2001, from
192.0.2.50), the RTP by a media relay (agent ID 2002, from 192.0.2.51). Two senders, one
timeline. The HEP encoder here is written from the spec, independent of ``agent.net.hep``.
The truth is ``basic_udp``'s with empty MACs (HEP's generic chunks carry none): the call must
come out as its SPAN twin.

Usage: ``python3 pcaps/make_hep_pcaps.py [--out DIR]``. Deterministic.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

from scapy.all import IP, UDP, Ether, PcapReader, Raw, wrpcap

HERE = Path(__file__).resolve().parent
COLLECTOR = ("192.0.2.60", 9060)
SENDERS = {"sip": ("192.0.2.50", 2001), "rtp": ("192.0.2.51", 2002)}
DELAY_US = 1000
MAC_SENDER, MAC_COLLECTOR = "02:00:00:00:00:50", "02:00:00:00:00:60"


def chunk(ctype: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, ctype, 6 + len(value)) + value


def hep3(src: str, dst: str, sport: int, dport: int, sec: int, usec: int, proto_type: int,
         agent_id: int, payload: bytes) -> bytes:
    body = (chunk(1, b"\x02") + chunk(2, b"\x11") + chunk(3, socket.inet_aton(src))
            + chunk(4, socket.inet_aton(dst)) + chunk(7, struct.pack("!H", sport))
            + chunk(8, struct.pack("!H", dport)) + chunk(9, struct.pack("!I", sec))
            + chunk(10, struct.pack("!I", usec)) + chunk(11, bytes([proto_type]))
            + chunk(12, struct.pack("!I", agent_id)) + chunk(15, payload))
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def build(out: Path) -> None:
    frames = []
    for pkt in PcapReader(str(HERE / "basic_udp.pcap")):
        ip, udp = pkt[IP], pkt[UDP]
        payload = bytes(udp.payload)
        ts_us = round(float(pkt.time) * 1_000_000)
        kind = "sip" if 5060 in (udp.sport, udp.dport) else "rtp"
        sender_ip, agent_id = SENDERS[kind]
        message = hep3(ip.src, ip.dst, udp.sport, udp.dport, ts_us // 1_000_000, ts_us % 1_000_000,
                       1 if kind == "sip" else 4, agent_id, payload)
        outer = (Ether(src=MAC_SENDER, dst=MAC_COLLECTOR) / IP(src=sender_ip, dst=COLLECTOR[0], id=0)
                 / UDP(sport=COLLECTOR[1] + 1, dport=COLLECTOR[1]) / Raw(message))
        outer.time = (ts_us + DELAY_US) / 1_000_000
        frames.append(outer)
    wrpcap(str(out / "hep_basic_udp.pcap"), frames)
    truth = json.loads((HERE / "basic_udp.truth.json").read_text())
    truth["capture"] = "hep_basic_udp.pcap"
    truth["description"] = ("basic_udp's call as a HEP collector sees it: every datagram in HEP3 over "
                            "UDP to 192.0.2.60:9060, SIP from agent 2001, RTP from agent 2002.")
    truth["generator"] = "pcaps/make_hep_pcaps.py"
    for call in truth["calls"]:
        call["callermacaddress"] = call["destinationmacaddress"] = ""
    (out / "hep_basic_udp.truth.json").write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    build(Path(args[args.index("--out") + 1]) if "--out" in args else HERE)

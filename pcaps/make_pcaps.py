#!/usr/bin/env python3
"""Generate the project's synthetic SIP/RTP test captures and their truth files.

Owns every ``pcaps/<scenario>.pcap[ng]`` + ``pcaps/<scenario>.truth.json`` pair except the
SIPp recording (see ``record_sipp.sh``). scapy builds the L2/L3/L4 headers; the pcap and
pcapng containers are written here byte by byte so the output is identical on every run
(fixed timestamps from 2026-01-15 10:00:00 UTC, fixed MACs, IPs, tags, Call-IDs, SSRCs; no
randomness). The µ-law encoder is written here on purpose, independent of
``agent.media.g711``, so the captures are an independent oracle for the agent's decoder.

Usage: ``python3 pcaps/make_pcaps.py [--out DIR] [scenario ...]`` (default: all scenarios,
written next to this script).

Conventions shared by every scenario (also stated in each truth file):
- caller RTP carries a 440 Hz tone, callee RTP a 1000 Hz tone, PCMU (PT 0), 20 ms packets.
- ``first_rtp_offset_ms`` is measured from the capture time of the call's first INVITE
  (for ``partial_start`` from the first SIP message of the call seen, the re-INVITE).
- a party's MAC is the source MAC of its RTP frames, else of its SIP frames.
- ``audio.caller_ssrcs`` / ``callee_ssrcs`` list the SSRCs of each direction (direction 0 =
  caller→callee); packet counts are summed over them.
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scapy.all import IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6, Raw, fragment, raw
from scapy.layers.l2 import CookedLinux, CookedLinuxV2
from scapy.contrib.erspan import ERSPAN_II
from scapy.layers.l2 import GRE
from scapy.layers.vxlan import VXLAN

OUT_DIR = Path(__file__).resolve().parent
BASE_NS = int(_dt.datetime(2026, 1, 15, 10, 0, 0, tzinfo=_dt.timezone.utc).timestamp()) * 10**9
MS = 1_000_000  # ns per ms
PTIME_MS = 20
SAMPLES_PER_PACKET = 160
CALLER_TONE_HZ = 440
CALLEE_TONE_HZ = 1000

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276


# ----------------------------------------------------------------------------- µ-law
def linear_to_ulaw(samples: np.ndarray) -> bytes:
    """Classic G.711 µ-law compressor (Sun g711.c ``linear2ulaw``), vectorised."""
    pcm = samples.astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.zeros_like(mag)
    for e in range(7, 0, -1):  # highest set bit among bits 7..14 gives the segment
        exponent = np.where((exponent == 0) & (mag >= (1 << (e + 7))), e, exponent)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return code.astype(np.uint8).tobytes()


def tone_payload(freq_hz: int, packet_index: int, amplitude: int = 8000) -> bytes:
    """One 20 ms PCMU payload of a continuous sine (phase continues across packets)."""
    n = np.arange(SAMPLES_PER_PACKET) + packet_index * SAMPLES_PER_PACKET
    return linear_to_ulaw(np.round(amplitude * np.sin(2 * np.pi * freq_hz * n / 8000)))


# ----------------------------------------------------------------------------- model
@dataclass(slots=True)
class Party:
    user: str  # SIP user part (the "phone")
    display: str | None  # display name as written on the wire (None: no display name)
    ip: str
    mac: str  # "aa:bb:cc:dd:ee:ff"
    sip_port: int = 5060
    rtp_port: int = 40000

    @property
    def v6(self) -> bool:
        return ":" in self.ip

    @property
    def host(self) -> str:
        return f"[{self.ip}]" if self.v6 else self.ip

    @property
    def media_endpoint(self) -> str:
        return f"{self.host}:{self.rtp_port}"

    @property
    def mac_truth(self) -> str:
        return self.mac.replace(":", "").upper()


@dataclass(slots=True)
class Pkt:
    ts_ns: int
    src_mac: str
    dst_mac: str
    l3: object  # scapy IP/IPv6 packet
    seq: int = 0  # tie-breaker: insertion order

    def key(self) -> tuple[int, int]:
        return (self.ts_ns, self.seq)


@dataclass(slots=True)
class Capture:
    name: str
    description: str
    link: str = "ether"  # ether | vlan | qinq | sll | sll2 | vxlan | erspan
    fmt: str = "pcap"  # pcap | pcapng
    pkts: list[Pkt] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    notes: str = ""
    _n: int = 0
    _ipid: dict = field(default_factory=dict)

    def add(self, ts_ns: int, src: Party, dst: Party, l4, *, src_ip: str | None = None,
            dst_ip: str | None = None, src_mac: str | None = None) -> None:
        s_ip, d_ip = src_ip or src.ip, dst_ip or dst.ip
        if ":" in s_ip:
            l3 = IPv6(src=s_ip, dst=d_ip, hlim=64) / l4
        else:
            ipid = self._ipid.get(s_ip, 0x1000) + 1
            self._ipid[s_ip] = ipid
            l3 = IP(src=s_ip, dst=d_ip, ttl=64, id=ipid, flags="DF") / l4
        self.add_l3(ts_ns, src_mac or src.mac, dst.mac, l3)

    def add_l3(self, ts_ns: int, src_mac: str, dst_mac: str, l3) -> None:
        self._n += 1
        self.pkts.append(Pkt(ts_ns, src_mac, dst_mac, l3, self._n))


def udp(src: Party, dst: Party, payload: bytes, sport: int | None = None,
        dport: int | None = None):
    return UDP(sport=sport or src.sip_port, dport=dport or dst.sip_port) / Raw(payload)


# ----------------------------------------------------------------------------- SIP text
def sip_msg(first_line: str, headers: list[tuple[str, str]], body: bytes = b"",
            *, compact: bool = False) -> bytes:
    lines = [first_line] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"{'l' if compact else 'Content-Length'}: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def name_addr(p: Party, uri: str | None = None) -> str:
    uri = uri or f"sip:{p.user}@{p.host}"
    return f"{p.display} <{uri}>" if p.display is not None else f"<{uri}>"


def sdp(p: Party, sess_id: int, *, direction: str = "sendrecv", version: int = 1,
        port: int | None = None, extra: list[str] | None = None) -> bytes:
    fam = "IP6" if p.v6 else "IP4"
    lines = [
        "v=0",
        f"o=- {sess_id} {version} IN {fam} {p.ip}",
        "s=call",
        f"c=IN {fam} {p.ip}",
        "t=0 0",
        f"m=audio {port or p.rtp_port} RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        *(extra or []),
        f"a={direction}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(slots=True)
class Dialog:
    """Header bookkeeping for one SIP dialog (Call-ID, tags, CSeq, branches)."""

    callid: str
    caller: Party
    callee: Party
    from_tag: str
    to_tag: str = ""
    transport: str = "UDP"
    callee_uri: str | None = None  # To/Request-URI if not sip:user@host
    from_hdr: str | None = None  # override of the From name-addr
    extra_invite_headers: list[tuple[str, str]] = field(default_factory=list)
    cseq: int = 1
    branch_n: int = 0
    compact: bool = False
    established: bool = False  # a tagged 1xx/2xx was sent: requests now carry the To tag

    def _branch(self, who: str) -> str:
        self.branch_n += 1
        return f"z9hG4bK-{self.callid.split('@')[0]}-{who}{self.branch_n}"

    def from_value(self) -> str:
        return f"{self.from_hdr or name_addr(self.caller)};tag={self.from_tag}"

    def to_value(self, tag: str | None = None) -> str:
        base = name_addr(self.callee, self.callee_uri)
        tag = self.to_tag if tag is None else tag
        return f"{base};tag={tag}" if tag else base

    def ruri(self) -> str:
        return self.callee_uri or f"sip:{self.callee.user}@{self.callee.host}"

    def h(self, full: str) -> str:
        short = {"Call-ID": "i", "From": "f", "To": "t", "Contact": "m", "Via": "v",
                 "Content-Type": "c"}
        return short.get(full, full) if self.compact else full

    def request(self, method: str, *, body: bytes = b"", cseq: int | None = None,
                from_callee: bool = False, to_tag: str | None = None,
                extra: list[tuple[str, str]] | None = None,
                via: str | None = None) -> tuple[bytes, str]:
        """Returns (message bytes, via value) of a request (``via`` reuses a branch)."""
        sender = self.callee if from_callee else self.caller
        via = via or (f"SIP/2.0/{self.transport} {sender.host}:{sender.sip_port};"
                      f"branch={self._branch('c' if not from_callee else 's')}")
        if cseq is None:
            cseq = self.cseq
        if from_callee:
            ruri = f"sip:{self.caller.user}@{self.caller.host}:{self.caller.sip_port}"
            frm = f"{name_addr(self.callee, self.callee_uri)};tag={self.to_tag}"
            to = self.from_value()
        else:
            ruri = self.ruri()
            frm = self.from_value()
            to = self.to_value(to_tag if to_tag is not None
                               else (self.to_tag if self.established else ""))
        hdrs = [
            (self.h("Via"), via),
            ("Max-Forwards", "70"),
            (self.h("From"), frm),
            (self.h("To"), to),
            (self.h("Call-ID"), self.callid),
            ("CSeq", f"{cseq} {method}"),
            (self.h("Contact"), f"<sip:{sender.user}@{sender.host}:{sender.sip_port}>"),
        ]
        if method == "INVITE" and not from_callee:
            hdrs += self.extra_invite_headers
        hdrs += extra or []
        hdrs.append(("User-Agent", "CallN-TestPhone/1.0"))
        if body:
            hdrs.append((self.h("Content-Type"), "application/sdp"))
        return sip_msg(f"{method} {ruri} SIP/2.0", hdrs, body, compact=self.compact), via

    def response(self, code: int, reason: str, via: str, method: str, cseq: int, *,
                 body: bytes = b"", to_tag: str | None = None, from_caller: bool = False,
                 sender: Party | None = None) -> bytes:
        """A response to a request whose Via was ``via``."""
        if 101 <= code < 300 and to_tag != "":
            self.established = True
        if from_caller:  # response to an in-dialog request the callee sent
            frm = f"{name_addr(self.callee, self.callee_uri)};tag={self.to_tag}"
            to = self.from_value()
            sender = sender or self.caller
        else:
            frm = self.from_value()
            to = self.to_value(to_tag)
            sender = sender or self.callee
        hdrs = [
            (self.h("Via"), via),
            (self.h("From"), frm),
            (self.h("To"), to),
            (self.h("Call-ID"), self.callid),
            ("CSeq", f"{cseq} {method}"),
        ]
        if 180 <= code < 300 and not from_caller:
            hdrs.append((self.h("Contact"), f"<sip:{sender.user}@{sender.host}:{sender.sip_port}>"))
        hdrs.append(("Server" if not from_caller else "User-Agent", "CallN-TestPhone/1.0"))
        if body:
            hdrs.append((self.h("Content-Type"), "application/sdp"))
        return sip_msg(f"SIP/2.0 {code} {reason}", hdrs, body, compact=self.compact)


# ----------------------------------------------------------------------------- RTP
@dataclass(slots=True)
class RtpStream:
    ssrc: int
    seq0: int
    ts0: int
    freq_hz: int
    sent: int = 0
    first_marker: bool = True  # False for a stream joined mid-call

    def packet(self, pt: int = 0) -> bytes:
        i = self.sent
        marker = 0x80 if i == 0 and self.first_marker else 0
        hdr = struct.pack("!BBHII", 0x80, marker | pt, (self.seq0 + i) & 0xFFFF,
                          (self.ts0 + i * SAMPLES_PER_PACKET) & 0xFFFFFFFF, self.ssrc)
        self.sent += 1
        return hdr + tone_payload(self.freq_hz, i)


def send_rtp(cap: Capture, stream: RtpStream, src: Party, dst: Party, start_ns: int,
             count: int, *, src_port: int | None = None, dst_port: int | None = None,
             src_ip: str | None = None, dst_ip: str | None = None) -> int:
    """Append ``count`` 20 ms packets; returns the time of the last one."""
    t = start_ns
    for i in range(count):
        t = start_ns + i * PTIME_MS * MS
        cap.add(t, src, dst, UDP(sport=src_port or src.rtp_port, dport=dst_port or dst.rtp_port)
                / Raw(stream.packet()), src_ip=src_ip, dst_ip=dst_ip)
    return t


# ----------------------------------------------------------------------------- truth
def dt_utc(ts_ns: int) -> str:
    return _dt.datetime.fromtimestamp(ts_ns // 10**9, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def call_truth(d: Dialog, *, start_ns: int, answered: bool, end_reason: str,
               final_status: int | None, caller_media: str, callee_media: str,
               caller_mac: str, callee_mac: str, callerphone: str | None = None,
               callername: str | None = None, destinationphone: str | None = None,
               destinationname: str | None = None, partial_start: bool = False,
               audio: dict | None = None) -> dict:
    t = {
        "callid": d.callid,
        "from_tag": d.from_tag,
        "to_tag": d.to_tag,
        "callerphone": d.caller.user if callerphone is None else callerphone,
        "callername": (d.caller.display or "").strip('"') if callername is None else callername,
        "destinationphone": d.callee.user if destinationphone is None else destinationphone,
        "destinationname": ((d.callee.display or "").strip('"') if destinationname is None
                            else destinationname),
        "startdatetimeutc": dt_utc(start_ns),
        "answered": answered,
        "end_reason": end_reason,
        "callermacaddress": caller_mac,
        "destinationmacaddress": callee_mac,
        "callermediaendpoint": caller_media,
        "destinationmediaendpoint": callee_media,
        "partial_start": partial_start,
        "transport": d.transport.lower(),
    }
    if final_status is not None or not partial_start:
        t["final_status"] = final_status
    if audio is not None:
        t["audio"] = audio
    return t


def audio_truth(caller: list[RtpStream], callee: list[RtpStream], invite_ns: int,
                caller_first_ns: int | None, callee_first_ns: int | None) -> dict:
    def off(t: int | None) -> int | None:
        return None if t is None else (t - invite_ns) // MS

    return {
        "caller_tone_hz": CALLER_TONE_HZ,
        "callee_tone_hz": CALLEE_TONE_HZ,
        "caller_rtp_packets": sum(s.sent for s in caller),
        "callee_rtp_packets": sum(s.sent for s in callee),
        "caller_ssrcs": [s.ssrc for s in caller],
        "callee_ssrcs": [s.ssrc for s in callee],
        "first_rtp_offset_ms": {"caller": off(caller_first_ns), "callee": off(callee_first_ns)},
    }


# ----------------------------------------------------------------------------- standard call
MAC_SEQ = [0]


def mac(kind: str) -> str:
    """A fresh, fixed MAC: phones get a Polycom-like OUI, PBX/proxies a Cisco-like one."""
    MAC_SEQ[0] += 1
    oui = {"phone": "00:04:f2", "pbx": "00:1a:a1"}[kind]
    n = MAC_SEQ[0]
    return f"{oui}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}:{0x10 + n % 0xE0:02x}"


def phone(user: str, display: str | None, ip: str, rtp_port: int, sip_port: int = 5060) -> Party:
    return Party(user=user, display=display, ip=ip, mac=mac("phone"), sip_port=sip_port,
                 rtp_port=rtp_port)


def ssrc_for(callid: str, side: int, n: int = 0) -> int:
    base = sum(ord(c) * (i + 1) for i, c in enumerate(callid)) & 0xFFFF
    return 0x10000000 * (side + 1) + base * 16 + n


def standard_call(cap: Capture, d: Dialog, t0_ns: int, *, n_caller: int = 150,
                  n_callee: int = 152, bye_from_callee: bool = False) -> dict:
    """INVITE/100/180/200/ACK, RTP both ways, BYE/200. Returns the call truth."""
    a, b = d.caller, d.callee
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(t0_ns, a, b, udp(a, b, inv))
    cap.add(t0_ns + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(t0_ns + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(t0_ns + 1500 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1,
                                                          body=sdp(b, 2002))))
    ack, _ = d.request("ACK")
    cap.add(t0_ns + 1510 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    first_b = t0_ns + 1520 * MS
    first_a = t0_ns + 1530 * MS
    end_b = send_rtp(cap, s_b, b, a, first_b, n_callee)
    end_a = send_rtp(cap, s_a, a, b, first_a, n_caller)
    t_bye = max(end_a, end_b) + 15 * MS
    bye_and_ok(cap, d, t_bye, from_callee=bye_from_callee)
    return call_truth(d, start_ns=t0_ns, answered=True, end_reason="bye", final_status=200,
                      caller_media=a.media_endpoint, callee_media=b.media_endpoint,
                      caller_mac=a.mac_truth, callee_mac=b.mac_truth,
                      audio=audio_truth([s_a], [s_b], t0_ns, first_a, first_b))


def bye_and_ok(cap: Capture, d: Dialog, t_ns: int, *, from_callee: bool = False,
               cseq: int | None = None) -> None:
    a, b = d.caller, d.callee
    if from_callee:
        bye, via = d.request("BYE", cseq=cseq or 501, from_callee=True)
        cap.add(t_ns, b, a, udp(b, a, bye))
        cap.add(t_ns + 4 * MS, a, b, udp(a, b, d.response(200, "OK", via, "BYE", cseq or 501,
                                                          from_caller=True)))
    else:
        d.cseq = cseq or d.cseq + 1
        bye, via = d.request("BYE")
        cap.add(t_ns, a, b, udp(a, b, bye))
        cap.add(t_ns + 4 * MS, b, a, udp(b, a, d.response(200, "OK", via, "BYE", d.cseq)))


T0 = BASE_NS + 250 * MS  # first INVITE of every capture


def std_parties(v6: bool = False) -> tuple[Party, Party]:
    if v6:
        return (phone("1001", '"Alice Caller"', "2001:db8::10", 40000),
                phone("1002", '"Bob Callee"', "2001:db8::20", 50000))
    return (phone("1001", '"Alice Caller"', "10.0.0.10", 40000),
            phone("1002", '"Bob Callee"', "10.0.0.20", 50000))


# ----------------------------------------------------------------------------- scenarios
def sc_basic(name: str, link: str, description: str, v6: bool = False, fmt: str = "pcap",
             bye_from_callee: bool = False) -> Capture:
    cap = Capture(name, description, link=link, fmt=fmt)
    a, b = std_parties(v6)
    d = Dialog(f"{name}-0001@callntest.example", a, b, from_tag=f"ft-{name}", to_tag=f"tt-{name}")
    cap.calls.append(standard_call(cap, d, T0, bye_from_callee=bye_from_callee))
    return cap


def sc_fragmented_invite() -> Capture:
    cap = Capture("fragmented_invite", "INVITE with a large SDP (~3.3 KB) sent in 3 IPv4 "
                  "fragments delivered out of order (2nd, 3rd, 1st); rest of the call as basic_udp.")
    a, b = std_parties()
    d = Dialog("fragmented_invite-0001@callntest.example", a, b, from_tag="ft-frag",
               to_tag="tt-frag")
    # Build the call normally, then replace the INVITE packet by its fragments.
    truth = standard_call(cap, d, T0)
    inv = cap.pkts[0]
    assert b"INVITE " in raw(inv.l3)
    big = sdp(a, 1001, extra=[f"a=x-padding-{i:03d}:{'p' * 48}" for i in range(50)])
    # Keep the branch of the original INVITE so the 100/180/200 still match it.
    orig_via = raw(inv.l3).split(b"Via: ")[1].split(b"\r\n")[0].decode()
    msg, _ = Dialog(d.callid, a, b, from_tag=d.from_tag).request("INVITE", body=big, via=orig_via)
    l3 = IP(src=a.ip, dst=b.ip, ttl=64, id=0x4242) / UDP(sport=5060, dport=5060) / Raw(msg)
    frags = fragment(l3, fragsize=1480)
    assert len(frags) == 3, len(frags)
    cap.pkts.pop(0)
    for i, f in enumerate([frags[1], frags[2], frags[0]]):
        cap.add_l3(inv.ts_ns + i * 100_000, a.mac, b.mac, f)
    cap.notes = ("startdatetimeutc is the time of the first fragment seen (10:00:00.250); "
                 "first_rtp_offset_ms are relative to that.")
    cap.calls.append(truth)
    return cap


def sc_tcp_split() -> Capture:
    cap = Capture("tcp_split", "SIP over TCP (caller 10.0.0.10:49170 -> callee 10.0.0.20:5060) "
                  "with a 3-way handshake; the INVITE is split across 3 segments, the 2nd "
                  "segment is retransmitted after the 3rd (spurious retransmission), 180 Ringing "
                  "and 200 OK are coalesced in one segment; RTP over UDP.")
    a, b = std_parties()
    a.sip_port = 49170
    d = Dialog("tcp_split-0001@callntest.example", a, b, from_tag="ft-tcp", to_tag="tt-tcp",
               transport="TCP")
    seq_a, seq_b = 100000, 900000  # ISNs
    t = T0 - 20 * MS

    def seg(ts, src, dst, flags, data=b"", sseq=None):
        nonlocal seq_a, seq_b
        if src is a:
            s, ack = (seq_a if sseq is None else sseq), seq_b
        else:
            s, ack = (seq_b if sseq is None else sseq), seq_a
        l4 = TCP(sport=src.sip_port, dport=dst.sip_port, seq=s, ack=ack, flags=flags,
                 window=65535) / (Raw(data) if data else b"")
        if flags == "S":
            l4 = TCP(sport=src.sip_port, dport=dst.sip_port, seq=s, flags="S", window=65535)
        cap.add(ts, src, dst, l4)
        if sseq is None:
            adv = len(data) + (1 if "S" in flags or "F" in flags else 0)
            if src is a:
                seq_a += adv
            else:
                seq_b += adv

    seg(t, a, b, "S")
    seg(t + 1 * MS, b, a, "SA")
    seg(t + 2 * MS, a, b, "A")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cut1, cut2 = len(inv) // 3, 2 * len(inv) // 3
    parts = [inv[:cut1], inv[cut1:cut2], inv[cut2:]]
    seq2 = seq_a + cut1
    seg(T0, a, b, "PA", parts[0])
    seg(T0 + 1 * MS, a, b, "PA", parts[1])
    seg(T0 + 2 * MS, a, b, "PA", parts[2])
    seg(T0 + 3 * MS, b, a, "A")
    seg(T0 + 4 * MS, a, b, "PA", parts[1], sseq=seq2)  # retransmission of segment 2
    seg(T0 + 6 * MS, b, a, "PA", d.response(100, "Trying", via, "INVITE", 1, to_tag=""))
    seg(T0 + 7 * MS, a, b, "A")
    r180 = d.response(180, "Ringing", via, "INVITE", 1)
    r200 = d.response(200, "OK", via, "INVITE", 1, body=sdp(b, 2002))
    seg(T0 + 1500 * MS, b, a, "PA", r180 + r200)  # two responses in one segment
    ack, _ = d.request("ACK")
    seg(T0 + 1510 * MS, a, b, "PA", ack)
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    first_b, first_a = T0 + 1520 * MS, T0 + 1530 * MS
    end_b = send_rtp(cap, s_b, b, a, first_b, 152, src_port=50000, dst_port=40000)
    end_a = send_rtp(cap, s_a, a, b, first_a, 150, src_port=40000, dst_port=50000)
    tb = max(end_a, end_b) + 15 * MS
    d.cseq += 1
    bye, via = d.request("BYE")
    seg(tb, a, b, "PA", bye)
    seg(tb + 4 * MS, b, a, "PA", d.response(200, "OK", via, "BYE", d.cseq))
    seg(tb + 5 * MS, a, b, "A")
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=200, caller_media="10.0.0.10:40000",
                                callee_media="10.0.0.20:50000", caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a], [s_b], T0, first_a, first_b)))
    cap.notes = ("startdatetimeutc and first_rtp_offset_ms are relative to the FIRST INVITE "
                 "segment (10:00:00.250); the INVITE completes 2 ms later, so an agent that "
                 "stamps the message with its last segment gets offsets 2 ms smaller.")
    return cap


def sc_compact() -> Capture:
    cap = Capture("compact_headers", "Basic call where every message uses compact header "
                  "forms (i: f: t: m: l: c: v:).")
    a, b = std_parties()
    d = Dialog("compact_headers-0001@callntest.example", a, b, from_tag="ft-compact",
               to_tag="tt-compact", compact=True)
    cap.calls.append(standard_call(cap, d, T0))
    return cap


def sc_auth() -> Capture:
    cap = Capture("auth_challenge", "INVITE -> 407 -> ACK -> INVITE with Proxy-Authorization "
                  "(same Call-ID and From tag, CSeq 2) -> 100/180/200 -> ACK, RTP, BYE: one call.")
    a, b = std_parties()
    d = Dialog("auth_challenge-0001@callntest.example", a, b, from_tag="ft-auth",
               to_tag="tt-auth")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, b, udp(a, b, inv))
    chal = d.response(407, "Proxy Authentication Required", via, "INVITE", 1, to_tag="tt-407")
    chal = chal.replace(b"Server:", b'Proxy-Authenticate: Digest realm="callntest.example", '
                        b'nonce="4a1b2c3d4e5f", algorithm=MD5, qop="auth"\r\nServer:')
    cap.add(T0 + 3 * MS, b, a, udp(b, a, chal))
    ack, _ = d.request("ACK", to_tag="tt-407", cseq=1, via=via)  # non-2xx ACK: same branch
    cap.add(T0 + 5 * MS, a, b, udp(a, b, ack))
    d.cseq = 2
    auth = ('Digest username="1001", realm="callntest.example", nonce="4a1b2c3d4e5f", '
            'uri="sip:1002@10.0.0.20", response="0123456789abcdef0123456789abcdef", '
            'algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')
    inv2, via2 = d.request("INVITE", body=sdp(a, 1001, version=2),
                           extra=[("Proxy-Authorization", auth)])
    t1 = T0 + 40 * MS
    cap.add(t1, a, b, udp(a, b, inv2))
    cap.add(t1 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via2, "INVITE", 2, to_tag="")))
    cap.add(t1 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via2, "INVITE", 2)))
    cap.add(t1 + 1500 * MS, b, a, udp(b, a, d.response(200, "OK", via2, "INVITE", 2,
                                                       body=sdp(b, 2002))))
    ack2, _ = d.request("ACK")
    cap.add(t1 + 1510 * MS, a, b, udp(a, b, ack2))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb, fa = t1 + 1520 * MS, t1 + 1530 * MS
    end = max(send_rtp(cap, s_b, b, a, fb, 152), send_rtp(cap, s_a, a, b, fa, 150))
    bye_and_ok(cap, d, end + 15 * MS, cseq=3)
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=200, caller_media=a.media_endpoint,
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a], [s_b], T0, fa, fb)))
    cap.notes = ("The 407 carries To-tag tt-407 (a transaction-level tag, not the dialog's); the "
                 "established dialog's to_tag is tt-auth. start time and RTP offsets are from "
                 "the FIRST (challenged) INVITE. final_status is the decisive 200, not the 407.")
    return cap


def sc_reinvite_hold() -> Capture:
    cap = Capture("reinvite_hold", "Answered call; caller re-INVITEs with a=sendonly (hold: "
                  "callee answers recvonly and stops sending), then re-INVITEs with sendrecv on "
                  "a NEW RTP port 40002 (new SSRC); callee resumes; BYE.")
    a, b = std_parties()
    d = Dialog("reinvite_hold-0001@callntest.example", a, b, from_tag="ft-hold", to_tag="tt-hold")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(T0 + 1000 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1,
                                                       body=sdp(b, 2002))))
    ack, _ = d.request("ACK")
    cap.add(T0 + 1010 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb, fa = T0 + 1020 * MS, T0 + 1030 * MS
    # phase 1: 1 s both ways
    send_rtp(cap, s_b, b, a, fb, 50)
    send_rtp(cap, s_a, a, b, fa, 50)
    # hold: re-INVITE sendonly at +2040 ms
    th = T0 + 2040 * MS
    d.cseq = 2
    ri, rvia = d.request("INVITE", body=sdp(a, 1001, version=2, direction="sendonly"))
    cap.add(th, a, b, udp(a, b, ri))
    cap.add(th + 20 * MS, b, a, udp(b, a, d.response(200, "OK", rvia, "INVITE", 2,
                                                     body=sdp(b, 2002, version=2,
                                                              direction="recvonly"))))
    ack, _ = d.request("ACK")
    cap.add(th + 30 * MS, a, b, udp(a, b, ack))
    # caller keeps sending (music on hold) from the old port for 0.5 s more; callee is silent
    send_rtp(cap, s_a, a, b, fa + 50 * PTIME_MS * MS, 25)
    # resume on a new port
    tr = T0 + 3000 * MS
    d.cseq = 3
    a_new = Party(a.user, a.display, a.ip, a.mac, a.sip_port, 40002)
    ri, rvia = d.request("INVITE", body=sdp(a_new, 1001, version=3, direction="sendrecv"))
    cap.add(tr, a, b, udp(a, b, ri))
    cap.add(tr + 20 * MS, b, a, udp(b, a, d.response(200, "OK", rvia, "INVITE", 3,
                                                     body=sdp(b, 2002, version=3))))
    ack, _ = d.request("ACK")
    cap.add(tr + 30 * MS, a, b, udp(a, b, ack))
    s_a2 = RtpStream(ssrc_for(d.callid, 0, 1), 30000, 640000, CALLER_TONE_HZ)
    e1 = send_rtp(cap, s_b, b, a, tr + 40 * MS, 60, dst_port=40002)
    e2 = send_rtp(cap, s_a2, a, b, tr + 50 * MS, 60, src_port=40002)
    bye_and_ok(cap, d, max(e1, e2) + 15 * MS, cseq=4)
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=200, caller_media="10.0.0.10:40000",
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a, s_a2], [s_b], T0, fa, fb)))
    cap.notes = ("callermediaendpoint is the FIRST endpoint where the caller's RTP was seen "
                 "(10.0.0.10:40000); after the resume the caller sends from 10.0.0.10:40002 "
                 "with SSRC caller_ssrcs[1]. Caller packets: 50 + 25 (hold) + 60 = 135 over two "
                 "SSRCs; callee: 50 + 60 = 110 on one SSRC (seq continues across the hold).")
    return cap


def sc_cancel() -> Capture:
    cap = Capture("cancel", "INVITE/100/180, caller CANCELs: CANCEL/200, 487/ACK. No media.")
    a, b = std_parties()
    d = Dialog("cancel-0001@callntest.example", a, b, from_tag="ft-cancel", to_tag="tt-cancel")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    # CANCEL: same branch, same CSeq number, no To tag
    cancel = sip_msg(f"CANCEL {d.ruri()} SIP/2.0", [
        ("Via", via), ("Max-Forwards", "70"), ("From", d.from_value()), ("To", d.to_value("")),
        ("Call-ID", d.callid), ("CSeq", "1 CANCEL"), ("User-Agent", "CallN-TestPhone/1.0")])
    tc = T0 + 4000 * MS
    cap.add(tc, a, b, udp(a, b, cancel))
    cap.add(tc + 3 * MS, b, a, udp(b, a, d.response(200, "OK", via, "CANCEL", 1, to_tag="")))
    cap.add(tc + 5 * MS, b, a, udp(b, a, d.response(487, "Request Terminated", via, "INVITE", 1)))
    ack = sip_msg(f"ACK {d.ruri()} SIP/2.0", [
        ("Via", via), ("Max-Forwards", "70"), ("From", d.from_value()), ("To", d.to_value()),
        ("Call-ID", d.callid), ("CSeq", "1 ACK")])
    cap.add(tc + 7 * MS, a, b, udp(a, b, ack))
    cap.calls.append(call_truth(d, start_ns=T0, answered=False, end_reason="cancel",
                                final_status=487, caller_media=a.media_endpoint, callee_media="",
                                caller_mac=a.mac_truth, callee_mac=b.mac_truth))
    cap.notes = ("No RTP: callermediaendpoint is the caller's SDP address; the callee sent no "
                 "SDP so destinationmediaendpoint is empty; MACs are those of the SIP frames.")
    return cap


def sc_busy() -> Capture:
    cap = Capture("busy_486", "INVITE/100/486 Busy Here/ACK. No media.")
    a, b = std_parties()
    d = Dialog("busy_486-0001@callntest.example", a, b, from_tag="ft-busy", to_tag="tt-busy")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 60 * MS, b, a, udp(b, a, d.response(486, "Busy Here", via, "INVITE", 1)))
    ack = sip_msg(f"ACK {d.ruri()} SIP/2.0", [
        ("Via", via), ("Max-Forwards", "70"), ("From", d.from_value()), ("To", d.to_value()),
        ("Call-ID", d.callid), ("CSeq", "1 ACK")])
    cap.add(T0 + 62 * MS, a, b, udp(a, b, ack))
    cap.calls.append(call_truth(d, start_ns=T0, answered=False, end_reason="rejected:486",
                                final_status=486, caller_media=a.media_endpoint, callee_media="",
                                caller_mac=a.mac_truth, callee_mac=b.mac_truth))
    cap.notes = "No RTP: caller media endpoint from its SDP; callee sent no SDP."
    return cap


def sc_forked() -> Capture:
    cap = Capture("forked_180", "Caller 10.0.0.10 INVITEs proxy 10.0.0.1 (PBX MAC); the proxy "
                  "forks: 180 with to-tag tt-fork-a, then 180 with to-tag tt-fork-b, then 200 "
                  "with tt-fork-b whose SDP points at phone B2 10.0.0.22; RTP flows caller <-> "
                  "10.0.0.22 directly; BYE via the proxy.")
    a = phone("1001", '"Alice Caller"', "10.0.0.10", 40000)
    proxy = Party("1002", '"Bob Callee"', "10.0.0.1", mac("pbx"), 5060, 0)
    b2 = phone("1002", '"Bob Callee"', "10.0.0.22", 50000)
    d = Dialog("forked_180-0001@callntest.example", a, proxy, from_tag="ft-fork",
               to_tag="tt-fork-b")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, proxy, udp(a, proxy, inv))
    cap.add(T0 + 5 * MS, proxy, a, udp(proxy, a, d.response(100, "Trying", via, "INVITE", 1,
                                                             to_tag="")))
    cap.add(T0 + 100 * MS, proxy, a, udp(proxy, a, d.response(180, "Ringing", via, "INVITE", 1,
                                                               to_tag="tt-fork-a")))
    cap.add(T0 + 120 * MS, proxy, a, udp(proxy, a, d.response(180, "Ringing", via, "INVITE", 1,
                                                               to_tag="tt-fork-b", sender=b2)))
    cap.add(T0 + 1500 * MS, proxy, a, udp(proxy, a, d.response(200, "OK", via, "INVITE", 1,
                                                                body=sdp(b2, 2002), sender=b2)))
    ack, _ = d.request("ACK")
    cap.add(T0 + 1510 * MS, a, proxy, udp(a, proxy, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb, fa = T0 + 1520 * MS, T0 + 1530 * MS
    end = max(send_rtp(cap, s_b, b2, a, fb, 152), send_rtp(cap, s_a, a, b2, fa, 150))
    bye_and_ok(cap, d, end + 15 * MS)
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=200, caller_media=a.media_endpoint,
                                callee_media=b2.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b2.mac_truth,
                                audio=audio_truth([s_a], [s_b], T0, fa, fb)))
    cap.notes = (f"Proxy MAC {proxy.mac_truth} carries all the callee's SIP; the callee's MAC "
                 "is the one of its RTP frames (phone B2). to_tag is the answering fork's tag.")
    return cap


def sc_no_bye() -> Capture:
    cap = Capture("no_bye", "Answered call, RTP for 3 s then stops, no BYE ever; 70 s after the "
                  "last RTP an unrelated OPTIONS (other hosts) advances packet time.")
    a, b = std_parties()
    d = Dialog("no_bye-0001@callntest.example", a, b, from_tag="ft-nobye", to_tag="tt-nobye")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(T0 + 1500 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1,
                                                       body=sdp(b, 2002))))
    ack, _ = d.request("ACK")
    cap.add(T0 + 1510 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb, fa = T0 + 1520 * MS, T0 + 1530 * MS
    end = max(send_rtp(cap, s_b, b, a, fb, 152), send_rtp(cap, s_a, a, b, fa, 150))
    x = Party("monitor", None, "192.0.2.50", mac("pbx"), 5060, 0)
    y = Party("pbx", None, "192.0.2.1", mac("pbx"), 5060, 0)
    opts = sip_msg("OPTIONS sip:pbx@192.0.2.1 SIP/2.0", [
        ("Via", "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bK-no_bye-options1"),
        ("Max-Forwards", "70"), ("From", "<sip:monitor@192.0.2.50>;tag=ft-options"),
        ("To", "<sip:pbx@192.0.2.1>"), ("Call-ID", "no_bye-options-0001@callntest.example"),
        ("CSeq", "1 OPTIONS")])
    cap.add(end + 70_000 * MS, x, y, udp(x, y, opts))
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="rtp_timeout",
                                final_status=200, caller_media=a.media_endpoint,
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a], [s_b], T0, fa, fb)))
    cap.notes = ("The OPTIONS is not a call. With the default 60 s RTP timeout (packet time) the "
                 "call must end rtp_timeout when the OPTIONS advances time past last RTP + 60 s.")
    return cap


def sc_pai() -> Capture:
    cap = Capture("pai_anonymous", 'Caller hides its identity: From "Anonymous" '
                  "<sip:anonymous@anonymous.invalid>, P-Asserted-Identity "
                  '"Alice" <sip:+15551230001@callntest.example>; Privacy: id.')
    a, b = std_parties()
    d = Dialog("pai_anonymous-0001@callntest.example", a, b, from_tag="ft-pai", to_tag="tt-pai",
               from_hdr='"Anonymous" <sip:anonymous@anonymous.invalid>',
               extra_invite_headers=[
                   ("P-Asserted-Identity", '"Alice" <sip:+15551230001@callntest.example>'),
                   ("Privacy", "id")])
    t = standard_call(cap, d, T0)
    t["callerphone"] = "+15551230001"
    t["callername"] = "Alice"
    cap.calls.append(t)
    cap.notes = "callerphone and callername come from the PAI because From is anonymous."
    return cap


def sc_display() -> Capture:
    cap = Capture("display_names", 'Quoted display name with escapes and UTF-8 '
                  '(From "Zo\\u00eb \\"Z\\" Smith"), unquoted display name in To (Bob Jones).')
    a = phone("1001", '"Zoë \\"Z\\" Smith"', "10.0.0.10", 40000)
    b = phone("1002", "Bob Jones", "10.0.0.20", 50000)
    d = Dialog("display_names-0001@callntest.example", a, b, from_tag="ft-disp", to_tag="tt-disp")
    t = standard_call(cap, d, T0)
    t["callername"] = 'Zoë "Z" Smith'
    t["destinationname"] = "Bob Jones"
    cap.calls.append(t)
    return cap


def sc_delayed_offer() -> Capture:
    cap = Capture("delayed_offer", "INVITE without SDP; the callee's 200 OK carries the offer, "
                  "the caller's ACK the answer.")
    a, b = std_parties()
    d = Dialog("delayed_offer-0001@callntest.example", a, b, from_tag="ft-dly", to_tag="tt-dly")
    inv, via = d.request("INVITE")
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(T0 + 1500 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1,
                                                       body=sdp(b, 2002))))
    ack, _ = d.request("ACK", body=sdp(a, 1001))
    cap.add(T0 + 1510 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb, fa = T0 + 1520 * MS, T0 + 1530 * MS
    end = max(send_rtp(cap, s_b, b, a, fb, 152), send_rtp(cap, s_a, a, b, fa, 150))
    bye_and_ok(cap, d, end + 15 * MS)
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=200, caller_media=a.media_endpoint,
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a], [s_b], T0, fa, fb)))
    return cap


def sc_early_media() -> Capture:
    cap = Capture("early_media_183", "INVITE/100/183 Session Progress with SDP; callee sends "
                  "early RTP (1000 Hz) for 1 s before the 200 OK (same SDP), then both ways.")
    a, b = std_parties()
    d = Dialog("early_media_183-0001@callntest.example", a, b, from_tag="ft-early",
               to_tag="tt-early")
    inv, via = d.request("INVITE", body=sdp(a, 1001))
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 100 * MS, b, a, udp(b, a, d.response(183, "Session Progress", via, "INVITE", 1,
                                                      body=sdp(b, 2002))))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb = T0 + 120 * MS
    send_rtp(cap, s_b, b, a, fb, 50)  # early media 120..1100 ms
    cap.add(T0 + 1110 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1,
                                                       body=sdp(b, 2002))))
    ack, _ = d.request("ACK")
    cap.add(T0 + 1115 * MS, a, b, udp(a, b, ack))
    fa = T0 + 1130 * MS
    e1 = send_rtp(cap, s_b, b, a, T0 + 1120 * MS, 100)
    e2 = send_rtp(cap, s_a, a, b, fa, 100)
    bye_and_ok(cap, d, max(e1, e2) + 15 * MS)
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=200, caller_media=a.media_endpoint,
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a], [s_b], T0, fa, fb)))
    cap.notes = ("callee_rtp_packets includes the 50 early-media packets (one SSRC, seq "
                 "continuous); the caller sends only after the 200.")
    return cap


def sc_port_reuse() -> Capture:
    cap = Capture("port_reuse", "Two back-to-back calls between the same phones on the SAME RTP "
                  "ports. Call 1 is answered, RTP 2 s, and never gets a BYE; 1 s after its RTP "
                  "stops call 2 starts (new Call-ID, new SSRCs, same ports) and ends with BYE.")
    a, b = std_parties()
    d1 = Dialog("port_reuse-0001@callntest.example", a, b, from_tag="ft-reuse1",
                to_tag="tt-reuse1")
    t1 = T0
    inv, via = d1.request("INVITE", body=sdp(a, 1001))
    cap.add(t1, a, b, udp(a, b, inv))
    cap.add(t1 + 5 * MS, b, a, udp(b, a, d1.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(t1 + 100 * MS, b, a, udp(b, a, d1.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(t1 + 1000 * MS, b, a, udp(b, a, d1.response(200, "OK", via, "INVITE", 1,
                                                        body=sdp(b, 2002))))
    ack, _ = d1.request("ACK")
    cap.add(t1 + 1010 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d1.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d1.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    fb, fa = t1 + 1020 * MS, t1 + 1030 * MS
    end = max(send_rtp(cap, s_b, b, a, fb, 100), send_rtp(cap, s_a, a, b, fa, 98))
    cap.calls.append(call_truth(d1, start_ns=t1, answered=True, end_reason="media_taken_over",
                                final_status=200, caller_media=a.media_endpoint,
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth,
                                audio=audio_truth([s_a], [s_b], t1, fa, fb)))
    d2 = Dialog("port_reuse-0002@callntest.example", a, b, from_tag="ft-reuse2",
                to_tag="tt-reuse2")
    t2 = (end + 1000 * MS) // 10**9 * 10**9 + 250 * MS  # next whole second + 250 ms
    # standard_call reuses the same ports (the Party objects carry them)
    cap.calls.append(standard_call(cap, d2, t2, n_caller=100, n_callee=102))
    cap.notes = ("Call 1 must end media_taken_over (the second call's SDP claims its ports) and "
                 "keep only its own packets; call 2 gets only packets after its own SDP.")
    return cap


def sc_partial_start() -> Capture:
    cap = Capture("partial_start", "Capture begins mid-call: no initial INVITE. The first packet "
                  "is a session-refresh re-INVITE from the caller (To tag present, CSeq 20, SDP), "
                  "200/ACK, RTP both ways for 2 s, then BYE/200 from the caller.")
    a, b = std_parties()
    d = Dialog("partial_start-0001@callntest.example", a, b, from_tag="ft-partial",
               to_tag="tt-partial")
    d.cseq = 20
    d.established = True  # the dialog was set up before the capture began
    ri, via = d.request("INVITE", body=sdp(a, 1001, version=5))
    cap.add(T0, a, b, udp(a, b, ri))
    cap.add(T0 + 20 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 20,
                                                     body=sdp(b, 2002, version=7))))
    ack, _ = d.request("ACK")
    cap.add(T0 + 25 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 21000, 800000, CALLER_TONE_HZ, first_marker=False)
    s_b = RtpStream(ssrc_for(d.callid, 1), 45000, 900000, CALLEE_TONE_HZ, first_marker=False)
    fb, fa = T0 + 30 * MS, T0 + 40 * MS
    end = max(send_rtp(cap, s_b, b, a, fb, 101), send_rtp(cap, s_a, a, b, fa, 99))
    bye_and_ok(cap, d, end + 15 * MS, cseq=21)
    cap.calls.append(call_truth(d, start_ns=T0, answered=True, end_reason="bye",
                                final_status=None, caller_media=a.media_endpoint,
                                callee_media=b.media_endpoint, caller_mac=a.mac_truth,
                                callee_mac=b.mac_truth, partial_start=True,
                                audio=audio_truth([s_a], [s_b], T0, fa, fb)))
    cap.notes = ("startdatetimeutc and RTP offsets are relative to the first SIP message seen "
                 "(the re-INVITE). final_status is not asserted (no initial INVITE seen). The "
                 "first RTP packets carry marker=0 (mid-stream).")
    return cap


def sc_multi_call() -> Capture:
    cap = Capture("multi_call", "Three overlapping calls between different phones (one pair "
                  "in 192.0.2.0/24), INVITEs at +0.25 s, +1.25 s, +2.25 s; 2 s of RTP each.")
    pairs = [
        (phone("2001", '"Carol"', "10.0.1.11", 41000), phone("3001", '"Dave"', "10.0.2.21", 51000)),
        (phone("2002", '"Erin"', "10.0.1.12", 41002), phone("3002", '"Frank"', "10.0.2.22", 51002)),
        (phone("2003", '"Grace"', "192.0.2.13", 41004),
         phone("3003", '"Heidi"', "192.0.2.23", 51004)),
    ]
    for i, (a, b) in enumerate(pairs):
        d = Dialog(f"multi_call-000{i + 1}@callntest.example", a, b, from_tag=f"ft-multi{i + 1}",
                   to_tag=f"tt-multi{i + 1}")
        cap.calls.append(standard_call(cap, d, T0 + i * 1000 * MS, n_caller=100 + i,
                                       n_callee=102 + i, bye_from_callee=(i == 1)))
    cap.notes = "Call 2 is hung up by the callee (BYE from 3002); caller/callee must not swap."
    return cap


def sc_tel_uri() -> Capture:
    cap = Capture("tel_uri", "Request-URI and To are tel:+1-555-123-0002;phone-context="
                  "example.com (visual separators in the number).")
    a, b = std_parties()
    b.user = "+1-555-123-0002"
    b.display = None
    d = Dialog("tel_uri-0001@callntest.example", a, b, from_tag="ft-tel", to_tag="tt-tel",
               callee_uri="tel:+1-555-123-0002;phone-context=example.com")
    t = standard_call(cap, d, T0)
    t["destinationphone"] = "+15551230002"
    t["destinationname"] = ""
    cap.calls.append(t)
    cap.notes = "destinationphone is the normalised number: visual separators (-.() ) removed."
    return cap


SCENARIOS = {
    "basic_udp": lambda: sc_basic("basic_udp", "ether", "Basic call over UDP/IPv4/Ethernet: "
                                  "INVITE/100/180/200/ACK, RTP both ways, BYE/200."),
    "vlan": lambda: sc_basic("vlan", "vlan", "Basic call on 802.1Q VLAN 100; the CALLEE sends "
                             "the BYE.", bye_from_callee=True),
    "qinq": lambda: sc_basic("qinq", "qinq", "Basic call double-tagged: 802.1ad S-tag 0x88a8 "
                             "VLAN 200 + 802.1Q C-tag VLAN 100."),
    "vxlan": lambda: sc_basic("vxlan", "vxlan", "Basic call as cloud traffic mirroring delivers "
                              "it: every frame inside VXLAN (UDP 4789, VNI 4242) from the mirror "
                              "source 192.0.2.1 to a collector 192.0.2.2; MACs are the inner frames'."),
    "erspan": lambda: sc_basic("erspan", "erspan", "Basic call as a switch's remote SPAN sends it: "
                               "every frame inside GRE + ERSPAN type II (session 7, VLAN 100) from "
                               "the switch 192.0.2.3 to a collector 192.0.2.2; MACs are the inner frames'."),
    "sll": lambda: sc_basic("sll", "sll", "Basic call in a Linux cooked (SLL, linktype 113) "
                            "capture; the SLL address field carries the sender's MAC."),
    "sll2": lambda: sc_basic("sll2", "sll2", "Basic call in a Linux cooked v2 (SLL2, linktype "
                             "276) capture, written as pcapng.", fmt="pcapng"),
    "ipv6": lambda: sc_basic("ipv6", "ether", "Basic call, SIP and RTP over IPv6 "
                             "(2001:db8::10 -> 2001:db8::20).", v6=True),
    "fragmented_invite": sc_fragmented_invite,
    "tcp_split": sc_tcp_split,
    "compact_headers": sc_compact,
    "auth_challenge": sc_auth,
    "reinvite_hold": sc_reinvite_hold,
    "cancel": sc_cancel,
    "busy_486": sc_busy,
    "forked_180": sc_forked,
    "no_bye": sc_no_bye,
    "pai_anonymous": sc_pai,
    "display_names": sc_display,
    "delayed_offer": sc_delayed_offer,
    "early_media_183": sc_early_media,
    "port_reuse": sc_port_reuse,
    "partial_start": sc_partial_start,
    "multi_call": sc_multi_call,
    "tel_uri": sc_tel_uri,
}


# ----------------------------------------------------------------------------- writers
def frame(link: str, p: Pkt) -> bytes:
    l3 = p.l3
    proto = 0x86DD if isinstance(l3, IPv6) else 0x0800
    if link == "ether":
        return raw(Ether(src=p.src_mac, dst=p.dst_mac, type=proto) / l3)
    if link == "vlan":
        return raw(Ether(src=p.src_mac, dst=p.dst_mac) / Dot1Q(vlan=100, prio=5) / l3)
    if link == "qinq":
        return raw(Ether(src=p.src_mac, dst=p.dst_mac) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / l3)
    if link == "erspan":
        inner = Ether(src=p.src_mac, dst=p.dst_mac, type=proto) / l3
        return raw(Ether(src="02:00:00:00:00:cc", dst="02:00:00:00:00:bb") / IP(src="192.0.2.3", dst="192.0.2.2")
                   / GRE(seqnum_present=1, seqence_number=1, proto=0x88BE) / ERSPAN_II(vlan=100, session_id=7)
                   / inner)
    if link == "vxlan":
        inner = Ether(src=p.src_mac, dst=p.dst_mac, type=proto) / l3
        return raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src="192.0.2.1", dst="192.0.2.2")
                   / UDP(sport=49152, dport=4789) / VXLAN(vni=4242, flags=0x08) / inner)
    macb = bytes.fromhex(p.src_mac.replace(":", "")) + b"\x00\x00"
    if link == "sll":  # pkttype 0: addressed to us (a capture host on the path)
        return raw(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=macb, proto=proto) / l3)
    if link == "sll2":
        return raw(CookedLinuxV2(proto=proto, ifindex=2, lladdrtype=1, pkttype=0, lladdrlen=6,
                                 src=macb) / l3)
    raise ValueError(link)


LINKTYPES = {"ether": LINKTYPE_ETHERNET, "vlan": LINKTYPE_ETHERNET, "qinq": LINKTYPE_ETHERNET,
             "vxlan": LINKTYPE_ETHERNET, "erspan": LINKTYPE_ETHERNET,
             "sll": LINKTYPE_LINUX_SLL, "sll2": LINKTYPE_LINUX_SLL2}


def write_pcap(path: Path, linktype: int, frames: list[tuple[int, bytes]]) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
    for ts_ns, data in frames:
        sec, usec = divmod(ts_ns // 1000, 1_000_000)
        out += struct.pack("<IIII", sec, usec, len(data), len(data)) + data
    path.write_bytes(bytes(out))


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path: Path, linktype: int, frames: list[tuple[int, bytes]]) -> None:
    # SHB without options; one IDB with if_tsresol = 9 (nanoseconds); EPBs.
    shb = _pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opt = struct.pack("<HHB", 9, 1, 9) + b"\x00" * 3 + struct.pack("<HH", 0, 0)
    idb = _pcapng_block(0x00000001, struct.pack("<HHI", linktype, 0, 65535) + opt)
    out = bytearray(shb + idb)
    for ts_ns, data in frames:
        body = struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), len(data))
        out += _pcapng_block(0x00000006, body + data)
    path.write_bytes(bytes(out))


STD_NOTES = ("Conventions: caller tone 440 Hz, callee 1000 Hz, PCMU 20 ms; MAC = source MAC of "
             "the party's RTP frames (else SIP frames); media endpoint = first source ip:port of "
             "the party's RTP (else its SDP); first_rtp_offset_ms relative to the first INVITE; "
             "direction 0 = caller->callee.")


def write_scenario(name: str, make: Callable[[], "Capture"], out_dir: Path, *, generator: str,
                   notes: str, mac_seed: str | None = None, scenario_notes_first: bool = False) -> Path:
    """Build one scenario and write ``<name>.<fmt>`` and ``<name>.truth.json`` (shared by the
    DTMF and PBX generators, so every generator writes files the same way)."""
    MAC_SEQ[0] = sum(ord(c) for c in (mac_seed or name)) * 8  # per-scenario MACs, independent of run order
    cap = make()
    cap.pkts.sort(key=Pkt.key)
    frames = [(p.ts_ns, frame(cap.link, p)) for p in cap.pkts]
    fname = f"{name}.{cap.fmt}"
    path = out_dir / fname
    (write_pcapng if cap.fmt == "pcapng" else write_pcap)(path, LINKTYPES[cap.link], frames)
    truth = {
        "capture": fname,
        "description": cap.description,
        "generator": generator,
        "calls": cap.calls,
        "notes": (cap.notes + " " if scenario_notes_first and cap.notes else "") + notes,
    }
    (out_dir / f"{name}.truth.json").write_text(json.dumps(truth, indent=2, ensure_ascii=False)
                                                + "\n", encoding="utf-8")
    return path


def build(name: str, out_dir: Path = OUT_DIR) -> Path:
    return write_scenario(name, SCENARIOS[name], out_dir, generator="pcaps/make_pcaps.py",
                          notes=STD_NOTES, scenario_notes_first=True)


def run_cli(argv: list[str], scenarios: dict, build_one: Callable[[str, Path], Path]) -> int:
    """``[--out DIR] [scenario ...]`` for every generator."""
    out_dir = OUT_DIR
    if argv[:1] == ["--out"]:
        out_dir, argv = Path(argv[1]), argv[2:]
        out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [n for n in argv if n not in scenarios]
    if unknown:
        print(f"unknown scenario(s): {unknown}; known: {list(scenarios)}", file=sys.stderr)
        return 2
    for n in argv or list(scenarios):
        p = build_one(n, out_dir)
        print(f"{p.name}: {p.stat().st_size} bytes")
    return 0


def main(argv: list[str]) -> int:
    return run_cli(argv, SCENARIOS, build)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

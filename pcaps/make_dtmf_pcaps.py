#!/usr/bin/env python3
"""Generate the DTMF test captures ``pcaps/dtmf_*.pcap`` and their truth files.

Owns the DTMF scenarios only; the SIP/RTP building blocks (parties, dialogs, µ-law tone
payloads, the byte-exact pcap writer, truth conventions) are imported from
``make_pcaps.py`` so both generators agree. Deterministic (fixed times, no randomness).

Scenarios:
- ``dtmf_rfc4733``: RFC 4733 events (PT 101) both ways, with the wire faults a tap sees:
  a lost first event packet, reordered and duplicated updates, lost end packets (some and
  all), the same key twice in a row. Caller ``1599#``, callee ``*0``.
- ``dtmf_pt_mismatch``: the caller offers telephone-event on 101, the callee answers 96;
  each side sends with the PT the OTHER side asked for (RFC 3264). Caller ``3``, callee ``7``.
- ``dtmf_sipinfo``: SIP INFO DTMF: caller ``application/dtmf-relay`` ``12``, callee
  ``application/dtmf`` ``#``.

Usage: ``python3 pcaps/make_dtmf_pcaps.py [--out DIR] [scenario ...]``.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_pcaps import (MS, OUT_DIR, PTIME_MS, SAMPLES_PER_PACKET, T0,  # noqa: E402
                        Capture, Dialog, audio_truth, bye_and_ok, call_truth,
                        phone, ssrc_for, tone_payload, udp, run_cli, write_scenario)
from scapy.all import UDP, Raw  # noqa: E402


def sdp_te(p, sess_id: int, te_pt: int) -> bytes:
    lines = ["v=0", f"o=- {sess_id} 1 IN IP4 {p.ip}", "s=call", f"c=IN IP4 {p.ip}", "t=0 0",
             f"m=audio {p.rtp_port} RTP/AVP 0 {te_pt}", "a=rtpmap:0 PCMU/8000",
             f"a=rtpmap:{te_pt} telephone-event/8000", f"a=fmtp:{te_pt} 0-16", "a=ptime:20",
             "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


class Sender:
    """One RTP stream: audio packets every 20 ms, RFC 4733 events in place of audio."""

    def __init__(self, cap: Capture, src, dst, ssrc: int, seq0: int, ts0: int, freq_hz: int):
        self.cap, self.src, self.dst = cap, src, dst
        self.ssrc, self.seq, self.ts0, self.freq = ssrc, seq0, ts0, freq_hz
        self.tick = 0
        self.seqs: set[int] = set()   # distinct sequence numbers put on the wire
        self.sent = 0                 # == len(seqs), for audio_truth

    def _put(self, t_ns: int, pt: int, marker: bool, seq: int, ts: int, payload: bytes) -> None:
        hdr = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                          ts & 0xFFFFFFFF, self.ssrc)
        self.cap.add(t_ns, self.src, self.dst,
                     UDP(sport=self.src.rtp_port, dport=self.dst.rtp_port) / Raw(hdr + payload))
        self.seqs.add(seq & 0xFFFF)
        self.sent = len(self.seqs)

    def t(self, start_ns: int) -> int:
        return start_ns + self.tick * PTIME_MS * MS

    def audio(self, start_ns: int, n: int) -> None:
        for _ in range(n):
            self._put(self.t(start_ns), 0, self.tick == 0, self.seq,
                      self.ts0 + self.tick * SAMPLES_PER_PACKET, tone_payload(self.freq, self.tick))
            self.seq += 1
            self.tick += 1

    def key(self, start_ns: int, event: int, n_updates: int, pt: int = 101, *,
            drop: frozenset = frozenset(), swap: tuple[int, int] | None = None,
            dup: frozenset = frozenset(), end_copies: int = 3) -> None:
        """One key press: ``n_updates`` packets (durations 0, 160, ...), then the end packet
        ``end_copies`` times (same seq). ``drop``/``dup`` are update indexes lost/doubled,
        ``swap`` two update indexes sent in each other's slot."""
        ts = self.ts0 + self.tick * SAMPLES_PER_PACKET
        pkts = []
        for i in range(n_updates):
            pkts.append((self.t(start_ns), self.seq, struct.pack("!BBH", event, 10, i * 160), i == 0))
            self.seq += 1
            self.tick += 1
        order = list(range(n_updates))
        if swap:
            a, b = swap
            order[a], order[b] = order[b], order[a]
        for slot, i in enumerate(order):
            t_slot = pkts[slot][0]
            _, seq, payload, marker = pkts[i]
            if i in drop:
                continue
            self._put(t_slot, pt, marker, seq, ts, payload)
            if i in dup:
                self._put(t_slot + 2 * MS, pt, marker, seq, ts, payload)
        end = struct.pack("!BBH", event, 0x80 | 10, n_updates * 160)
        t_end = self.t(start_ns)
        for k in range(end_copies):
            self._put(t_end + k * MS, pt, False, self.seq, ts, end)
        self.seq += 1
        self.tick += 1


def _call(cap: Capture, d: Dialog, te_caller: int, te_callee: int, script) -> dict:
    a, b = d.caller, d.callee
    t0 = T0
    inv, via = d.request("INVITE", body=sdp_te(a, 1001, te_caller))
    cap.add(t0, a, b, udp(a, b, inv))
    cap.add(t0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(t0 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(t0 + 1500 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1,
                                                      body=sdp_te(b, 2002, te_callee))))
    ack, _ = d.request("ACK")
    cap.add(t0 + 1510 * MS, a, b, udp(a, b, ack))
    s_a = Sender(cap, a, b, ssrc_for(d.callid, 0), 1000, 16000, 440)
    s_b = Sender(cap, b, a, ssrc_for(d.callid, 1), 5000, 32000, 1000)
    first_b, first_a = t0 + 1520 * MS, t0 + 1530 * MS
    end_ns = script(s_a, s_b, first_a, first_b)
    bye_and_ok(cap, d, end_ns + 15 * MS)
    # audio_truth reads .sent and .ssrc of each stream
    return call_truth(d, start_ns=t0, answered=True, end_reason="bye", final_status=200,
                      caller_media=a.media_endpoint, callee_media=b.media_endpoint,
                      caller_mac=a.mac_truth, callee_mac=b.mac_truth,
                      audio=dict(audio_truth([s_a], [s_b], t0, first_a, first_b),
                                 caller_tone_hz=None, callee_tone_hz=None))


def _parties():
    return (phone("1001", '"Alice Caller"', "10.0.0.10", 40000),
            phone("1002", '"Bob Callee"', "10.0.0.20", 50000))


def sc_rfc4733() -> Capture:
    cap = Capture("dtmf_rfc4733", "RFC 4733 DTMF both ways (PT 101) with tap faults: caller "
                  "'1' clean, '5' first event packet lost, '9' updates reordered and one "
                  "duplicated, '9' again (2 of 3 end packets lost), '#' all end packets lost; "
                  "callee '*' and '0' clean. PCMU tone audio between keys.")
    a, b = _parties()
    d = Dialog("dtmf-rfc4733-0001@callntest.example", a, b, from_tag="ft-dtmf1", to_tag="tt-dtmf1")

    def script(s_a: Sender, s_b: Sender, fa: int, fb: int) -> int:
        s_a.audio(fa, 25)
        s_a.key(fa, 1, 5)
        s_a.audio(fa, 10)
        s_a.key(fa, 5, 5, drop=frozenset({0}))
        s_a.audio(fa, 10)
        s_a.key(fa, 9, 6, swap=(2, 3), dup=frozenset({4}))
        s_a.audio(fa, 3)
        s_a.key(fa, 9, 4, end_copies=1)
        s_a.audio(fa, 10)
        s_a.key(fa, 11, 5, end_copies=0)
        s_a.audio(fa, 20)
        s_b.audio(fb, 30)
        s_b.key(fb, 10, 6)
        s_b.audio(fb, 15)
        s_b.key(fb, 0, 4)
        s_b.audio(fb, 30)
        return max(s_a.t(fa), s_b.t(fb))

    call = _call(cap, d, 101, 101, script)
    call.update(callerdtmf="1599#", destinationdtmf="*0")
    cap.calls.append(call)
    return cap


def sc_pt_mismatch() -> Capture:
    cap = Capture("dtmf_pt_mismatch", "The offer maps telephone-event to PT 101, the answer to "
                  "PT 96; the caller sends its key '3' on 96 (what the callee asked for), the "
                  "callee its key '7' on 101.")
    a, b = _parties()
    d = Dialog("dtmf-pt-0001@callntest.example", a, b, from_tag="ft-dtmf2", to_tag="tt-dtmf2")

    def script(s_a: Sender, s_b: Sender, fa: int, fb: int) -> int:
        s_a.audio(fa, 20)
        s_a.key(fa, 3, 5, pt=96)
        s_a.audio(fa, 20)
        s_b.audio(fb, 30)
        s_b.key(fb, 7, 5, pt=101)
        s_b.audio(fb, 10)
        return max(s_a.t(fa), s_b.t(fb))

    call = _call(cap, d, 101, 96, script)
    call.update(callerdtmf="3", destinationdtmf="7")
    cap.calls.append(call)
    return cap


def sc_sipinfo() -> Capture:
    cap = Capture("dtmf_sipinfo", "SIP INFO DTMF: the caller sends application/dtmf-relay "
                  "'1' and '2' (Signal=/Duration=), the callee application/dtmf '#'. "
                  "RTP carries no events.")
    a, b = _parties()
    d = Dialog("dtmf-info-0001@callntest.example", a, b, from_tag="ft-dtmf3", to_tag="tt-dtmf3")

    def info(t_ns: int, body: bytes, ctype: str, from_callee: bool, cseq: int) -> None:
        if not from_callee:
            d.cseq = cseq
        msg, via = d.request("INFO", cseq=cseq, from_callee=from_callee,
                             extra=[("Content-Type", ctype)])
        # Dialog.request adds Content-Type only for SDP bodies: rebuild with this body.
        head = msg.split(b"\r\n\r\n", 1)[0].replace(b"Content-Length: 0",
                                                    f"Content-Length: {len(body)}".encode())
        msg = head + b"\r\n\r\n" + body
        src, dst = (b, a) if from_callee else (a, b)
        cap.add(t_ns, src, dst, udp(src, dst, msg))
        cap.add(t_ns + 3 * MS, dst, src, udp(dst, src, d.response(
            200, "OK", via, "INFO", cseq, from_caller=from_callee)))

    def script(s_a: Sender, s_b: Sender, fa: int, fb: int) -> int:
        s_a.audio(fa, 60)
        s_b.audio(fb, 60)
        info(fa + 300 * MS, b"Signal=1\r\nDuration=160\r\n", "application/dtmf-relay", False, 2)
        info(fa + 700 * MS, b"Signal=2\r\nDuration=160\r\n", "application/dtmf-relay", False, 3)
        info(fa + 900 * MS, b"#", "application/dtmf", True, 101)
        return max(s_a.t(fa), s_b.t(fb))

    call = _call(cap, d, 101, 101, script)
    d.cseq = 3
    call.update(callerdtmf="12", destinationdtmf="#")
    cap.calls.append(call)
    return cap


SCENARIOS = {"dtmf_rfc4733": sc_rfc4733, "dtmf_pt_mismatch": sc_pt_mismatch,
             "dtmf_sipinfo": sc_sipinfo}


NOTES = ("Caller audio a 440 Hz tone, callee 1000 Hz, PCMU 20 ms; RFC 4733 events "
         "replace audio packets while a key is down and share the audio stream's "
         "SSRC and sequence numbers; the end packet's copies share one seq. RTP "
         "packet counts are distinct (SSRC, seq) on the wire (lost packets absent, "
         "duplicates once). direction 0 = caller->callee.")


def build(name: str, out_dir: Path = OUT_DIR) -> Path:
    return write_scenario(name, SCENARIOS[name], out_dir, generator="pcaps/make_dtmf_pcaps.py",
                          notes=NOTES)


def main(argv: list[str]) -> int:
    return run_cli(argv, SCENARIOS, build)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

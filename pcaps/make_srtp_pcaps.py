#!/usr/bin/env python3
"""Generate the SDES-SRTP test captures ``pcaps/srtp_*.pcap`` and their truth files.

The SIP/RTP building blocks (parties, dialogs, µ-law tone payloads, the byte-exact pcap
writer, truth conventions) come from ``make_pcaps.py``; the media is encrypted with libsrtp
(pylibsrtp ``protect``) using fixed keys, so every run gives the same bytes. Each truth file
has, beside the usual ``calls``, an ``srtp`` block per Call-ID: the plaintext that was
encrypted (tone and packet count per side: ``tone_payload(tone_hz, i)`` for i < packets; ``events``
RFC 4733 packets take some of those slots),
what must be counted (packets failing authentication) and, for calls that cannot be
decrypted, the no-audio reason.

Scenarios:
- ``srtp_aes80``: AES_CM_128_HMAC_SHA1_80 both ways (the offer also lists _32; the answer picks tag 1).
- ``srtp_aes32_oneway``: AES_CM_128_HMAC_SHA1_32; only the caller sends.
- ``srtp_rekey``: the caller re-INVITEs mid-call with new keys, the callee answers with new
  keys; the callee switches at its 200 OK, the caller 30 ms after it (two packets in flight
  with the old key after the answer).
- ``srtp_mki``: the caller offers two keys with 4-byte MKIs and switches from MKI 1 to MKI 2
  mid-call; the callee one key with a 1-byte MKI.
- ``srtp_auth_fail``: _80 both ways; 5 tampered copies of caller packets and 3 of callee
  packets (one payload byte flipped) arrive 2 ms before their genuine packets.
- ``srtp_gcm``: AEAD_AES_128_GCM both ways.
- ``srtp_gcm256``: AEAD_AES_256_GCM both ways.
- ``srtp_dtmf``: _80 both ways with encrypted RFC 4733 key presses (caller ``5#``, callee ``9``;
  the end packets' three copies are byte-identical SRTP packets).
- ``srtp_dtls``: UDP/TLS/RTP/SAVPF with a=fingerprint (DTLS-SRTP): no keys in the SDP.
- ``srtp_no_keys``: RTP/SAVP without a=crypto.
- ``srtp_aes256``: only AES_256_CM_HMAC_SHA1_80 offered and answered (libsrtp through
  pylibsrtp cannot do it).

Usage: ``python3 pcaps/make_srtp_pcaps.py [--out DIR] [scenario ...]``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_pcaps import (CALLEE_TONE_HZ, CALLER_TONE_HZ, MS, PTIME_MS, SAMPLES_PER_PACKET,  # noqa: E402
                        STD_NOTES, T0, Capture, Dialog, bye_and_ok, call_truth, phone, run_cli,
                        ssrc_for, tone_payload, udp, write_scenario)
from scapy.all import UDP, Raw  # noqa: E402

import pylibsrtp  # noqa: E402

SUITE_KEY_BYTES = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30,
                   "AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44, "AES_256_CM_HMAC_SHA1_80": 46}
PROFILES = {"AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
            "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
            "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM}
TAG_BYTES = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4,
             "AEAD_AES_128_GCM": 16, "AEAD_AES_256_GCM": 16}


_SRTP: dict[str, dict] = {}      # Call-ID -> the truth's srtp block, filled while a scenario is built


def key_for(label: str, suite: str) -> bytes:
    """A fixed master key || salt of the suite's length (deterministic, obviously a test key)."""
    n = SUITE_KEY_BYTES[suite]
    out = b""
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{len(out)}".encode()).digest()
    return out[:n]


def inline(key: bytes, extra: str = "") -> str:
    return "inline:" + base64.b64encode(key).decode() + extra


def sdp_srtp(p, sess_id: int, *, version: int = 1, proto: str = "RTP/SAVP",
             attrs: list[str] | None = None, pts: str = "0") -> bytes:
    lines = ["v=0", f"o=- {sess_id} {version} IN IP4 {p.ip}", "s=call", f"c=IN IP4 {p.ip}", "t=0 0",
             f"m=audio {p.rtp_port} {proto} {pts}", "a=rtpmap:0 PCMU/8000", "a=ptime:20",
             *(attrs or []), "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


class Protector:
    """An SRTP sender's crypto context: libsrtp protect, with an MKI put on the wire."""

    def __init__(self, suite: str, key: bytes, mki: int | None = None, mki_bytes: int = 0) -> None:
        self.suite = suite
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=PROFILES[suite])
        policy.allow_repeat_tx = True                # RFC 4733 end packets are sent 3 times, one seq
        self.session = pylibsrtp.Session(policy)
        self.mki = b"" if mki is None else mki.to_bytes(mki_bytes, "big")

    def __call__(self, packet: bytes) -> bytes:
        out = self.session.protect(packet)
        if not self.mki:
            return out
        if self.suite.startswith("AEAD"):            # RFC 7714: after the AEAD tag
            return out + self.mki
        tag = TAG_BYTES[self.suite]                  # RFC 3711: between payload and tag
        return out[:-tag] + self.mki + out[-tag:]


class Sender:
    """One side's PCMU stream: plaintext tone packets, encrypted by the current protector."""

    def __init__(self, cap: Capture, src, dst, ssrc: int, seq0: int, ts0: int, tone_hz: int) -> None:
        self.cap, self.src, self.dst = cap, src, dst
        self.ssrc, self.seq0, self.ts0, self.tone_hz = ssrc, seq0, ts0, tone_hz
        self.sent = 0
        self.tamper: set[int] = set()                # packet indexes preceded by a tampered copy
        self.first_ns: int | None = None
        self.events = 0                              # RFC 4733 packets among ``sent``

    def plain(self, i: int) -> bytes:
        hdr = struct.pack("!BBHII", 0x80, (0x80 if i == 0 else 0), (self.seq0 + i) & 0xFFFF,
                          (self.ts0 + i * SAMPLES_PER_PACKET) & 0xFFFFFFFF, self.ssrc)
        return hdr + tone_payload(self.tone_hz, i)

    def send(self, start_ns: int, count: int, protect: Protector) -> int:
        """``count`` tone packets; ``start_ns`` is the time of the stream's packet 0."""
        t = start_ns
        for k in range(count):
            t = start_ns + self.sent * PTIME_MS * MS
            if self.first_ns is None:
                self.first_ns = t
            wire = protect(self.plain(self.sent))
            if self.sent in self.tamper:
                bad = bytearray(wire)
                bad[20] ^= 0x5A                       # a payload byte: authentication must fail
                self._put(t - 2 * MS, bytes(bad))
            self._put(t, wire)
            self.sent += 1
        return t

    def key(self, start_ns: int, event: int, protect: Protector, updates: int = 4) -> None:
        """An RFC 4733 key press (PT 101) in the next packet slots: ``updates`` packets, then the
        end packet three times (one seq, byte-identical copies on the wire)."""
        ts = self.ts0 + self.sent * SAMPLES_PER_PACKET
        for i in range(updates + 1):
            end = i == updates
            payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, (i + 1) * SAMPLES_PER_PACKET)
            hdr = struct.pack("!BBHII", 0x80, (0x80 if i == 0 else 0) | 101, (self.seq0 + self.sent) & 0xFFFF,
                              ts & 0xFFFFFFFF, self.ssrc)
            t = start_ns + self.sent * PTIME_MS * MS
            wire = protect(hdr + payload)
            for copy in range(3 if end else 1):
                self._put(t + copy * MS, wire)
            self.sent += 1
            self.events += 1

    def _put(self, t_ns: int, data: bytes) -> None:
        self.cap.add(t_ns, self.src, self.dst, UDP(sport=self.src.rtp_port, dport=self.dst.rtp_port) / Raw(data))


def _parties():
    return (phone("1001", '"Alice Caller"', "10.0.0.10", 40000),
            phone("1002", '"Bob Callee"', "10.0.0.20", 50000))


def _setup(cap: Capture, d: Dialog, offer: bytes, answer: bytes) -> None:
    a, b = d.caller, d.callee
    inv, via = d.request("INVITE", body=offer)
    cap.add(T0, a, b, udp(a, b, inv))
    cap.add(T0 + 5 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(T0 + 100 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    cap.add(T0 + 1500 * MS, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 1, body=answer)))
    ack, _ = d.request("ACK")
    cap.add(T0 + 1510 * MS, a, b, udp(a, b, ack))


def _senders(cap: Capture, d: Dialog) -> tuple[Sender, Sender]:
    return (Sender(cap, d.caller, d.callee, ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ),
            Sender(cap, d.callee, d.caller, ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ))


def _truth(cap: Capture, d: Dialog, s_a: Sender, s_b: Sender, *, suites: list[str],
           auth_failed: tuple[int, int] = (0, 0), no_audio: str = "", tones: bool = True) -> None:
    a, b = d.caller, d.callee
    truth = call_truth(d, start_ns=T0, answered=True, end_reason="bye", final_status=200,
                       caller_media=a.media_endpoint, callee_media=b.media_endpoint,
                       caller_mac=a.mac_truth, callee_mac=b.mac_truth)
    truth["encrypted"] = True
    truth["audio"] = {
        # Tone checks (test_recording_tones) need both sides; the srtp block covers one-way calls.
        "caller_tone_hz": CALLER_TONE_HZ if tones and s_a.sent and s_b.sent else None,
        "callee_tone_hz": CALLEE_TONE_HZ if tones and s_a.sent and s_b.sent else None,
        "caller_rtp_packets": s_a.sent, "callee_rtp_packets": s_b.sent,
        "caller_ssrcs": [s_a.ssrc] if s_a.sent else [], "callee_ssrcs": [s_b.ssrc] if s_b.sent else [],
        "first_rtp_offset_ms": {"caller": None if s_a.first_ns is None else (s_a.first_ns - T0) // MS,
                                "callee": None if s_b.first_ns is None else (s_b.first_ns - T0) // MS},
    }
    cap.calls.append(truth)
    _SRTP[d.callid] = {
        "suites": suites,
        "auth_failed": {"caller": auth_failed[0], "callee": auth_failed[1]},
        "no_audio_reason": no_audio,
        "plaintext": {"caller": {"tone_hz": s_a.tone_hz, "packets": s_a.sent, "events": s_a.events},
                      "callee": {"tone_hz": s_b.tone_hz, "packets": s_b.sent, "events": s_b.events}},
    }


def _simple(name: str, description: str, suite: str, *, offer_extra: list[str] | None = None,
            callee_sends: bool = True, tamper: tuple[set[int], set[int]] = (set(), set())) -> Capture:
    cap = Capture(name, description)
    a, b = _parties()
    d = Dialog(f"{name}-0001@callntest.example", a, b, from_tag=f"ft-{name}", to_tag=f"tt-{name}")
    ka, kb = key_for(f"{name}/caller", suite), key_for(f"{name}/callee", suite)
    offer = sdp_srtp(a, 1001, attrs=[f"a=crypto:1 {suite} {inline(ka)}", *(offer_extra or [])])
    answer = sdp_srtp(b, 2002, attrs=[f"a=crypto:1 {suite} {inline(kb)}"])
    _setup(cap, d, offer, answer)
    s_a, s_b = _senders(cap, d)
    s_a.tamper, s_b.tamper = tamper
    ends = [s_a.send(T0 + 1530 * MS, 150, Protector(suite, ka))]
    if callee_sends:
        ends.append(s_b.send(T0 + 1520 * MS, 152, Protector(suite, kb)))
    bye_and_ok(cap, d, max(ends) + 15 * MS)
    _truth(cap, d, s_a, s_b, suites=[suite], auth_failed=(len(tamper[0]), len(tamper[1])))
    return cap


def sc_aes80() -> Capture:
    suite32 = "AES_CM_128_HMAC_SHA1_32"
    return _simple("srtp_aes80", "SDES-SRTP AES_CM_128_HMAC_SHA1_80 both ways (the offer also lists "
                   "AES_CM_128_HMAC_SHA1_32 as tag 2; the answer picks tag 1), PCMU 20 ms.",
                   "AES_CM_128_HMAC_SHA1_80",
                   offer_extra=[f"a=crypto:2 {suite32} {inline(key_for('srtp_aes80/caller32', suite32))}"])


def sc_aes32_oneway() -> Capture:
    return _simple("srtp_aes32_oneway", "SDES-SRTP AES_CM_128_HMAC_SHA1_32; only the caller sends "
                   "media (one-way audio).", "AES_CM_128_HMAC_SHA1_32", callee_sends=False)


def sc_auth_fail() -> Capture:
    return _simple("srtp_auth_fail", "SDES-SRTP AES_CM_128_HMAC_SHA1_80 both ways; 5 tampered copies of "
                   "caller packets and 3 of callee packets (one payload byte flipped) arrive 2 ms before "
                   "their genuine packets: they fail authentication and are counted, never recorded.",
                   "AES_CM_128_HMAC_SHA1_80", tamper=({10, 40, 41, 90, 149}, {0, 70, 151}))


def sc_gcm() -> Capture:
    return _simple("srtp_gcm", "SDES-SRTP AEAD_AES_128_GCM (RFC 7714) both ways.", "AEAD_AES_128_GCM")


def sc_gcm256() -> Capture:
    return _simple("srtp_gcm256", "SDES-SRTP AEAD_AES_256_GCM (RFC 7714) both ways.", "AEAD_AES_256_GCM")


def sc_rekey() -> Capture:
    name, suite = "srtp_rekey", "AES_CM_128_HMAC_SHA1_80"
    cap = Capture(name, "SDES-SRTP AES_CM_128_HMAC_SHA1_80; 2 s into the media the caller re-INVITEs "
                  "with a NEW key and the callee answers with a NEW key (same SSRCs, sequence numbers "
                  "continue). The callee switches keys as it sends its 200 OK, the caller 30 ms after "
                  "it (two of its packets with the old key arrive after the answer).")
    a, b = _parties()
    d = Dialog(f"{name}-0001@callntest.example", a, b, from_tag=f"ft-{name}", to_tag=f"tt-{name}")
    keys = {(side, n): key_for(f"{name}/{side}/{n}", suite) for side in ("caller", "callee") for n in (1, 2)}
    _setup(cap, d, sdp_srtp(a, 1001, attrs=[f"a=crypto:1 {suite} {inline(keys['caller', 1])}"]),
           sdp_srtp(b, 2002, attrs=[f"a=crypto:1 {suite} {inline(keys['callee', 1])}"]))
    s_a, s_b = _senders(cap, d)
    fa, fb = T0 + 1530 * MS, T0 + 1520 * MS
    s_a.send(fa, 100, Protector(suite, keys["caller", 1]))
    s_b.send(fb, 100, Protector(suite, keys["callee", 1]))
    t_re = fb + 100 * PTIME_MS * MS                  # re-INVITE between two packets
    d.cseq = 2
    ri, via = d.request("INVITE", body=sdp_srtp(a, 1001, version=2,
                                                attrs=[f"a=crypto:1 {suite} {inline(keys['caller', 2])}"]))
    cap.add(t_re, a, b, udp(a, b, ri))
    t_ok = t_re + 25 * MS
    cap.add(t_ok, b, a, udp(b, a, d.response(200, "OK", via, "INVITE", 2, body=sdp_srtp(
        b, 2002, version=2, attrs=[f"a=crypto:1 {suite} {inline(keys['callee', 2])}"]))))
    ack, _ = d.request("ACK")
    cap.add(t_ok + 30 * MS, a, b, udp(a, b, ack))
    # Caller packets at fa + 100.. : the old key until 30 ms after the 200 OK.
    t_switch = t_ok + 30 * MS
    old_n = 0
    while fa + (100 + old_n) * PTIME_MS * MS < t_switch:
        old_n += 1
    s_a.send(fa, old_n, Protector(suite, keys["caller", 1]))
    new_a = Protector(suite, keys["caller", 2])
    end_a = s_a.send(fa, 100 - old_n, new_a)
    new_b = Protector(suite, keys["callee", 2])
    end_b = s_b.send(fb + 30 * MS, 100, new_b)       # 30 ms later than before: after its 200 OK
    bye_and_ok(cap, d, max(end_a, end_b) + 15 * MS, cseq=3)
    _truth(cap, d, s_a, s_b, suites=[suite])
    return cap


def sc_mki() -> Capture:
    name, suite = "srtp_mki", "AES_CM_128_HMAC_SHA1_80"
    cap = Capture(name, "SDES-SRTP AES_CM_128_HMAC_SHA1_80 with MKIs: the caller offers two keys "
                  "(|2^20|1:4 and |2^20|2:4) and switches from MKI 1 to MKI 2 after 75 packets; the "
                  "callee answers one key with a 1-byte MKI (|1:1).")
    a, b = _parties()
    d = Dialog(f"{name}-0001@callntest.example", a, b, from_tag=f"ft-{name}", to_tag=f"tt-{name}")
    k1, k2, kb = (key_for(f"{name}/{x}", suite) for x in ("caller1", "caller2", "callee"))
    offer = sdp_srtp(a, 1001, attrs=[f"a=crypto:1 {suite} {inline(k1, '|2^20|1:4')};{inline(k2, '|2^20|2:4')}"])
    answer = sdp_srtp(b, 2002, attrs=[f"a=crypto:1 {suite} {inline(kb, '|1:1')}"])
    _setup(cap, d, offer, answer)
    s_a, s_b = _senders(cap, d)
    fa, fb = T0 + 1530 * MS, T0 + 1520 * MS
    s_a.send(fa, 75, Protector(suite, k1, 1, 4))
    end_a = s_a.send(fa, 75, Protector(suite, k2, 2, 4))
    end_b = s_b.send(fb, 152, Protector(suite, kb, 1, 1))
    bye_and_ok(cap, d, max(end_a, end_b) + 15 * MS)
    _truth(cap, d, s_a, s_b, suites=[suite])
    return cap


def sc_dtmf() -> Capture:
    name, suite = "srtp_dtmf", "AES_CM_128_HMAC_SHA1_80"
    cap = Capture(name, "SDES-SRTP AES_CM_128_HMAC_SHA1_80 both ways with encrypted RFC 4733 key presses "
                  "(PT 101, end packet sent 3 times: byte-identical SRTP copies): caller '5' then '#', "
                  "callee '9'.")
    a, b = _parties()
    d = Dialog(f"{name}-0001@callntest.example", a, b, from_tag=f"ft-{name}", to_tag=f"tt-{name}")
    ka, kb = key_for(f"{name}/caller", suite), key_for(f"{name}/callee", suite)
    te = ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    offer = sdp_srtp(a, 1001, attrs=[f"a=crypto:1 {suite} {inline(ka)}", *te], pts="0 101")
    answer = sdp_srtp(b, 2002, attrs=[f"a=crypto:1 {suite} {inline(kb)}", *te], pts="0 101")
    _setup(cap, d, offer, answer)
    s_a, s_b = _senders(cap, d)
    fa, fb = T0 + 1530 * MS, T0 + 1520 * MS
    pa, pb = Protector(suite, ka), Protector(suite, kb)
    s_a.send(fa, 30, pa)
    s_a.key(fa, 5, pa)
    s_a.send(fa, 20, pa)
    s_a.key(fa, 11, pa)
    end_a = s_a.send(fa, 30, pa)
    s_b.send(fb, 40, pb)
    s_b.key(fb, 9, pb)
    end_b = s_b.send(fb, 40, pb)
    bye_and_ok(cap, d, max(end_a, end_b) + 15 * MS)
    _truth(cap, d, s_a, s_b, suites=[suite], tones=False)
    cap.calls[-1].update(callerdtmf="5#", destinationdtmf="9")
    return cap


def _undecryptable(name: str, description: str, offer: bytes, answer: bytes, reason: str) -> Capture:
    """A call whose media cannot be decrypted: the RTP is random-looking bytes after a header."""
    cap = Capture(name, description)
    a, b = _parties()
    d = Dialog(f"{name}-0001@callntest.example", a, b, from_tag=f"ft-{name}", to_tag=f"tt-{name}")
    _setup(cap, d, offer, answer)
    s_a, s_b = _senders(cap, d)
    junk = Protector("AES_CM_128_HMAC_SHA1_80", key_for(f"{name}/unknown", "AES_CM_128_HMAC_SHA1_80"))
    end_a = s_a.send(T0 + 1530 * MS, 100, junk)
    end_b = s_b.send(T0 + 1520 * MS, 100, junk)
    bye_and_ok(cap, d, max(end_a, end_b) + 15 * MS)
    _truth(cap, d, s_a, s_b, suites=[], no_audio=reason, tones=False)
    return cap


def sc_dtls() -> Capture:
    fp = "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in hashlib.sha256(b"srtp_dtls").digest())
    return _undecryptable(
        "srtp_dtls", "DTLS-SRTP: UDP/TLS/RTP/SAVPF with a=fingerprint and a=setup, no a=crypto: the keys "
        "are never on the wire; the call is parked no_audio:encrypted_dtls.",
        sdp_srtp(_parties()[0], 1001, proto="UDP/TLS/RTP/SAVPF", attrs=[fp, "a=setup:actpass"]),
        sdp_srtp(_parties()[1], 2002, proto="UDP/TLS/RTP/SAVPF", attrs=[fp, "a=setup:active"]),
        "encrypted_dtls")


def sc_no_keys() -> Capture:
    return _undecryptable(
        "srtp_no_keys", "RTP/SAVP offered and answered without a=crypto (keys exchanged some other way): "
        "parked no_audio:encrypted_no_keys.",
        sdp_srtp(_parties()[0], 1001), sdp_srtp(_parties()[1], 2002), "encrypted_no_keys")


def sc_aes256() -> Capture:
    suite = "AES_256_CM_HMAC_SHA1_80"
    ka, kb = key_for("srtp_aes256/caller", suite), key_for("srtp_aes256/callee", suite)
    return _undecryptable(
        "srtp_aes256", "SDES-SRTP with only AES_256_CM_HMAC_SHA1_80 (RFC 6188) offered and answered: "
        "libsrtp through pylibsrtp 1.0 cannot decrypt it; parked no_audio:encrypted_no_keys.",
        sdp_srtp(_parties()[0], 1001, attrs=[f"a=crypto:1 {suite} {inline(ka)}"]),
        sdp_srtp(_parties()[1], 2002, attrs=[f"a=crypto:1 {suite} {inline(kb)}"]),
        "encrypted_no_keys")


SCENARIOS = {
    "srtp_aes80": sc_aes80,
    "srtp_aes32_oneway": sc_aes32_oneway,
    "srtp_rekey": sc_rekey,
    "srtp_mki": sc_mki,
    "srtp_auth_fail": sc_auth_fail,
    "srtp_gcm": sc_gcm,
    "srtp_gcm256": sc_gcm256,
    "srtp_dtmf": sc_dtmf,
    "srtp_dtls": sc_dtls,
    "srtp_no_keys": sc_no_keys,
    "srtp_aes256": sc_aes256,
}

NOTES = (STD_NOTES + " SRTP: the srtp block per Call-ID gives the plaintext that was encrypted "
         "(make_pcaps.tone_payload(tone_hz, i) for i < packets, in sequence order from the stream's first "
         "packet), the packets that must fail authentication, and the no-audio reason of calls "
         "that cannot be decrypted. RTP packet counts are distinct (SSRC, seq) on the wire.")


def build(name: str, out_dir: Path) -> Path:
    import json

    _SRTP.clear()
    path = write_scenario(name, SCENARIOS[name], out_dir, generator="pcaps/make_srtp_pcaps.py", notes=NOTES)
    truth_path = out_dir / f"{name}.truth.json"
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    truth["srtp"] = dict(_SRTP)
    truth_path.write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:], SCENARIOS, build))

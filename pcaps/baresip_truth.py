#!/usr/bin/env python3
"""Write the truth file of a baresip SDES-SRTP capture made by record_baresip.sh.

Owns the truth of those recordings, made without the agent:

* the call fields come from the scenario (users, names, addresses, MACs, who holds, the keys
  pressed); what baresip makes up per run (Call-ID, tags, time, ports, SSRCs) is read from the
  capture with tshark;
* the audio truth: every SRTP packet is decrypted with libsrtp (pylibsrtp) using the key each
  side announced in its own SDP (``a=crypto``: a sender encrypts with the key it offers), the
  plaintext payloads are decoded with the ffmpeg command line, and the result is stored per
  direction as a sample count and a SHA-256 of the int16 samples (little-endian) in sequence
  order, with the runs (RTP-timestamp-contiguous stretches) that place them in time. RFC 4733
  events found in the plaintext give the digits each side sent.

It exits non-zero when the capture disagrees with the scenario: a packet that fails
authentication, keys that change between the offer and a re-INVITE, a hold that is not
sendonly -> sendrecv from the expected side, wrong digits, too little audio, or decoded audio
that is not the signal the UA played (with --sources: the first 200 ms of each direction
against the generated source WAV, at least MIN_SNR_DB).

Usage: python3 pcaps/baresip_truth.py pcaps/baresip_srtp_pcmu.pcap [--sources DIR]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import struct
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pylibsrtp

CALLER_IP, CALLEE_IP = "10.81.0.1", "10.81.0.2"
CALLER_MAC, CALLEE_MAC = "02000A510001", "02000A510002"


@dataclass(frozen=True)
class Scenario:
    profile: str          # m= transport of every SDP: RTP/AVP (srtp optional) or RTP/SAVP
    codec: str            # ffmpeg raw format of the audio payload
    payload_type: int
    rate_hz: int          # decoded sample rate (G.722: 16 kHz on an 8 kHz RTP clock)
    holder_ip: str        # who sends the hold and resume re-INVITEs
    caller_dtmf: str
    callee_dtmf: str
    mediaenc: str         # the UAs' mediaenc setting ("srtp" callee_plain: the caller's only)
    callee_plain: bool = False   # the callee has no mediaenc: it answers without a=crypto


SCENARIOS = {
    "baresip_srtp_pcmu": Scenario("RTP/AVP", "mulaw", 0, 8000, CALLER_IP, "", "", "srtp"),
    "baresip_srtpmand_pcma": Scenario("RTP/SAVP", "alaw", 8, 8000, CALLER_IP, "12", "#",
                                      "srtp-mand"),
    "baresip_srtpmand_g722": Scenario("RTP/SAVP", "g722", 9, 16000, CALLEE_IP, "", "",
                                      "srtp-mand"),
    "baresip_srtp_declined": Scenario("RTP/AVP", "mulaw", 0, 8000, CALLER_IP, "", "", "srtp",
                                      callee_plain=True),
}
CODEC_NAMES = {"mulaw": "PCMU", "alaw": "PCMA", "g722": "G.722"}
RTP_CLOCK_HZ = 8000          # PCMU, PCMA and (by RFC 3551's historic rule) G.722
EVENT_DIGITS = "0123456789*#ABCD"
MIN_SNR_DB = 15.0
MIN_AUDIO_PACKETS = 150      # ~3 s of talk per direction, a short recording means a failed run
SUITES = {"AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
          "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32}


def tshark_fields(pcap: Path, display_filter: str, fields: list[str]) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(pcap), "-o", "rtp.heuristic_rtp:TRUE", "-Y", display_filter,
           "-T", "fields", "-E", "separator=\t", "-E", "aggregator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def fail(msg: str) -> NoReturn:
    sys.exit(msg)


@dataclass
class Sdp:
    src_ip: str
    port: int
    profile: str
    direction: str
    suite: str | None     # None: no a=crypto in this SDP
    key: bytes | None
    event_pt: int | None


def read_sdps(pcap: Path) -> list[Sdp]:
    out = []
    for src, media, attrs in tshark_fields(pcap, "sdp", ["ip.src", "sdp.media", "sdp.media_attr"]):
        attrs = attrs.split("|")
        crypto = [a.split() for a in attrs if a.startswith("crypto:")]
        if len(crypto) > 1:
            fail(f"expected at most one a=crypto per SDP (baresip 1.0 offers one), got {crypto}")
        suite = key = None
        if crypto:
            _tag, suite, inline = crypto[0][:3]
            key = base64.b64decode(inline.removeprefix("inline:").split("|")[0])
        direction = next(a for a in attrs if a in ("sendrecv", "sendonly", "recvonly", "inactive"))
        port, profile = int(media.split()[1]), media.split()[2]
        event_pt = next((int(a[7:].split()[0]) for a in attrs
                         if a.startswith("rtpmap:") and "telephone-event/" in a), None)
        out.append(Sdp(src, port, profile, direction, suite, key, event_pt))
    return out


def rtp_header_len(pkt: bytes) -> int:
    n = 12 + 4 * (pkt[0] & 0x0F)
    if pkt[0] & 0x10:
        n += 4 + 4 * struct.unpack_from("!H", pkt, n + 2)[0]
    return n


def ffmpeg_decode(fmt: str, payload: bytes) -> np.ndarray:
    args = ["-f", fmt] if fmt == "g722" else ["-f", fmt, "-ar", "8000", "-ac", "1"]
    proc = subprocess.run(["ffmpeg", "-v", "error", *args, "-i", "-", "-f", "s16le", "-"],
                          input=payload, capture_output=True, check=True, timeout=60)
    return np.frombuffer(proc.stdout, dtype="<i2")


def snr_db_against_source(pcm: np.ndarray, wav: Path) -> float:
    """SNR of the first 200 ms of decoded audio against the source file, at the offset into
    the source's first 2 s where the two differ least (least squares, not raw correlation:
    the callee's signal is amplitude-modulated)."""
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        src = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    n = rate // 5
    head = pcm[:n].astype(np.float64)
    window = src[:2 * rate + n]
    energy = np.convolve(window ** 2, np.ones(n), mode="valid")
    err = energy - 2 * np.correlate(window, head, mode="valid") + np.sum(head ** 2)
    ref = window[int(np.argmin(err)):][:n]
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - head) ** 2), 1.0)))


def srtp_session(sdp: Sdp) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=sdp.key, srtp_profile=SUITES[sdp.suite],
                                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))


def decode_side(packets: list[tuple[float, bytes]], sdp: Sdp, sc: Scenario, event_pt: int,
                encrypted: bool) -> dict:
    """Decrypt one side's SRTP (capture order) unless the call is in clear, then decode its
    audio and events."""
    session = srtp_session(sdp) if encrypted else None
    audio: dict[int, bytes] = {}        # extended seq -> plaintext packet
    events: dict[int, list[bytes]] = {}  # RTP timestamp (event start) -> payloads
    last_seq = ext_base = None
    for _t, wire in packets:
        try:
            plain = session.unprotect(wire) if session else wire
        except pylibsrtp.Error as exc:
            fail(f"SRTP packet from {sdp.src_ip} failed authentication: {exc}")
        seq, ts = struct.unpack_from("!HI", plain, 2)
        # Extended sequence number (the captures are short: at most one wrap).
        if last_seq is None:
            ext_base = 0
        elif seq < last_seq and last_seq - seq > 0x8000:
            ext_base += 0x10000
        last_seq = seq
        pt = plain[1] & 0x7F
        body = plain[rtp_header_len(plain):]
        if pt == event_pt:
            events.setdefault(ts, []).append(body)
        elif pt == sc.payload_type:
            audio[ext_base + seq] = plain
        else:
            fail(f"unexpected payload type {pt} from {sdp.src_ip}")
    ordered = [audio[k] for k in sorted(audio)]
    pcm = ffmpeg_decode(sc.codec, b"".join(p[rtp_header_len(p):] for p in ordered))
    per_packet = pcm.size // len(ordered)
    if per_packet * len(ordered) != pcm.size:
        fail(f"{sdp.src_ip}: {pcm.size} samples from {len(ordered)} packets")
    # Runs: stretches whose RTP timestamps follow on; a hold leaves a gap between two runs.
    ts0 = struct.unpack_from("!I", ordered[0], 4)[0]
    runs: list[list[int]] = []
    expected_next = None
    for p in ordered:
        at = ((struct.unpack_from("!I", p, 4)[0] - ts0) & 0xFFFFFFFF) * sc.rate_hz // RTP_CLOCK_HZ
        if at != expected_next:
            runs.append([at, 0])
        runs[-1][1] += per_packet
        expected_next = at + per_packet
    digits = ""
    for ts in sorted(events):       # one event per start timestamp (RFC 4733 section 2.5)
        code = events[ts][0][0]
        if not any(b[1] & 0x80 for b in events[ts]):
            fail(f"{sdp.src_ip}: event {code} at ts {ts} never ends")
        digits += EVENT_DIGITS[code]
    return {
        "ssrcs": sorted({struct.unpack_from("!I", p, 8)[0] for p in ordered}),
        "codec": sc.codec, "sample_rate_hz": sc.rate_hz,
        "audio_packets": len(ordered), "event_packets": sum(map(len, events.values())),
        "samples": int(pcm.size),
        "sha256": hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest(),
        "runs": runs, "dtmf": digits,
        "_pcm": pcm,
    }


def srtcp_count(pcap: Path, sdp: Sdp, rtcp_port: int) -> tuple[int, int]:
    """(authenticated, not authenticated) SRTCP packets sent from the side's RTCP port."""
    session = srtp_session(sdp)
    ok = bad = 0
    for (payload,) in tshark_fields(pcap, f"ip.src == {sdp.src_ip} && udp.srcport == {rtcp_port}",
                                    ["udp.payload"]):
        try:
            session.unprotect_rtcp(bytes.fromhex(payload))
            ok += 1
        except pylibsrtp.Error:
            bad += 1
    return ok, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pcap", type=Path)
    ap.add_argument("--sources", type=Path, help="the WAVs the UAs played (record_baresip.sh's "
                                                 "work dir): check the decoded audio against them")
    args = ap.parse_args()
    pcap: Path = args.pcap
    name = pcap.name.rsplit(".", 1)[0]
    sc = SCENARIOS[name]

    inv = tshark_fields(pcap, "sip.Method == INVITE", ["frame.time_epoch", "sip.Call-ID",
                                                       "sip.from.tag", "ip.src"])
    ok200 = tshark_fields(pcap, "sip.Status-Code == 200 && sip.CSeq.method == INVITE",
                          ["sip.to.tag", "ip.src"])
    if len(inv) != 3 or len({r[1] for r in inv}) != 1 or not ok200:
        fail(f"expected one dialog with INVITE + 2 re-INVITEs and a 200 OK, got {inv}")
    t_inv, callid, from_tag = float(inv[0][0]), inv[0][1], inv[0][2]
    if [r[3] for r in inv[1:]] != [sc.holder_ip] * 2:
        fail(f"re-INVITEs from {[r[3] for r in inv[1:]]}, want {sc.holder_ip}")
    to_tag = next(r[0] for r in ok200 if r[1] == CALLEE_IP)

    sdps = read_sdps(pcap)
    by_side = {ip: [s for s in sdps if s.src_ip == ip] for ip in (CALLER_IP, CALLEE_IP)}
    for ip, lst in by_side.items():
        if len(lst) != 3:
            fail(f"{ip}: {len(lst)} SDP bodies, want 3 (offer/answer, hold, resume)")
        if len({(s.key, s.suite, s.port) for s in lst}) != 1:
            fail(f"{ip}: keys, suite or port change between SDPs: not a baresip 1.0 capture")
        if {s.profile for s in lst} != {sc.profile}:
            fail(f"{ip}: profile {[s.profile for s in lst]}, want {sc.profile}")
    # SRTP is on when both sides announce a key; baresip's optional srtp falls back to plain
    # RTP when the answer has none, and then sends in clear though its offer had a key.
    encrypted = all(lst[0].key is not None for lst in by_side.values())
    if encrypted == sc.callee_plain or (by_side[CALLER_IP][0].key is None):
        fail(f"a=crypto: caller {by_side[CALLER_IP][0].suite}, callee "
             f"{by_side[CALLEE_IP][0].suite}; scenario callee_plain={sc.callee_plain}")
    held = by_side[sc.holder_ip]
    other = by_side[CALLEE_IP if sc.holder_ip == CALLER_IP else CALLER_IP]
    if ([s.direction for s in held] != ["sendrecv", "sendonly", "sendrecv"]
            or [s.direction for s in other] != ["sendrecv", "recvonly", "sendrecv"]):
        fail(f"hold directions: {[s.direction for s in held]} / {[s.direction for s in other]}")

    event_pts = {s.event_pt for s in sdps}
    if len(event_pts) != 1 or None in event_pts:
        fail(f"telephone-event payload types in the SDPs: {event_pts}")
    event_pt = event_pts.pop()
    # The call ends at its BYE: RTP still in flight after it (baresip sends up to one packet
    # per side a few ms later) is not the call's audio, listed apart as after_bye_rtp.
    bye = tshark_fields(pcap, "sip.Method == BYE", ["frame.number"])
    if len(bye) != 1:
        fail(f"expected one BYE, got {len(bye)}")
    bye_frame = int(bye[0][0])
    rtp = tshark_fields(pcap, "rtp", ["frame.number", "frame.time_epoch", "ip.src", "udp.srcport",
                                      "udp.payload"])
    sides = {}
    after_bye = []
    for side, ip, want_dtmf in (("caller", CALLER_IP, sc.caller_dtmf),
                                ("callee", CALLEE_IP, sc.callee_dtmf)):
        sdp = by_side[ip][0]
        pkts = [(float(t), bytes.fromhex(p)) for n, t, src, port, p in rtp
                if src == ip and int(port) == sdp.port and int(n) < bye_frame]
        late = [bytes.fromhex(p) for n, _t, src, _port, p in rtp if src == ip and int(n) > bye_frame]
        if len(pkts) + len(late) != sum(1 for r in rtp if r[2] == ip):
            fail(f"{ip} sends RTP from a port its SDP does not announce")
        d = decode_side(pkts, sdp, sc, event_pt, encrypted)
        if late:
            ssrcs = {struct.unpack_from("!I", p, 8)[0] for p in late}
            after_bye += [{"ip": ip, "ssrc": ssrc, "packets": len(late)} for ssrc in ssrcs]
            if len(ssrcs) != 1 or ssrcs != set(d["ssrcs"]):
                fail(f"{ip}: RTP after the BYE from SSRCs {ssrcs}")
        d["first_ts"] = pkts[0][0]
        if d["audio_packets"] < MIN_AUDIO_PACKETS or d["dtmf"] != want_dtmf:
            fail(f"{side}: {d['audio_packets']} audio packets, DTMF {d['dtmf']!r} "
                 f"(want >= {MIN_AUDIO_PACKETS}, {want_dtmf!r})")
        if len(d["runs"]) != 2:
            fail(f"{side}: {len(d['runs'])} runs of audio, want 2 (before and after the hold)")
        if encrypted:
            d["srtcp_ok"], d["srtcp_bad"] = srtcp_count(pcap, sdp, sdp.port + 1)
        d["endpoint"] = f"{ip}:{sdp.port}"
        sides[side] = d
        if args.sources:
            # G.711 quantises to ~38 dB SNR; G.722's ADPCM needs a few packets to settle.
            snr = snr_db_against_source(d["_pcm"], args.sources / f"{side}{sc.rate_hz}.wav")
            print(f"{side}: decoded audio vs source: {snr:.1f} dB SNR")
            if snr < MIN_SNR_DB:
                fail(f"{side}: the decoded audio is not the source ({snr:.1f} dB SNR)")

    start = dt.datetime.fromtimestamp(int(t_inv), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    decoded = {side: {k: v for k, v in d.items()
                      if k not in ("_pcm", "first_ts", "endpoint", "ssrcs")}
               for side, d in sides.items()}
    rtp_packets = {side: d["audio_packets"] + d["event_packets"] for side, d in sides.items()}
    call = {
        "callid": callid,
        "from_tag": from_tag,
        "to_tag": to_tag,
        "callerphone": "1001",
        "callername": "Alice",
        "destinationphone": "1002",
        "destinationname": "",          # baresip dials a bare URI: To has no display name
        "startdatetimeutc": start,
        "answered": True,
        "end_reason": "bye",
        "final_status": 200,
        "callermacaddress": CALLER_MAC,
        "destinationmacaddress": CALLEE_MAC,
        "callermediaendpoint": sides["caller"]["endpoint"],
        "destinationmediaendpoint": sides["callee"]["endpoint"],
        "partial_start": False,
        "transport": "udp",
        "reinvites": 2,
        # What the keys sent; sides["..."]["dtmf"] (the plaintext's events) was checked equal.
        "callerdtmf": sc.caller_dtmf,
        "destinationdtmf": sc.callee_dtmf,
        "audio": {
            "caller_tone_hz": None,
            "callee_tone_hz": None,
            "caller_rtp_packets": rtp_packets["caller"],
            "callee_rtp_packets": rtp_packets["callee"],
            "caller_ssrcs": sides["caller"]["ssrcs"],
            "callee_ssrcs": sides["callee"]["ssrcs"],
            "first_rtp_offset_ms": {side: int((d["first_ts"] - t_inv) * 1000)
                                    for side, d in sides.items()},
            **({"after_bye_rtp": after_bye} if after_bye else {}),
            "srtp": {"mediaenc": sc.mediaenc, "profile": sc.profile,
                     "offered_suite": by_side[CALLER_IP][0].suite, "negotiated": encrypted},
            "decoded": decoded,
        },
    }
    hold_side = "caller" if sc.holder_ip == CALLER_IP else "callee"
    truth = {
        "capture": pcap.name,
        "description": ("Real SDES-SRTP call between two baresip 1.0.0 UAs in network namespaces "
                        f"(record_baresip.sh): mediaenc={sc.mediaenc} ({sc.profile} + a=crypto "
                        f"{by_side[CALLER_IP][0].suite})" if encrypted else
                        "Real call between two baresip 1.0.0 UAs in network namespaces "
                        f"(record_baresip.sh): the caller offers optional SRTP (mediaenc=srtp, "
                        f"{sc.profile} + a=crypto {by_side[CALLER_IP][0].suite}), the callee has "
                        "no mediaenc and answers without a=crypto: plain RTP both ways")
                       + f", {CODEC_NAMES[sc.codec]}; the {hold_side} holds "
                       "(re-INVITE sendonly) and resumes (re-INVITE sendrecv), keys repeated"
                       + (f"; DTMF caller {sc.caller_dtmf!r}, callee {sc.callee_dtmf!r} "
                          "(RFC 4733, encrypted)" if sc.caller_dtmf or sc.callee_dtmf else "")
                       + "; the caller hangs up.",
        "generator": "pcaps/record_baresip.sh + pcaps/baresip_truth.py",
        "calls": [call],
        "notes": "Call-ID, tags, start time, ports, SSRCs and first_rtp_offset_ms are read from "
                 "the capture; the rest is the scenario's. audio.decoded is made without the "
                 "agent: each side's SRTP decrypted with pylibsrtp using the key of that side's "
                 "own a=crypto (when srtp.negotiated: both sides announce one), the plaintext payloads of its audio packets in sequence order "
                 "decoded by ffmpeg; sha256 is over those int16 samples (little-endian), samples "
                 "their count, runs the [offset, count] stretches (in samples at "
                 "sample_rate_hz from the first packet's RTP timestamp) that the hold splits; "
                 "dtmf the RFC 4733 digits in the plaintext. baresip 1.0 stops sending both "
                 "ways while on hold and keeps its SSRC, sequence numbers and key across the "
                 "re-INVITEs; its telephone-events interleave with audio packets of the same "
                 "SSRC. rtp_packets count audio + event packets sent before the BYE (the call ends at its BYE); "
                 "after_bye_rtp, when present, lists the packets that follow it (their SSRC, "
                 "sequence and timestamp continue the side's stream; they are not in decoded). "
                 "srtcp_ok/srtcp_bad: SRTCP from "
                 "the side's RTCP port (RTP port + 1) that authenticates / does not (baresip "
                 "sends its first RTCP, an APP 'PINGPONG', and its last, the BYE at hangup, in clear).",
    }
    out = pcap.with_name(name + ".truth.json")
    out.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

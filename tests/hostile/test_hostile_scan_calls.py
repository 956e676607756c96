"""A SIP scan at 5,000 messages/s (OPTIONS, REGISTER, INVITE with SDP, never answered) over
100 real concurrent calls: every real call is recorded right, through ``calln-agent replay``.

Each real call (bench/synth.py's SIP and SDP) sends 20 ms PCMU both ways; each direction of
each call has its own tone, so a recording holding another call's or the other side's audio
fails. The caller presses two digits and the callee one (RFC 4733, in place of audio, end
packet sent three times). Checked per call: numbers, answered, end reason, duration to the
millisecond, the digits of each side, the packets of each direction, and the stereo WAV
(caller left, callee right, 8 kHz): every audio packet's 160 samples equal ffmpeg's decode
of its payload, at the sample its RTP timestamp gives, and nothing else is in the channel.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from bench.sip_scan import KINDS, scan_message
from agent.media.g711 import linear_to_ulaw
from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER, T0_S, _sdp, _sip, udp_frame
from tests.conftest import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")]

CALLS = 100
SLOTS = 200                       # 20 ms packet slots per direction: 4 s of media
STAGGER_NS = 10_000_000           # call n starts n x 10 ms after the first
SCAN_RATE_PER_S = 5000
PTIME_NS = 20_000_000
MEDIA_NS = 30_000_000             # media starts 30 ms after the INVITE, 10 ms after the 200
ANSWER_NS = 20_000_000
EVENT_SLOTS = 7                   # 5 packets of a 100 ms event, then its end packet twice more
# (direction, first slot) of each call's key presses, in the order of _digits
PRESSES = ((0, 50), (1, 80), (0, 120))
DTMF_CODES = {str(d): d for d in range(10)} | {"*": 10, "#": 11}


def _digits(n: int) -> tuple[str, str, str]:
    """The caller's first digit, the callee's digit, the caller's second digit."""
    return str(n % 10), "*#"[n % 2], str((n // 10) % 10)


def _tone(n: int, side: int) -> bytes:
    """160 PCMU bytes (a whole number of periods: it repeats seamlessly), unique per call and
    direction; a cosine, so the first sample is not silence."""
    freq_hz = 50 * (4 + (n % 60)) + (0 if side == 0 else 25)
    amplitude = 3000 + 40 * n + 2000 * side
    t = np.arange(160) / 8000
    pcm = (amplitude * np.cos(2 * math.pi * freq_hz * t)).astype(np.int16)
    return bytes(linear_to_ulaw(pcm))


def _event_payloads(digit: str) -> list[tuple[bool, bytes]]:
    """(marker, payload) of the packets of one 100 ms RFC 4733 event."""
    code = DTMF_CODES[digit]
    out = []
    for k in range(EVENT_SLOTS):
        duration = 160 * min(k + 1, 5)
        end = k >= 4
        out.append((k == 0, struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)))
    return out


def _call_frames(n: int):
    start_ns = T0_S * 10**9 + n * STAGGER_NS
    a_ip, b_ip = bytes([10, 1, 0, n]), bytes([10, 2, 0, n])
    a_txt, b_txt = ".".join(map(str, a_ip)), ".".join(map(str, b_ip))
    a_port, b_port = 20000 + 2 * n, 30000 + 2 * n
    caller, callee = f"1{n:06d}", f"2{n:06d}"
    callid, ftag, ttag = f"real-{n}@10.1.0.1", f"f{n}", f"t{n}"
    sig = [(0, a_ip, b_ip, _sip(f"INVITE sip:{callee}@pbx.example SIP/2.0", callid, ftag, "", "1 INVITE",
                                caller, callee, _sdp(a_txt, a_port))),
           (5_000_000, b_ip, a_ip, _sip("SIP/2.0 180 Ringing", callid, ftag, ttag, "1 INVITE", caller, callee)),
           (ANSWER_NS, b_ip, a_ip, _sip("SIP/2.0 200 OK", callid, ftag, ttag, "1 INVITE", caller, callee,
                                        _sdp(b_txt, b_port))),
           (25_000_000, a_ip, b_ip, _sip(f"ACK sip:{callee}@pbx.example SIP/2.0", callid, ftag, ttag, "1 ACK",
                                         caller, callee))]
    frames = [(start_ns + off, udp_frame(ETH_CALLER if src == a_ip else ETH_PBX,
                                         ETH_PBX if src == a_ip else ETH_CALLER, src, dst, 5060, 5060, payload))
              for off, src, dst, payload in sig]
    digits = _digits(n)
    for side, (src, dst, sport, dport, mac_src, mac_dst) in enumerate(
            ((a_ip, b_ip, a_port, b_port, ETH_CALLER, ETH_PBX), (b_ip, a_ip, b_port, a_port, ETH_PBX, ETH_CALLER))):
        events = {slot: digits[i] for i, (d, slot) in enumerate(PRESSES) if d == side}
        ssrc, tone = 0x10000 * (side + 1) + n, _tone(n, side)
        slot = 0
        while slot < SLOTS:
            if slot in events:
                for k, (marker, payload) in enumerate(_event_payloads(events[slot])):
                    at = start_ns + MEDIA_NS + (slot + k) * PTIME_NS + side * 300_000
                    hdr = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 101, slot + k, slot * 160, ssrc)
                    frames.append((at, udp_frame(mac_src, mac_dst, src, dst, sport, dport, hdr + payload)))
                slot += EVENT_SLOTS
                continue
            at = start_ns + MEDIA_NS + slot * PTIME_NS + side * 300_000
            hdr = struct.pack("!BBHII", 0x80, 0, slot, slot * 160, ssrc)
            frames.append((at, udp_frame(mac_src, mac_dst, src, dst, sport, dport, hdr + tone)))
            slot += 1
    bye_ns = MEDIA_NS + SLOTS * PTIME_NS
    frames.append((start_ns + bye_ns, udp_frame(ETH_CALLER, ETH_PBX, a_ip, b_ip, 5060, 5060, _sip(
        f"BYE sip:{callee}@pbx.example SIP/2.0", callid, ftag, ttag, "2 BYE", caller, callee))))
    frames.append((start_ns + bye_ns + 10_000_000, udp_frame(ETH_PBX, ETH_CALLER, b_ip, a_ip, 5060, 5060, _sip(
        "SIP/2.0 200 OK", callid, ftag, ttag, "2 BYE", caller, callee))))
    frames.sort(key=lambda f: f[0])
    return frames


def _scan_frames(count: int):
    rng = random.Random(7)
    start_ns = T0_S * 10**9
    for i in range(count):
        src, msg, sport = scan_message(KINDS[i % len(KINDS)], i, rng)
        yield start_ns + i * 10**9 // SCAN_RATE_PER_S, udp_frame(ETH_PBX, ETH_CALLER, src, bytes([10, 2, 0, 1]),
                                                                  sport, 5060, msg, i)


def _write_capture(path: Path) -> int:
    """The calls and, from the first INVITE to the last 200 to a BYE, the scan; returns how
    many scan messages it holds."""
    calls = [_call_frames(n) for n in range(CALLS)]
    span_ns = calls[-1][-1][0] - T0_S * 10**9
    scans = span_ns * SCAN_RATE_PER_S // 10**9
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for ts_ns, frame in heapq.merge(*calls, _scan_frames(scans), key=lambda f: f[0]):
            fh.write(struct.pack("<IIII", ts_ns // 10**9, (ts_ns % 10**9) // 1000, len(frame), len(frame)) + frame)
    return scans


def _ffmpeg_ulaw(payloads: list[bytes]) -> list[np.ndarray]:
    """Each payload decoded by ffmpeg (one run for all of them)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-f", "mulaw", "-ar", "8000", "-ac", "1", "-i", "-",
                          "-f", "s16le", "-"], input=b"".join(payloads), capture_output=True, check=True,
                         timeout=60).stdout
    pcm = np.frombuffer(out, dtype="<i2")
    return [pcm[i * 160:(i + 1) * 160] for i in range(len(payloads))]


def _audio_slots(n: int, side: int) -> list[int]:
    busy = set()
    for d, slot in PRESSES:
        if d == side:
            busy.update(range(slot, slot + EVENT_SLOTS))
    return [s for s in range(SLOTS) if s not in busy]


def test_scan_at_5000_per_s_leaves_100_concurrent_calls_exact(tmp_path):
    capture = tmp_path / "scan_and_calls.pcap"
    scans = _write_capture(capture)
    assert scans >= SCAN_RATE_PER_S * 5          # over the 5 s of the calls

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_")}
    env.update(CALLN_RECORDING_CHANNELS="2", CALLN_RECORDING_SAMPLE_RATE_HZ="0")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--counters", "--out", str(out),
                           "--format", "wav", str(capture)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "calls.started=" in line)     # --counters
    counters = dict(item.split("=") for item in line.split(", "))
    sip_per_call = 4 + 2                          # INVITE, 180, 200, ACK; BYE, 200
    assert int(counters["sip.messages"]) == scans + CALLS * sip_per_call
    scan_invites = len(range(2, scans, len(KINDS)))
    assert int(counters["calls.started"]) == CALLS + scan_invites

    records = {}
    for path in out.glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["callid"].startswith("real-"):
            records[rec["callid"]] = rec
    assert len(records) == CALLS

    tones = _ffmpeg_ulaw([_tone(n, d) for n in range(CALLS) for d in (0, 1)])
    for n in range(CALLS):
        rec = records[f"real-{n}@10.1.0.1"]
        where = f"call {n}"
        assert (rec["callerphone"], rec["destinationphone"]) == (f"1{n:06d}", f"2{n:06d}"), where
        assert rec["answered"] and rec["end_reason"] == "bye", where
        assert rec["duration_ms"] == (MEDIA_NS + SLOTS * PTIME_NS - ANSWER_NS) // 1_000_000, where
        first, callee_digit, second = _digits(n)
        assert (rec["callerdtmf"], rec["destinationdtmf"]) == (first + second, callee_digit), where
        packets = {0: 0, 1: 0}
        for stream in rec["streams"]:
            packets[stream["direction"]] += stream["packets"]
        assert packets == {0: SLOTS, 1: SLOTS}, where

        with wave.open(str(out / rec["recording"]["file"])) as w:
            assert (w.getframerate(), w.getnchannels()) == (8000, 2), where
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        for side in (0, 1):
            channel = pcm[:, side]
            expected = tones[2 * n + side]
            begin = int(np.flatnonzero(channel)[0])      # the first packet's first sample
            rebuilt = np.zeros_like(channel)
            for slot in _audio_slots(n, side):
                rebuilt[begin + slot * 160:begin + (slot + 1) * 160] = expected
            assert np.array_equal(channel, rebuilt), f"{where} direction {side}"

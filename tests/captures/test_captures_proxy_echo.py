"""A call through a SIP proxy and a media relay (pcaps/sipp_proxy_rtpengine.pcap).

The capture (record_proxy.sh: SIPp -> Kamailio + rtpengine -> SIPp, tcpdump on the bridge)
holds every RTP packet twice per direction: once on the phone A <-> relay hop and once on
the relay <-> phone B hop. The issue's requirement: "one upload, each direction taken from
one hop, no echo in the mix". Checked here by
- the call record: one call, upload true, one audio stream per direction whose packets are
  counted once (the relay hop's copies are recognised as relay copies and dropped);
- the recording: rendered from the whole capture it equals, sample for sample (within a
  small tolerance), the recording rendered from the capture filtered to phone A's hop
  (``tcpdump 'host 10.78.0.1'``), in the mono mix and in each stereo channel. An echo (the
  second hop mixed in again at the hop delay) or a doubled direction would differ.
- a relay rewriting SSRCs is emulated on the real capture (relay hop given new SSRCs, 40 ms
  later): each direction is still taken from one hop (CallMedia drops a second source's
  packets that repeat the active hop's payloads), counted once, recording unchanged. Note
  the real capture's hop delay is ~0.1 ms (< 1 sample at 8 kHz), so only the stream checks,
  not the audio, could tell the hops apart there.
"""

from __future__ import annotations

import glob
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from _captures_testlib import PCAPS_DIR, REPO_ROOT, inspect_cached, load_truth, run_inspect

CAPTURE = PCAPS_DIR / "sipp_proxy_rtpengine.pcap"
TRUTH = load_truth(PCAPS_DIR / "sipp_proxy_rtpengine.truth.json")
PHONE_A, RELAY, PHONE_B = "10.78.0.1", "10.78.0.2", "10.78.0.3"
PCMA_PT, EVENT_PT = 8, 101
AUDIO_PACKETS = 100           # record_proxy.sh PLAYED_PACKETS
EVENT_PACKETS = 8             # distinct (SSRC, seq) RFC 2833 packets
REPLAY_TIMEOUT_S = 120


# ---------------------------------------------------------------- pcap helpers (Ethernet/IPv4)
def _frames(path: Path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(global header, [(record header, frame)]) of a classic little-endian pcap."""
    data = path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "expected a little-endian microsecond pcap"
    out, off = [], 24
    while off < len(data):
        hdr = data[off:off + 16]
        incl = struct.unpack("<I", hdr[8:12])[0]
        out.append((hdr, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return data[:24], out


def _udp(frame: bytes) -> tuple[str, int, str, int, bytes] | None:
    if frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    u = 14 + ihl
    sport, dport = struct.unpack(">HH", frame[u:u + 4])
    ip = lambda b: ".".join(map(str, b))  # noqa: E731
    return ip(frame[26:30]), sport, ip(frame[30:34]), dport, frame[u + 8:]


def _write(path: Path, head: bytes, frames: list[tuple[bytes, bytes]]) -> Path:
    path.write_bytes(head + b"".join(h + f for h, f in frames))
    return path


def _rtp_legs() -> dict[tuple[str, str], set[tuple[int, int, int]]]:
    """(src ip, dst ip) -> {(pt, ssrc, seq)} of the RTP (UDP, version 2, not SIP ports)."""
    legs: dict[tuple[str, str], set[tuple[int, int, int]]] = {}
    for _, frame in _frames(CAPTURE)[1]:
        u = _udp(frame)
        if u is None or 5060 in (u[1], u[3]) or 5061 in (u[1], u[3]) or u[4][0] >> 6 != 2:
            continue
        pt, seq, ssrc = u[4][1] & 0x7F, *struct.unpack(">H4xI", u[4][2:12])
        legs.setdefault((u[0], u[2]), set()).add((pt, ssrc, seq))
    return legs


# ---------------------------------------------------------------- the capture itself
def test_capture_holds_both_hops_with_the_same_rtp() -> None:
    """What rtpengine did on the wire: plain relaying, SSRC and seq kept across hops."""
    legs = _rtp_legs()
    assert set(legs) == {(PHONE_A, RELAY), (RELAY, PHONE_B), (PHONE_B, RELAY), (RELAY, PHONE_A)}
    for leg in legs.values():
        assert sum(pt == PCMA_PT for pt, _, _ in leg) == AUDIO_PACKETS
        assert sum(pt == EVENT_PT for pt, _, _ in leg) == EVENT_PACKETS
    assert legs[(PHONE_A, RELAY)] == legs[(RELAY, PHONE_B)]      # caller -> callee, both hops
    assert legs[(PHONE_B, RELAY)] == legs[(RELAY, PHONE_A)]      # callee -> caller, both hops
    sip = [_udp(f)[4] for _, f in _frames(CAPTURE)[1]
           if _udp(f) and 5060 in (_udp(f)[1], _udp(f)[3])]
    invites = [m for m in sip if m.startswith(b"INVITE ")]
    assert len(invites) == 2                                     # one per hop
    callid = f"Call-ID: {TRUTH['calls'][0]['callid']}\r\n".encode()
    assert all(callid in m for m in invites)                     # a proxy, not a B2BUA
    # rtpengine rewrote the offer per hop: phone A's address on hop 1, the relay's on hop 2.
    assert b"c=IN IP4 10.78.0.1\r\n" in invites[0]
    assert b"c=IN IP4 10.78.0.2\r\n" in invites[1]


# ---------------------------------------------------------------- the call record
def test_one_upload_each_direction_counted_once() -> None:
    records = inspect_cached(str(CAPTURE))
    assert len(records) == 1
    rec = records[0]
    assert rec["upload"] is True
    assert rec["callid"] == TRUTH["calls"][0]["callid"]
    audio = sorted((s["direction"], s["packets"], s["src"]) for s in rec["streams"]
                   if str(PCMA_PT) in s["payload_types"])
    # One audio stream per direction, taken from the hop next to its sender.
    assert audio == [(0, AUDIO_PACKETS, f"{PHONE_A}:6000"), (1, AUDIO_PACKETS, f"{PHONE_B}:6000")]
    assert rec["callermediaendpoint"] == f"{PHONE_A}:6000"
    assert rec["destinationmediaendpoint"] == f"{PHONE_B}:6000"


# ---------------------------------------------------------------- the recording
def _replay_wav(capture: Path, out_dir: Path, channels: int) -> np.ndarray:
    env = dict(os.environ, CALLN_RECORDING_CHANNELS=str(channels),
               CALLN_RECORDING_SAMPLE_RATE_HZ="8000")
    env.pop("CALLN_CONFIG", None)
    subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(out_dir),
                    "--format", "wav", str(capture)], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True, timeout=REPLAY_TIMEOUT_S)
    wavs = glob.glob(str(out_dir / "*.wav"))
    assert len(wavs) == 1, wavs
    with wave.open(wavs[0]) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (channels, 8000, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return pcm.reshape(-1, channels).astype(np.float64)


def _one_hop_capture(tmp_path: Path) -> Path:
    """The capture filtered like ``tcpdump -r ... 'host 10.78.0.1'``: phone A's hop only."""
    head, frames = _frames(CAPTURE)
    kept = [(h, f) for h, f in frames if _udp(f) and PHONE_A in (_udp(f)[0], _udp(f)[2])]
    assert 0 < len(kept) < len(frames)
    return _write(tmp_path / "hop_a.pcap", head, kept)


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
def test_recording_equals_one_hop_recording(tmp_path: Path, channels: int) -> None:
    whole = _replay_wav(CAPTURE, tmp_path / "whole", channels)
    one_hop = _replay_wav(_one_hop_capture(tmp_path), tmp_path / "one_hop", channels)
    assert abs(len(whole) - len(one_hop)) <= 8           # 1 ms at 8 kHz
    n = min(len(whole), len(one_hop))
    assert n >= 8000 * 2.9                               # ~3 s of g711a.pcap speech
    for ch in range(channels):
        ref = one_hop[:n, ch]
        ref_rms = float(np.sqrt(np.mean(ref ** 2)))
        assert ref_rms > 300                             # real speech, not silence
        err_rms = float(np.sqrt(np.mean((whole[:n, ch] - ref) ** 2)))
        # An echo from the second hop would add a delayed copy of the whole signal
        # (error ~ the signal itself); the only allowed difference is rounding.
        assert err_rms <= 0.01 * ref_rms, (ch, err_rms, ref_rms)


# ---------------------------------------------------------------- relay rewriting SSRCs
RELAY_DELAY_US = 40_000


def _ssrc_rewritten_capture(tmp_path: Path) -> Path:
    """The real capture with the relay's outgoing RTP given new SSRCs and sent 40 ms later,
    as rtpengine does when it transcodes (seen while making record_proxy.sh: a PCMA offer
    answered with PCMU made it transcode, with new SSRCs and sequence numbers on the
    second hop)."""
    head, frames = _frames(CAPTURE)
    out = []
    for h, f in frames:
        u = _udp(f)
        if u and u[0] == RELAY and u[1] != 5060 and u[4][0] >> 6 == 2:
            rtp_off = len(f) - len(u[4])
            f = bytearray(f)
            f[rtp_off - 2:rtp_off] = b"\0\0"               # UDP checksum: none
            f[rtp_off + 8:rtp_off + 12] = bytes(b ^ 0x55 for b in f[rtp_off + 8:rtp_off + 12])
            f = bytes(f)
            sec, usec = struct.unpack("<II", h[:8])
            usec += RELAY_DELAY_US
            h = struct.pack("<II", sec + usec // 1_000_000, usec % 1_000_000) + h[8:]
        out.append((h, f))
    out.sort(key=lambda hf: struct.unpack("<II", hf[0][:8]))
    return _write(tmp_path / "ssrc_rewritten.pcap", head, out)


def test_relay_rewriting_ssrcs_is_counted_once(tmp_path: Path) -> None:
    records = run_inspect([_ssrc_rewritten_capture(tmp_path)])
    assert len(records) == 1 and records[0]["upload"] is True
    audio = sorted((s["direction"], s["packets"]) for s in records[0]["streams"]
                   if str(PCMA_PT) in s["payload_types"])
    assert audio == [(0, AUDIO_PACKETS), (1, AUDIO_PACKETS)]


def test_relay_rewriting_ssrcs_recording_equals_one_hop(tmp_path: Path) -> None:
    # Today the two hops of each direction are written over each other: the recording is
    # mostly the relay's copy, 40 ms late (error ~1.4x the signal) and 40 ms longer.
    whole = _replay_wav(_ssrc_rewritten_capture(tmp_path), tmp_path / "whole", 1)
    one_hop = _replay_wav(_one_hop_capture(tmp_path), tmp_path / "one_hop", 1)
    assert len(whole) == len(one_hop)
    err_rms = float(np.sqrt(np.mean((whole[:, 0] - one_hop[:, 0]) ** 2)))
    assert err_rms <= 0.01 * float(np.sqrt(np.mean(one_hop[:, 0] ** 2)))

"""Recording fidelity at the native rate (issue 16).

* A G.711 call recorded as WAV with the default settings is 8 kHz, and each direction's
  audio equals an independent decode of its RTP payloads (the payloads read from the pcap by
  a few lines of struct here, decoded by the ffmpeg command line) sample for sample, at
  exactly the sample where its first packet arrived: stereo channel by channel, mono
  against the same mix (int16 sum, saturated) of the independent decodes.
* G.722 stays wideband (16 kHz WAV by default); MP3 stays 16 kHz by default.
* Loss, duplicates, reordering, a sequence wrap and an SSRC change: every packet's samples
  sit at the exact position its RTP timestamp gives, lost packets are silence.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import wave
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _replay(capture: Path, out: Path, fmt: str = "wav", **env_settings: str) -> list[tuple[Path, dict]]:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_RECORDING_")}
    env.update({f"CALLN_RECORDING_{k.upper()}": v for k, v in env_settings.items()})
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(out), "--format", fmt,
                           "--workers", "1", str(capture)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = []
    for path in sorted(out.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("recording"):
            records.append((out / rec["recording"]["file"], rec))
    return records


def _wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
        return w.getframerate(), pcm


def _rtp_by_source(capture: Path) -> dict[str, list[tuple[int, int, int, bytes]]]:
    """Audio RTP (PCMU/PCMA) of an Ethernet/IPv4/UDP pcap, per "ip:port" source:
    (arrival ns, sequence number, payload type, payload), in arrival order."""
    data = capture.read_bytes()
    magic, _maj, _min, _tz, _sig, _snap, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1
    out: dict[str, list] = defaultdict(list)
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        src = ".".join(map(str, frame[26:30])) + f":{struct.unpack_from('!H', frame, udp)[0]}"
        rtp = frame[udp + 8:]
        if len(rtp) > 12 and rtp[0] == 0x80 and rtp[1] & 0x7F in (0, 8):
            out[src].append((sec * 10**9 + usec * 1000, struct.unpack_from("!H", rtp, 2)[0], rtp[1] & 0x7F, rtp[12:]))
    return out


def _ffmpeg_g711(payloads: bytes, pt: int) -> np.ndarray:
    proc = subprocess.run(["ffmpeg", "-v", "error", "-f", "mulaw" if pt == 0 else "alaw", "-ar", "8000", "-ac", "1",
                           "-i", "-", "-f", "s16le", "-"], input=payloads, capture_output=True, check=True, timeout=60)
    return np.frombuffer(proc.stdout, dtype="<i2")


def _independent(capture: Path, rec: dict) -> list[tuple[int, np.ndarray]]:
    """Per direction (caller, callee): (first arrival ns, ffmpeg decode of its payloads in
    sequence order)."""
    by_src = _rtp_by_source(capture)
    out = []
    for endpoint in (rec["callermediaendpoint"], rec["destinationmediaendpoint"]):
        packets = by_src[endpoint]
        assert packets, endpoint
        first = packets[0][1]
        ordered = sorted(packets, key=lambda p: (p[1] - first) & 0xFFFF)     # sequence order across a wrap
        assert len({p[2] for p in ordered}) == 1
        out.append((packets[0][0], _ffmpeg_g711(b"".join(p[3] for p in ordered), ordered[0][2])))
    return out


def _placed(decodes: list[tuple[int, np.ndarray]], rate: int) -> list[tuple[int, np.ndarray]]:
    """Sample offsets of each direction in the recording: the render places a stream at its
    first packet's arrival (ns from 2 s before the call's first packet), and the recording
    starts at the earliest direction."""
    base = min(t for t, _ in decodes) - 2 * 10**9
    starts = [(t - base) * rate // 10**9 for t, _ in decodes]
    return [(s - min(starts), pcm) for s, (_, pcm) in zip(starts, decodes)]


@pytest.mark.parametrize("name", ["basic_udp.pcap", "multi_call.pcap"])
def test_g711_stereo_channels_equal_ffmpeg_decode_sample_for_sample(name, tmp_path):
    capture = REPO / "pcaps" / name
    recordings = _replay(capture, tmp_path, channels="2")
    assert recordings
    for path, rec in recordings:
        rate, pcm = _wav(path)
        assert rate == 8000 and rec["recording"]["sample_rate_hz"] == 8000 and pcm.shape[1] == 2
        decodes = _independent(capture, rec)
        arrivals = [t for t, _ in decodes]
        for channel, (offset, ref) in enumerate(_placed(decodes, rate)):
            got = pcm[offset:offset + ref.size, channel]
            assert np.array_equal(got, ref), f"{name} channel {channel}"
            assert not pcm[:offset, channel].any() and not pcm[offset + ref.size:, channel].any()
            # Both directions sit where they arrived, relative to each other: within 20 ms.
            assert abs(offset / rate - (arrivals[channel] - min(arrivals)) / 1e9) <= 0.020


def test_g711_mono_equals_the_mix_of_ffmpeg_decodes(tmp_path):
    capture = REPO / "pcaps" / "basic_udp.pcap"
    (path, rec), = _replay(capture, tmp_path, channels="1")
    rate, pcm = _wav(path)
    assert rate == 8000 and pcm.shape[1] == 1
    placed = _placed(_independent(capture, rec), rate)
    mix = np.zeros(max(o + p.size for o, p in placed), dtype=np.int32)
    for offset, ref in placed:
        mix[offset:offset + ref.size] += ref
    expected = np.clip(mix, -32768, 32767).astype(np.int16)
    assert np.array_equal(pcm[:, 0], expected)


def test_default_rates_native_wav_wideband_g722_mp3_16k(tmp_path, public_dir):
    (wav8, rec8), = _replay(REPO / "pcaps" / "basic_udp.pcap", tmp_path / "a")
    assert _wav(wav8)[0] == 8000 and rec8["recording"]["sample_rate_hz"] == 8000
    g722 = _replay(public_dir / "sip-rtp-g722.pcap", tmp_path / "b")
    assert g722 and all(_wav(p)[0] == 16000 and r["recording"]["sample_rate_hz"] == 16000 for p, r in g722)
    (mp3, rec_mp3), = _replay(REPO / "pcaps" / "basic_udp.pcap", tmp_path / "c", fmt="mp3")
    assert rec_mp3["recording"]["sample_rate_hz"] == 16000
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate", "-of", "csv=p=0",
                            str(mp3)], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "16000"


# ------------------------------------------------------- exact positions under impairment

T0 = 1_700_000_000 * 10**9
MS = 1_000_000


@pytest.mark.parametrize("ssrc_change", [False, True])
def test_loss_duplicates_reordering_and_ssrc_change_exact_positions(tmp_path, ssrc_change):
    """Caller: 200 packets of 20 ms PCMU, packet k all one code, arriving at T0 + 20k ms;
    sequence numbers wrap; packets 10 and 40 lost, 20 sent twice, 30 arriving after 31 and
    77 after 79; with ``ssrc_change`` packets 100.. come from a new SSRC with new sequence
    numbers and timestamps. Callee: 200 clean packets 7 ms later. Every packet must land at
    sample 160k (callee: 56 + 160k) at 8 kHz, lost ones as silence."""
    from agent.media.g711 import ULAW_TO_LINEAR
    from agent.media.medialog import MediaLogWriter
    from agent.media.render import render_recording
    from agent.media.stream import MediaPlan, sequence_capture
    from agent.media.timeline import CodecInfo, StreamSpec

    def code(side: int, k: int) -> int:
        return 0x11 + (k % 100) if side == 0 else 0x91 + (k % 100)

    packets = []
    for side in (0, 1):
        for k in range(200):
            second = ssrc_change and side == 0 and k >= 100
            ssrc = (0x2222 if second else 0x1111) if side == 0 else 0x3333
            seq = ((40_000 + k) if second else (65_530 + k)) & 0xFFFF
            ts = ((7_777_000 + 160 * k) if second else (1_000 + 160 * k)) & 0xFFFFFFFF
            at = T0 + side * 7 * MS + 20 * MS * k
            if side == 0:
                if k in (10, 40):
                    continue
                if k in (30, 77):
                    at += 45 * MS
            data = struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc) + bytes([code(side, k)]) * 160
            packets.append((at, side, data))
            if side == 0 and k == 20:
                packets.append((at + 5 * MS, side, data))
    packets.sort(key=lambda p: p[0])
    raw = tmp_path / "raw"
    writer = MediaLogWriter(raw)
    labels = []
    for n, (at, side, data) in enumerate(packets):
        if not any(lab[1] == side for lab in labels):
            labels.append((n, side, f"10.0.0.{side + 1}:4000", f"10.0.0.{2 - side}:4000"))
        writer.append(side, 0, 0, at, 0, False, data)
    writer.close()
    codecs = {0: CodecInfo("PCMU", 8000)}
    media = sequence_capture(raw, tmp_path / "ordered", MediaPlan(codecs={0: codecs, 1: codecs}, labels=labels))
    stats = {(s.side, s.ssrc): s.stats for s in media.streams}
    caller = [st for (d, _), st in stats.items() if d == 0]
    assert len(caller) == (2 if ssrc_change else 1)
    assert sum(st.lost for st in caller) == 2 and sum(st.duplicated for st in caller) == 1
    assert sum(st.reordered for st in caller) == 2
    specs = [StreamSpec(s.index, s.side, codecs) for s in media.streams]
    result = render_recording(tmp_path / "ordered", specs, tmp_path / "out.wav", fmt="wav", channels=2,
                              sample_rate_hz=0, start_ns=T0)
    assert result.sample_rate_hz == 8000
    _rate, pcm = _wav(tmp_path / "out.wav")
    for side, first in ((0, 0), (1, 56)):
        for k in range(200):
            got = pcm[first + 160 * k:first + 160 * (k + 1), side]
            if side == 0 and k in (10, 40):
                assert not got.any(), (side, k)
            else:
                assert np.array_equal(got, np.full(160, ULAW_TO_LINEAR[code(side, k)])), (side, k)
        assert not pcm[:first, side].any() and not pcm[first + 160 * 200:, side].any()


def test_sample_rate_setting(tmp_path):
    """Unset: native for WAV, 16 kHz for MP3; a fixed rate or 0 (native) applies to both;
    anything below -1 is refused."""
    from agent.config import load_config
    from agent.errors import ConfigError

    rec = load_config(None, env={}).recording
    assert (rec.sample_rate_hz, rec.output_rate_hz("wav"), rec.output_rate_hz("mp3")) == (-1, 0, 16000)
    conf = tmp_path / "agent.toml"
    for value, wav, mp3 in ((8000, 8000, 8000), (0, 0, 0), (-1, 0, 16000)):
        conf.write_text(f"[recording]\nsample_rate_hz = {value}\n")
        rec = load_config(conf, env={}).recording
        assert (rec.output_rate_hz("wav"), rec.output_rate_hz("mp3")) == (wav, mp3)
    conf.write_text("[recording]\nsample_rate_hz = -8000\n")
    with pytest.raises(ConfigError, match="sample_rate_hz"):
        load_config(conf, env={})

"""Public captures with a decodable codec: `replay --out` (native rate) makes a recording whose
length matches the RTP streams in the truth file, at the codec's own rate (no downsampling of
wideband audio), with real audio in it. Sample-exact decoder checks against ffmpeg live in
tests/media/test_media_codecs_pyav.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

# capture -> expected recording rate (Hz) when the output rate follows the call's codecs
CASES = {
    "sip-rtp-g722.pcap": 16000,
    "sip-rtp-opus.pcap": 48000,
    "sip-rtp-g729a.pcap": 8000,
    "sip-rtp-gsm.pcap": 8000,
    "sip-rtp-ilbc.pcap": 8000,
    "sip-rtp-g726.pcap": 8000,
    "sip-rtp-dvi4.pcap": 16000,      # the second call is DVI4/16000; each call checked on its own
    "sip-rtp-g711.pcap": 8000,
    "magicjack_short_call.pcap": 8000,
    "rtp-protocol.pcap": 8000,
    "sip-over-tcp.pcap": 8000,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_recording_length_and_rate(name: str, public_dir: Path, tmp_path: Path):
    truth = json.loads((public_dir / "truth" / f"{name}.json").read_text())
    env = dict(os.environ, CALLN_RECORDING_SAMPLE_RATE_HZ="0", CALLN_RECORDING_CHANNELS="1")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(tmp_path),
                           "--format", "wav", "--workers", "1", str(public_dir / name)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    checked = 0
    for rec in records:
        streams = [s for s in truth["rtp_streams"] if s.get("call_id") == rec["callid"]]
        if not streams:
            continue
        assert rec["recording"], f"{rec['callid']}: {rec.get('no_audio_reason')}"
        start = min(_ts(s["start_utc"]) for s in streams)
        end = max(_ts(s["end_utc"]) for s in streams)
        ptime_s = 0.03 if "ilbc" in name else 0.02
        expected_ms = (end - start + ptime_s) * 1000
        assert abs(rec["recording"]["duration_ms"] - expected_ms) <= max(100, 0.02 * expected_ms), (
            rec["callid"], rec["recording"]["duration_ms"], expected_ms)
        with wave.open(str(tmp_path / rec["recording"]["file"])) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        codecs = " ".join(rec.get("codecs_answered") or rec.get("codecs_offered") or [])
        if "DVI4/16000" in codecs and "DVI4/8000" not in codecs:
            assert rate == 16000
        elif name != "sip-rtp-dvi4.pcap":
            assert rate == CASES[name], (rate, codecs)
        assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 100, "recording is (nearly) silent"
        checked += 1
    assert checked >= 1


def _ts(iso: str) -> float:
    import datetime as dt
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

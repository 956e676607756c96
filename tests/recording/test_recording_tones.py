"""Issue 3 proof through the whole CLI path: `replay --out` on every project capture with a
known tone per direction gives a stereo WAV whose left channel is the caller's tone and right
channel the callee's, each starting at the right offset, with the right length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PCAPS, REPO

TONE_TRUTHS = []
for _truth_path in sorted(PCAPS.glob("*.truth.json")):
    _truth = json.loads(_truth_path.read_text())
    if any((c.get("audio") or {}).get("caller_tone_hz") for c in _truth["calls"]):
        TONE_TRUTHS.append(_truth_path)

RATE_HZ = 8000
# Scenarios where media pauses (hold) or starts one-sided (early media): length is not simply
# the packet count times the packet time.
GAPPY = {"reinvite_hold", "early_media_183"}


def _replay(capture: Path, out: Path) -> list[dict]:
    env = dict(os.environ, CALLN_RECORDING_CHANNELS="2", CALLN_RECORDING_SAMPLE_RATE_HZ=str(RATE_HZ))
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(out),
                           "--format", "wav", "--workers", "1", str(capture)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * RATE_HZ / len(x)


def _onset_ms(x: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(x) > 1000)
    return float(loud[0]) * 1000 / RATE_HZ if len(loud) else float("nan")


@pytest.mark.parametrize("truth_path", TONE_TRUTHS, ids=lambda p: p.name.split(".")[0])
def test_stereo_recording_has_each_party_on_its_channel(truth_path: Path, tmp_path: Path):
    truth = json.loads(truth_path.read_text())
    records = {r["callid"]: r for r in _replay(PCAPS / truth["capture"], tmp_path)}
    for call in truth["calls"]:
        audio = call["audio"]
        rec = records[call["callid"]]
        assert rec["recording"], f"{call['callid']}: no recording ({rec.get('no_audio_reason')})"
        with wave.open(str(tmp_path / rec["recording"]["file"])) as w:
            assert (w.getnchannels(), w.getframerate()) == (2, RATE_HZ)
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        left, right = pcm[:, 0], pcm[:, 1]
        assert abs(_dominant_hz(left) - audio["caller_tone_hz"]) < 10
        assert abs(_dominant_hz(right) - audio["callee_tone_hz"]) < 10
        # The recording starts at the call's first audio; each side starts where its RTP did.
        first = min(audio["first_rtp_offset_ms"].values())
        assert abs(_onset_ms(left) - (audio["first_rtp_offset_ms"]["caller"] - first)) <= 20
        assert abs(_onset_ms(right) - (audio["first_rtp_offset_ms"]["callee"] - first)) <= 20
        if truth_path.name.split(".")[0] not in GAPPY:
            packets = max(audio["caller_rtp_packets"], audio["callee_rtp_packets"])
            expected_ms = packets * 20
            assert abs(rec["recording"]["duration_ms"] - expected_ms) <= 60, (
                rec["recording"]["duration_ms"], expected_ms)

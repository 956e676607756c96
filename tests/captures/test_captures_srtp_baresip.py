"""Real SDES-SRTP calls (pcaps/baresip_*.pcap, record_baresip.sh) replayed through the agent.

Four calls between two baresip 1.0 UAs: mediaenc=srtp (optional, RTP/AVP + a=crypto) PCMU,
srtp-mand (RTP/SAVP) PCMA with encrypted RFC 4733 DTMF, srtp-mand G.722, and optional SRTP
offered but declined by a callee without mediaenc (plain PCMU both ways, the offer's key
unused); each with a hold and a resume re-INVITE (baresip repeats its keys in them). Their
truth (baresip_truth.py) was made without the agent: pylibsrtp decrypted every packet, ffmpeg
decoded the plaintext, and per direction the truth keeps the sample count, a SHA-256 of the
samples and the runs the hold splits them into.

``calln-agent replay --out`` (stereo WAV) must give, per capture:
- the exact call fields of the truth (numbers, names, MACs, endpoints, start time, re-INVITEs,
  packets and SSRCs per direction, the DTMF digits sent inside the SRTP);
- every packet of the call decrypted (none failing authentication) when SRTP was negotiated,
  every packet taken as plain RTP when the answer declined the offer's key;
- per direction, its channel equal to the truth's decode sample for sample: the runs placed at
  their RTP-timestamp distance from each other (the hold gap), the first run within 2 ms of
  where the first packet arrived relative to the other direction, and silence everywhere else
  (no noise from undecrypted packets, no DTMF tones);
- no SDES key from the capture anywhere in what it writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from _captures_testlib import PCAPS_DIR, REPO_ROOT, compare_call, load_truth

CAPTURES = ["baresip_srtp_pcmu", "baresip_srtpmand_pcma", "baresip_srtpmand_g722",
            "baresip_srtp_declined"]
START_TOLERANCE_MS = 2       # first_rtp_offset_ms is truncated to ms; render rounds to a sample


def _truth_call(name: str) -> dict:
    (call,) = load_truth(PCAPS_DIR / f"{name}.truth.json")["calls"]
    return call


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """name -> (out dir, record, sample rate, stereo int16 samples); one replay per capture."""
    cache: dict[str, tuple[Path, dict, int, np.ndarray]] = {}

    def run(name: str):
        if name not in cache:
            out = tmp_path_factory.mktemp(name) / "out"
            env = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_")}
            env["CALLN_RECORDING_CHANNELS"] = "2"
            proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out",
                                   str(out), "--format", "wav", "--workers", "1",
                                   str(PCAPS_DIR / f"{name}.pcap")],
                                  capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                                  timeout=300)
            assert proc.returncode == 0, proc.stderr
            (record_path,) = out.glob("*.json")
            record = json.loads(record_path.read_text())
            rate, pcm = 0, np.zeros((0, 2), dtype=np.int16)
            if record.get("recording"):
                with wave.open(str(out / record["recording"]["file"])) as w:
                    rate = w.getframerate()
                    pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(
                        -1, w.getnchannels())
            cache[name] = (out, record, rate, pcm)
        return cache[name]

    return run


@pytest.mark.parametrize("name", CAPTURES)
def test_call_fields_equal_truth(name, replayed):
    _out, record, _rate, _pcm = replayed(name)
    diffs = compare_call(record, _truth_call(name))
    assert not diffs, "\n".join(diffs)


@pytest.mark.parametrize("name", CAPTURES)
def test_every_packet_decrypted_or_plain_as_negotiated(name, replayed):
    """Every packet of the call authenticates and is decrypted when both sides announced a
    key; when the answer declined the offer's key (srtp_declined) every packet is taken as
    plain RTP and none is tried as SRTP."""
    _out, record, _rate, _pcm = replayed(name)
    call = _truth_call(name)
    negotiated = call["audio"]["srtp"]["negotiated"]
    srtp = record["srtp"]
    for side in ("caller", "callee"):
        packets = call["audio"][f"{side}_rtp_packets"]
        assert (srtp["decrypted"][side], srtp["plain"][side]) == (
            (packets, 0) if negotiated else (0, packets)), side
        assert srtp["auth_failed"][side] == srtp["other_key"][side] == srtp["no_keys"][side] == 0
    assert (srtp["no_audio"], srtp["key_changes"]) == ("", 0)   # baresip repeats its keys
    # "encrypted" says what was negotiated, not what was offered: the declined offer is plain.
    assert record["encrypted"] is negotiated


def _locate(channel: np.ndarray, truth: dict, expected_start: int, window: int) -> int | None:
    """The start offset near ``expected_start`` where the channel holds the truth's runs
    (samples equal, by SHA-256) or None."""
    for start in sorted(range(max(0, expected_start - window), expected_start + window + 1),
                        key=lambda s: abs(s - expected_start)):
        parts = [channel[start + at:start + at + n] for at, n in truth["runs"]]
        if sum(p.size for p in parts) != truth["samples"]:
            continue
        if hashlib.sha256(np.concatenate(parts).astype("<i2").tobytes()).hexdigest() == truth["sha256"]:
            return start
    return None


@pytest.mark.parametrize("name", CAPTURES)
def test_decoded_audio_equals_truth_sample_for_sample(name, replayed):
    _out, record, rate, pcm = replayed(name)
    call = _truth_call(name)
    decoded = call["audio"]["decoded"]
    assert record.get("recording"), record.get("no_audio_reason")
    assert rate == decoded["caller"]["sample_rate_hz"] and pcm.shape[1] == 2
    first_ms = call["audio"]["first_rtp_offset_ms"]
    for channel, side in enumerate(("caller", "callee")):
        truth = decoded[side]
        expected = (first_ms[side] - min(first_ms.values())) * rate // 1000
        start = _locate(pcm[:, channel], truth, expected, START_TOLERANCE_MS * rate // 1000)
        assert start is not None, f"{side}: channel {channel} differs from the truth's decode"
        # Nothing outside the runs: the hold gap and the edges are silence.
        outside = np.ones(pcm.shape[0], dtype=bool)
        for at, n in truth["runs"]:
            outside[start + at:start + at + n] = False
        assert not pcm[outside, channel].any(), f"{side}: sound outside its packets"


@pytest.mark.parametrize("name", CAPTURES)
def test_keys_are_not_written(name, replayed):
    out, _record, _rate, _pcm = replayed(name)
    inline = set(re.findall(rb"inline:([A-Za-z0-9+/]{40})", (PCAPS_DIR / f"{name}.pcap").read_bytes()))
    # One per side that has SRTP on, repeated in the re-INVITEs.
    assert len(inline) == (2 if _truth_call(name)["audio"]["srtp"]["negotiated"] else 1)
    # The base64 form, the raw master key + salt, and the master key alone (raw and hex).
    secrets = set(inline)
    for k in inline:
        raw = base64.b64decode(k)
        secrets |= {raw, raw[:16], raw[:16].hex().encode()}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path.name

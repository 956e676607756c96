"""SDES-SRTP calls through ``replay --out`` (issue 19): the decrypted audio equals the
plaintext that was encrypted, sample for sample; tampered packets are counted, never
recorded; calls without usable keys are named by their no-audio reason; and the keys
appear in no log line, record or recording file.

The captures and their truth (``srtp`` block: plaintext tone and packet count per side,
packets that must fail authentication, no-audio reason) come from pcaps/make_srtp_pcaps.py.
The reference decode is ffmpeg's of the plaintext payloads (make_pcaps.tone_payload), placed
where the stream's first packet arrived, as in test_recording_fidelity.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.recording.test_recording_fidelity import _ffmpeg_g711, _placed, _rtp_by_source, _wav

sys.path.insert(0, str(REPO / "pcaps"))
from make_pcaps import tone_payload  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

DECRYPTABLE = ["srtp_aes80", "srtp_aes32_oneway", "srtp_rekey", "srtp_mki", "srtp_auth_fail", "srtp_gcm",
               "srtp_gcm256"]
UNDECRYPTABLE = ["srtp_dtls", "srtp_no_keys", "srtp_aes256"]


def _replay(capture: Path, out: Path) -> tuple[list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_")}
    env["CALLN_RECORDING_CHANNELS"] = "2"
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "-v", "replay", "--out", str(out), "--format", "wav",
                           "--workers", "1", str(capture)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))], proc.stdout + proc.stderr


def _truth(name: str) -> dict:
    return json.loads((REPO / "pcaps" / f"{name}.truth.json").read_text())


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_decrypted_audio_equals_the_plaintext_sample_for_sample(name, tmp_path):
    truth = _truth(name)
    capture = REPO / "pcaps" / truth["capture"]
    (record,), _ = _replay(capture, tmp_path)
    want = truth["srtp"][record["callid"]]
    srtp = record["srtp"]
    assert srtp["auth_failed"] == want["auth_failed"]
    assert srtp["suites"]["caller"] == want["suites"]
    assert srtp["decrypted"] == {side: want["plaintext"][side]["packets"] for side in ("caller", "callee")}
    rate, pcm = _wav(tmp_path / record["recording"]["file"])
    assert rate == 8000 and pcm.shape[1] == 2
    by_src = _rtp_by_source(capture)
    decodes, channels = [], []
    for channel, (side, endpoint) in enumerate((("caller", record["callermediaendpoint"]),
                                                 ("callee", record["destinationmediaendpoint"]))):
        plain = want["plaintext"][side]
        if not plain["packets"]:
            assert not pcm[:, channel].any()
            continue
        payloads = b"".join(tone_payload(plain["tone_hz"], i) for i in range(plain["packets"]))
        packets = by_src[endpoint]
        # The genuine first packet: a tampered copy of it may have arrived before it.
        first_arrival_ns = max(t for t, seq, _pt, _p in packets if seq == packets[0][1])
        decodes.append((first_arrival_ns, _ffmpeg_g711(payloads, 0)))
        channels.append(channel)
    for channel, (offset, ref) in zip(channels, _placed(decodes, rate)):
        got = pcm[offset:offset + ref.size, channel]
        assert np.array_equal(got, ref), f"{name} channel {channel}"
        assert not pcm[:offset, channel].any() and not pcm[offset + ref.size:, channel].any()


@pytest.mark.parametrize("name", UNDECRYPTABLE)
def test_calls_without_usable_keys_name_why(name, tmp_path):
    truth = _truth(name)
    (record,), _ = _replay(REPO / "pcaps" / truth["capture"], tmp_path)
    assert record["recording"] is None
    assert record["no_audio_reason"] == truth["srtp"][record["callid"]]["no_audio_reason"]
    assert record["answered"] and record["callerphone"] == "1001"     # metadata as for any call


def _key_texts(capture: Path) -> set[str]:
    """Every inline key of the capture's SDP, as base64 and as hex (master key, salt, both)."""
    data = capture.read_bytes()
    texts = set()
    for b64 in re.findall(rb"inline:([A-Za-z0-9+/=]+)", data):
        raw = base64.b64decode(b64 + b"=" * (-len(b64) % 4))
        texts |= {b64.decode().rstrip("="), raw.hex(), raw.hex().upper(), raw[:16].hex(), raw[16:].hex()}
    return texts


@pytest.mark.parametrize("name", ["srtp_rekey", "srtp_mki"])
def test_keys_never_reach_logs_records_show_or_files(name, tmp_path):
    capture = REPO / "pcaps" / f"{name}.pcap"
    keys = _key_texts(capture)
    assert len(keys) >= 10
    records, output = _replay(capture, tmp_path / "out")
    inspect = subprocess.run([sys.executable, "-m", "agent.cli", "-v", "inspect", "--json", str(capture)],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    show = subprocess.run([sys.executable, "-m", "agent.cli", "show", "--ascii", str(capture)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "crypto:1 AES_CM_128_HMAC_SHA1_80" in show.stdout          # suites shown, keys not
    texts = [output, inspect.stdout, inspect.stderr, show.stdout, show.stderr, json.dumps(records)]
    texts += [p.read_bytes().decode("latin-1") for p in (tmp_path / "out").iterdir()]
    for key in keys:
        assert not any(key in text for text in texts), "a key leaked"


def test_encrypted_rfc4733_digits_are_found_after_decryption(tmp_path):
    """Event payloads are ciphertext on the wire: the digits come from the plaintext, and the
    end packets' byte-identical SRTP copies count as duplicates, as for plain RTP."""
    (record,), _ = _replay(REPO / "pcaps" / "srtp_dtmf.pcap", tmp_path)
    assert (record["callerdtmf"], record["destinationdtmf"]) == ("5#", "9")
    assert [s["duplicated"] for s in sorted(record["streams"], key=lambda s: s["direction"])] == [4, 2]
    assert record["srtp"]["auth_failed"] == {"caller": 0, "callee": 0} and record["recording"]


@pytest.mark.slow  # regenerates the eleven srtp_* captures (~15 s)
def test_srtp_generator_is_deterministic(tmp_path):
    """make_srtp_pcaps.py reproduces the committed captures and truth files byte for byte
    (libsrtp's AES-CM and GCM are deterministic for a fixed key, SSRC and index)."""
    subprocess.run([sys.executable, str(REPO / "pcaps" / "make_srtp_pcaps.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert len(made) == 22
    for name in made:
        assert (tmp_path / name).read_bytes() == (REPO / "pcaps" / name).read_bytes(), name

"""The MP3 path checked by ffmpeg (an independent decoder): the Info tag's frame count on
both ways of counting frames, and an 8 kHz call recorded as the default 16 kHz MP3 against
the same call's 16 kHz WAV (length, alignment, SNR)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from agent.media.encoder import _count_frames, _walk_frames, open_encoder

from tests.media.test_media_render import burst, read_wav, run_call

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _ffmpeg_s16(path, channels: int = 1) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
                         capture_output=True, check=True, timeout=60)
    assert out.stderr == b""
    return np.frombuffer(out.stdout, dtype="<i2").reshape(-1, channels).astype(np.float64)


def _info_tag_frames(path) -> int:
    data = path.read_bytes()
    at = data.index(b"Info")
    return int.from_bytes(data[at + 8:at + 12], "big")


@pytest.mark.parametrize("rate_hz,kbps,padded", [(16000, 32, False), (22050, 32, True), (8000, 16, False)])
def test_frame_count_in_the_info_tag_is_what_ffmpeg_decodes(tmp_path, rate_hz, kbps, padded):
    rng = np.random.default_rng(7)
    pcm = rng.integers(-8000, 8000, size=rate_hz * 3 + 77, dtype=np.int16)
    path = tmp_path / "x.mp3"
    with open_encoder(path, "mp3", rate_hz, 1, bitrate_kbps=kbps) as enc:
        enc.write(pcm)
    frame_len = 72 * kbps * 1000 // rate_hz
    audio = path.read_bytes()[frame_len:]
    frames = _walk_frames(audio)
    # 22.05 kHz pads some frames, so the array count must refuse and the walk count them.
    assert (len(set(audio[2::frame_len][:frames])) > 1) == padded
    assert _count_frames(audio, frame_len) == frames == _info_tag_frames(path)
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "a:0",
                            "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
                           capture_output=True, text=True, check=True, timeout=60)
    assert int(probe.stdout) == frames      # ffmpeg reads the tag frame as a tag, not audio
    assert len(_ffmpeg_s16(path)) == len(pcm)


def test_8k_call_as_default_mp3_matches_its_16k_wav(tmp_path):
    pkts = burst(0, 440, 0, 3000) + burst(1, 1000, 700, 3000)
    (tmp_path / "wav").mkdir()
    (tmp_path / "mp3").mkdir()
    _, wav = run_call(tmp_path / "wav", pkts, channels=1, sample_rate_hz=16000)
    _, mp3 = run_call(tmp_path / "mp3", pkts, fmt="mp3", channels=1, sample_rate_hz=16000)
    assert (mp3.sample_rate_hz, mp3.duration_ms) == (wav.sample_rate_hz, wav.duration_ms) == (16000, 3700)
    rate, ref = read_wav(wav.path)
    decoded = _ffmpeg_s16(mp3.path)
    assert decoded.shape == ref.shape == (3700 * 16, 1)
    ref, decoded = ref[:, 0], decoded[:, 0]
    lag = int(np.argmax(np.correlate(decoded[8000:24000], ref[8000 - 32:24000 + 32], "valid"))) - 32
    assert lag == 0                                      # aligned to the sample
    noise = decoded - ref
    snr_db = 10 * np.log10(np.sum(ref ** 2) / np.sum(noise ** 2))
    assert snr_db > 20, snr_db

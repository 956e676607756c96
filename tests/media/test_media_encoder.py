"""Streaming WAV/MP3 encoder: exact WAV samples, MP3 duration and pitch, atomic publish."""

from __future__ import annotations

import os
import wave

import numpy as np
import pytest

from agent.media.encoder import EncodeResult, open_encoder


def _sine(rate_hz: int, seconds: float, freq_hz: float, amp: int = 10000) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _write_in_chunks(enc, pcm: np.ndarray, chunk: int = 333) -> None:
    for start in range(0, len(pcm), chunk):
        enc.write(pcm[start : start + chunk])


def _peak_hz(x: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate_hz / len(x))


# ------------------------------------------------------------------ WAV


@pytest.mark.parametrize("channels", [1, 2])
def test_wav_round_trip_exact(tmp_path, channels):
    rng = np.random.default_rng(7)
    shape = (12345,) if channels == 1 else (12345, 2)
    pcm = rng.integers(-32768, 32768, size=shape, dtype=np.int16)
    path = tmp_path / "rec.wav"
    enc = open_encoder(path, "wav", 16000, channels)
    _write_in_chunks(enc, pcm, 1000)
    assert not path.exists() and (tmp_path / "rec.wav.part").exists()
    result = enc.close()
    assert result == EncodeResult(
        path=str(path), fmt="wav", sample_rate_hz=16000, channels=channels,
        duration_ms=12345 * 1000 // 16000, bytes_written=44 + pcm.nbytes,
    )  # fmt: skip
    assert not (tmp_path / "rec.wav.part").exists()
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (channels, 2, 16000)
        assert w.getnframes() == 12345
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.array_equal(data.reshape(shape), pcm)


def test_wav_empty_recording_is_valid(tmp_path):
    result = open_encoder(tmp_path / "e.wav", "wav", 8000, 1).close()
    assert result.duration_ms == 0 and result.bytes_written == 44
    with wave.open(result.path, "rb") as w:
        assert w.getnframes() == 0


def test_bad_input_is_refused(tmp_path):
    enc = open_encoder(tmp_path / "x.wav", "wav", 8000, 2)
    with pytest.raises(ValueError):
        enc.write(np.zeros(10, dtype=np.int16))  # mono into stereo
    with pytest.raises(TypeError):
        enc.write(np.zeros((10, 2), dtype=np.float32))
    enc.abort()
    assert not (tmp_path / "x.wav.part").exists() and not (tmp_path / "x.wav").exists()
    with pytest.raises(ValueError):
        open_encoder(tmp_path / "x.ogg", "ogg", 8000, 1)
    with pytest.raises(ValueError):
        open_encoder(tmp_path / "x.wav", "wav", 8000, 3)


def test_exception_in_context_manager_discards_part(tmp_path):
    with pytest.raises(RuntimeError):
        with open_encoder(tmp_path / "y.mp3", "mp3", 16000, 1) as enc:
            enc.write(np.zeros(5000, dtype=np.int16))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ MP3

av = pytest.importorskip("av")


def _decode_mp3(path: str) -> tuple[np.ndarray, int, int, str]:
    with av.open(path) as c:
        stream = c.streams.audio[0]
        frames = [f.to_ndarray() for f in c.decode(stream)]
        return (
            np.concatenate(frames, axis=1),
            stream.sample_rate,
            stream.codec_context.bit_rate,
            c.format.name,
        )


@pytest.mark.parametrize("rate_hz,frame_samples", [(16000, 576), (8000, 576), (44100, 1152)])
def test_mp3_mono_duration_and_pitch(tmp_path, rate_hz, frame_samples):
    pcm = _sine(rate_hz, 3.0, 1000)
    path = tmp_path / "m.mp3"
    enc = open_encoder(path, "mp3", rate_hz, 1, bitrate_kbps=32)
    assert enc.frame_size == frame_samples
    _write_in_chunks(enc, pcm)
    result = enc.close()
    assert (result.fmt, result.sample_rate_hz, result.channels, result.duration_ms) == (
        "mp3", rate_hz, 1, 3000,
    )  # fmt: skip
    assert result.bytes_written == os.path.getsize(path)
    # CBR 32 kbit/s for 3 s ≈ 12 kB (+ Xing/LAME header frame and padding)
    assert 11_000 <= result.bytes_written <= 14_500
    decoded, sr, bit_rate, fmt = _decode_mp3(str(path))
    assert (sr, fmt, decoded.shape[0]) == (rate_hz, "mp3", 1)
    assert bit_rate == 32000
    assert abs(decoded.shape[1] - len(pcm)) <= frame_samples
    assert _peak_hz(decoded[0], rate_hz) == pytest.approx(1000, abs=2)


def test_mp3_stereo_keeps_channels_apart(tmp_path):
    rate_hz = 16000
    left, right = _sine(rate_hz, 2.0, 500), _sine(rate_hz, 2.0, 1500)
    pcm = np.stack([left, right], axis=1)
    path = tmp_path / "s.mp3"
    enc = open_encoder(path, "mp3", rate_hz, 2, bitrate_kbps=48)
    _write_in_chunks(enc, pcm, 1000)
    result = enc.close()
    assert (result.channels, result.duration_ms) == (2, 2000)
    decoded, sr, _br, _fmt = _decode_mp3(str(path))
    assert decoded.shape[0] == 2 and sr == rate_hz
    assert abs(decoded.shape[1] - len(pcm)) <= 576
    assert _peak_hz(decoded[0], rate_hz) == pytest.approx(500, abs=2)
    assert _peak_hz(decoded[1], rate_hz) == pytest.approx(1500, abs=2)


def test_mp3_write_chunking_does_not_change_output(tmp_path):
    pcm = _sine(16000, 1.0, 700)
    a = open_encoder(tmp_path / "a.mp3", "mp3", 16000, 1)
    a.write(pcm)
    ra = a.close()
    b = open_encoder(tmp_path / "b.mp3", "mp3", 16000, 1)
    _write_in_chunks(b, pcm, 17)
    rb = b.close()
    da, *_ = _decode_mp3(ra.path)
    db, *_ = _decode_mp3(rb.path)
    assert np.array_equal(da, db)


def test_mp3_rejects_rate_lame_cannot_carry(tmp_path):
    with pytest.raises(ValueError):
        open_encoder(tmp_path / "r.mp3", "mp3", 12500, 1)
    assert list(tmp_path.iterdir()) == []


def test_mp3_quality_reaches_lame_and_keeps_the_audio(tmp_path):
    """[recording] mp3_quality is LAME's algorithm quality: a different quality is a different
    bitstream (so the setting reaches LAME), with the same length, pitch and fidelity."""
    rng = np.random.default_rng(3)
    pcm = (_sine(16000, 2.0, 440, 6000) + rng.normal(0, 500, 32000)).astype(np.int16)
    out = {}
    for quality in (3, 7):
        enc = open_encoder(tmp_path / f"q{quality}.mp3", "mp3", 16000, 1, bitrate_kbps=32, mp3_quality=quality)
        _write_in_chunks(enc, pcm, 320)
        result = enc.close()
        out[quality] = (open(result.path, "rb").read(), _decode_mp3(result.path)[0][0])
    assert out[3][0] != out[7][0]
    for _, decoded in out.values():
        assert abs(len(decoded) - len(pcm)) <= 576
        assert _peak_hz(decoded, 16000) == pytest.approx(440, abs=2)
    # Same fidelity: the tone's level survives both equally (within 1 dB).
    levels = [20 * np.log10(np.sqrt(np.mean((d * 32768.0) ** 2))) for _, d in out.values()]
    assert abs(levels[0] - levels[1]) < 1.0
    with pytest.raises(ValueError):
        open_encoder(tmp_path / "bad.mp3", "mp3", 16000, 1, mp3_quality=10)


def test_mp3_quality_is_validated_in_the_configuration(tmp_path):
    from agent.config import load_config
    from agent.errors import ConfigError

    assert load_config(None, env={}).recording.mp3_quality == 7
    conf = tmp_path / "agent.toml"
    conf.write_text("[recording]\nmp3_quality = 2\n")
    assert load_config(conf, env={}).recording.mp3_quality == 2
    conf.write_text("[recording]\nmp3_quality = 12\n")
    with pytest.raises(ConfigError, match="mp3_quality"):
        load_config(conf, env={})


@pytest.mark.parametrize("rate_hz,channels,kbps", [(16000, 1, 32), (8000, 1, 16), (44100, 2, 64)])
def test_mp3_ffmpeg_plays_exactly_the_pcm_written(tmp_path, rate_hz, channels, kbps):
    """Decoded by the ffmpeg command line (an independent decoder), the file holds as many
    samples as were written and the audio starts where it did: the LAME Info tag's encoder
    delay and padding reach the decoder."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    n = rate_hz * 2 + 123
    t = np.arange(n) / rate_hz
    mono = (8000 * np.sin(2 * np.pi * 440 * t) * (t > 0.5)).astype(np.int16)
    pcm = mono if channels == 1 else np.stack([mono, mono // 2], axis=1)
    enc = open_encoder(tmp_path / "x.mp3", "mp3", rate_hz, channels, bitrate_kbps=kbps)
    _write_in_chunks(enc, pcm, 500)
    enc.close()
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "x.mp3"), "-f", "s16le", "-"],
                         capture_output=True, check=True, timeout=60)
    assert out.stderr == b""
    decoded = np.frombuffer(out.stdout, dtype="<i2").reshape(-1, channels)
    assert decoded.shape[0] == n
    onset = int(np.argmax(np.abs(decoded[:, 0]) > 2000))
    assert abs(onset - rate_hz // 2) <= rate_hz // 2000 + 2      # within half a millisecond

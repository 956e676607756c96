"""MP3 encoding capacity: audio-seconds encoded per CPU-second, and calls per core.

Feeds a speech-like signal (tones + noise, so LAME cannot coast on silence) to
``agent.media.encoder`` in 20 ms chunks and measures process CPU time; then the default
MP3 of an 8 kHz call as the mixer makes it (resampled to 16 kHz in 5 s steps, then LAME), with
the resampling's share. ``--quality`` compares LAME's algorithm qualities (speed and SNR). ``--bindings`` encodes the
same PCM at the same bit rate and LAME quality through every maintained Python binding of
LAME installed (lameenc, libmp3lame through PyAV, libsndfile through soundfile, pedalboard)
and prints speed and SNR (decoded by ffmpeg through PyAV): why the agent uses lameenc.
``--resample`` compares libswresample (PyAV) with the agent's resampler (libsoxr) on the same
PCM, speed and filter: why the agent resamples with soxr. ``--hour`` also encodes one hour of 16 kHz mono and samples RSS every 10 minutes of audio to
show memory stays flat.

    python3 bench/encode_rate.py [--seconds 120] [--quality] [--bindings] [--resample] [--hour]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.media.encoder import MP3_QUALITY, open_encoder  # noqa: E402

CONCURRENT_CALLS = 1000


def speech_like(rate_hz: int, seconds: float, channels: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllable-rate amplitude changes
    x = envelope * (3000 * np.sin(2 * np.pi * 220 * t) + 1500 * np.sin(2 * np.pi * 1100 * t))
    x = x + rng.normal(0, 600, size=t.shape)
    mono = np.clip(x, -32768, 32767).astype(np.int16)
    return mono if channels == 1 else np.stack([mono, np.roll(mono, 1234)], axis=1)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def measure(rate_hz: int, channels: int, kbps: int, seconds: float, tmp: str,
            quality: int = MP3_QUALITY) -> float:
    pcm = speech_like(rate_hz, seconds, channels)
    chunk = rate_hz // 50  # 20 ms
    path = os.path.join(tmp, f"bench_{rate_hz}_{channels}.mp3")
    cpu0 = time.process_time()
    enc = open_encoder(path, "mp3", rate_hz, channels, bitrate_kbps=kbps, mp3_quality=quality)
    for start in range(0, len(pcm), chunk):
        enc.write(pcm[start : start + chunk])
    result = enc.close()
    cpu_s = time.process_time() - cpu0
    rate = seconds / cpu_s
    print(
        f"{rate_hz:>6} Hz {'mono  ' if channels == 1 else 'stereo'} {kbps:>3} kbit/s q{quality}: "
        f"{seconds:.0f} s audio in {cpu_s:.2f} CPU-s = {rate:7.1f} audio-s/CPU-s "
        f"({result.bytes_written} bytes) -> {rate:7.1f} concurrent calls per core, "
        f"{CONCURRENT_CALLS / rate:5.2f} cores for {CONCURRENT_CALLS} concurrent calls"
    )
    os.unlink(path)
    return rate


def measure_from_8k(seconds: float, tmp: str) -> None:
    """The default MP3 of a narrowband call as the mixer makes it: 8 kHz PCM in 5 s steps
    through ``agent.media.resample`` to 16 kHz, into LAME, Info tag and all; with the CPU
    the resampling took on its own, in the same run."""
    from agent.media.resample import Resampler

    pcm = speech_like(8000, seconds, 1)
    step = 5 * 8000
    path = os.path.join(tmp, "from8k.mp3")
    cpu0 = time.process_time()
    resampler = Resampler(8000, 16000)
    enc = open_encoder(path, "mp3", 16000, 1, bitrate_kbps=32)
    resample_s = 0.0
    for start in range(0, len(pcm), step):
        t = time.process_time()
        up = resampler.push(pcm[start:start + step])
        resample_s += time.process_time() - t
        enc.write(up)
    enc.write(resampler.finish())
    enc.close()
    cpu_s = time.process_time() - cpu0
    print(f"  8000 Hz call -> 16000 Hz mono 32 kbit/s q{MP3_QUALITY}: {seconds / cpu_s:7.1f} audio-s/CPU-s, "
          f"of which resampling {100 * resample_s / cpu_s:.0f} % ({seconds / resample_s:,.0f} audio-s/CPU-s alone)")
    os.unlink(path)


def snr_db(reference: np.ndarray, mp3_path: str) -> float:
    """Signal-to-noise ratio of the decoded MP3 against what was encoded (delay removed)."""
    import av

    with av.open(mp3_path) as f:
        decoded = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)]) * 32768.0
    ref = reference.astype(np.float64)
    n = 1 << 18
    corr = np.fft.irfft(np.fft.rfft(ref[:n // 2], n).conj() * np.fft.rfft(decoded[:n // 2], n), n)
    delay = int(np.argmax(corr[:8192]))
    m = min(len(ref), len(decoded) - delay)
    err = ref[:m] - decoded[delay:delay + m]
    return float(10 * np.log10(np.sum(ref[:m] ** 2) / np.sum(err ** 2)))


def quality_table(seconds: float, tmp: str) -> None:
    """Speed and fidelity of LAME's algorithm qualities at the agent's default format."""
    pcm = speech_like(16000, seconds, 1)
    print(f"LAME algorithm quality at 16 kHz mono 32 kbit/s ([recording] mp3_quality, default {MP3_QUALITY}):")
    for quality in (3, 5, 7, 9):
        path = os.path.join(tmp, f"q{quality}.mp3")
        cpu0 = time.process_time()
        enc = open_encoder(path, "mp3", 16000, 1, bitrate_kbps=32, mp3_quality=quality)
        for start in range(0, len(pcm), 320):
            enc.write(pcm[start:start + 320])
        enc.close()
        cpu_s = time.process_time() - cpu0
        print(f"  q{quality}: {seconds / cpu_s:7.1f} audio-s/CPU-s, SNR {snr_db(pcm, path):5.1f} dB"
              + ("   (LAME's own default)" if quality == 3 else ""))
        os.unlink(path)


def _lameenc(path: str, pcm: np.ndarray, rate_hz: int, kbps: int, quality: int) -> None:
    import lameenc

    enc = lameenc.Encoder()
    enc.set_in_sample_rate(rate_hz)
    enc.set_channels(1)
    enc.set_bit_rate(kbps)
    enc.set_quality(quality)
    enc.silence()
    with open(path, "wb") as fh:
        for start in range(0, len(pcm), rate_hz):
            fh.write(enc.encode(pcm[start:start + rate_hz].tobytes()))
        fh.write(enc.flush())


def _pyav(path: str, pcm: np.ndarray, rate_hz: int, kbps: int, quality: int) -> None:
    import av

    with av.open(path, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate_hz)
        stream.layout = "mono"
        stream.bit_rate = kbps * 1000
        stream.codec_context.format = "s16p"
        stream.codec_context.options = {"abr": "0", "compression_level": str(quality)}
        stream.codec_context.open()
        n = stream.codec_context.frame_size
        for start in range(0, len(pcm) - len(pcm) % n, n):
            frame = av.AudioFrame.from_ndarray(pcm[start:start + n].reshape(1, -1), format="s16p", layout="mono")
            frame.sample_rate = rate_hz
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _soundfile(path: str, pcm: np.ndarray, rate_hz: int, kbps: int, quality: int) -> None:
    # libsndfile takes no LAME quality and no bit rate in kbit/s: CBR at a compression level
    # (0 = 160 kbit/s .. 1 = 8 kbit/s at these rates, linear); the table prints what came out.
    import soundfile

    level = 1 - (kbps - 8) / (160 - 8)
    with soundfile.SoundFile(path, "w", rate_hz, 1, format="MP3", subtype="MPEG_LAYER_III",
                             compression_level=level, bitrate_mode="CONSTANT") as fh:
        for start in range(0, len(pcm), rate_hz):
            fh.write(pcm[start:start + rate_hz])


def _pedalboard(path: str, pcm: np.ndarray, rate_hz: int, kbps: int, quality: int) -> None:
    # pedalboard bundles LAME; it sets the bit rate, not the algorithm quality.
    from pedalboard.io import AudioFile

    with AudioFile(path, "w", rate_hz, 1, quality=f"{kbps} kbps") as fh:
        for start in range(0, len(pcm), rate_hz):
            fh.write(pcm[start:start + rate_hz].astype(np.float32).reshape(1, -1) / 32768.0)


def bindings_table(seconds: float, tmp: str) -> None:
    """The same PCM, bit rate and LAME quality through each binding: speed, SNR, size."""
    print(f"MP3 bindings, {seconds:.0f} s of the same speech-like mono PCM, CBR, LAME quality {MP3_QUALITY} "
          "where the binding takes one:")
    for rate_hz, kbps in ((16000, 32), (8000, 16)):
        pcm = speech_like(rate_hz, seconds, 1)
        for name, encode in (("lameenc", _lameenc), ("PyAV libmp3lame", _pyav), ("soundfile (libsndfile)", _soundfile),
                             ("pedalboard", _pedalboard)):
            path = os.path.join(tmp, f"{name.split()[0]}.mp3")
            try:
                cpu0 = time.process_time()
                encode(path, pcm, rate_hz, kbps, MP3_QUALITY)
                cpu_s = time.process_time() - cpu0
            except Exception as exc:     # a binding not installed, or refusing the rate
                print(f"  {rate_hz:>5} Hz {kbps} kbit/s {name:24}: n/a ({type(exc).__name__}: {exc})")
                continue
            size = os.path.getsize(path)
            print(f"  {rate_hz:>5} Hz {kbps} kbit/s {name:24}: {seconds / cpu_s:7.0f} audio-s/CPU-s, "
                  f"SNR {snr_db(pcm, path):5.1f} dB, {size * 8 / seconds / 1000:5.1f} kbit/s")
            os.unlink(path)


def _swr(pcm: np.ndarray, in_hz: int, out_hz: int) -> np.ndarray:
    """libswresample through PyAV, fed 2 s slices (its fastest way): the agent's resampler
    before ``agent.media.resample``."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=out_hz)
    frames = []
    for at in range(0, len(pcm), 2 * in_hz):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[at:at + 2 * in_hz]).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = in_hz
        frames += resampler.resample(frame)
    frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def _agent_resampler(pcm: np.ndarray, in_hz: int, out_hz: int) -> np.ndarray:
    """``agent.media.resample.Resampler`` (libsoxr HQ) fed 5 s pieces, as the mixer feeds it."""
    from agent.media.resample import Resampler

    resampler = Resampler(in_hz, out_hz)
    pieces = [resampler.push(pcm[at:at + 5 * in_hz]) for at in range(0, len(pcm), 5 * in_hz)]
    return np.concatenate(pieces + [resampler.finish()])


def _tone_level_db(convert, in_hz: int, out_hz: int, tone_hz: int, measured_hz: int) -> float:
    """Level at ``measured_hz`` of a tone at ``tone_hz`` converted, relative to the tone."""
    amp = 16000.0
    t = np.arange(in_hz) / in_hz
    y = convert(np.rint(amp * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16), in_hz, out_hz)
    y = y[out_hz // 8: -out_hz // 8].astype(np.float64)
    w = np.hanning(len(y))
    spectrum = np.abs(np.fft.rfft(y * w)) * 2 / w.sum()
    k = round(measured_hz * len(y) / out_hz)
    return float(20 * np.log10(spectrum[max(k - 3, 0):k + 4].max() / amp + 1e-12))


def resample_table(seconds: float) -> None:
    """The resamplers on the same PCM: speed (a fresh resampler per 60 s call, 8 -> 16 kHz)
    and the filter (passband, images going up, aliases going down): why the agent uses soxr."""
    pcm = speech_like(8000, 60.0, 1)
    calls = max(1, round(seconds / 60))
    print(f"Resampling 8 -> 16 kHz, {calls} x 60 s of speech-like PCM, one resampler per call; "
          "filter measured with 1 s tones (levels relative to the tone):")
    for name, convert in (("libswresample (PyAV)", _swr), ("soxr HQ (agent)", _agent_resampler)):
        best = float("inf")
        for _ in range(3):      # the least of three: the shared machine only ever adds time
            cpu0 = time.process_time()
            for _ in range(calls):
                convert(pcm, 8000, 16000)
            best = min(best, time.process_time() - cpu0)
        ripple = max(abs(_tone_level_db(convert, 8000, 16000, f, f)) for f in range(200, 3401, 200))
        image = max(_tone_level_db(convert, 8000, 16000, f, 8000 - f) for f in range(200, 3401, 200))
        image_edge = _tone_level_db(convert, 8000, 16000, 3900, 4100)
        alias = max(_tone_level_db(convert, 16000, 8000, f, 8000 - f) for f in range(4400, 7801, 400))
        print(f"  {name:22}: {calls * 60 / best:7.0f} audio-s/CPU-s; passband 0.2-3.4 kHz within "
              f"{ripple:.3f} dB; images {_db(image)} (3.9 kHz tone: {_db(image_edge)}); "
              f"16 -> 8 kHz aliases {_db(alias)}")


def _db(level: float) -> str:
    # Below the int16 floor a filtered-out tone comes out as exact zeros: no level to print.
    return f"{level:6.1f} dB" if level > -120 else "none (every sample 0)"


def hour_rss(tmp: str) -> None:
    rate_hz, minute = 16000, speech_like(16000, 60.0, 1)
    chunk = rate_hz // 50
    path = os.path.join(tmp, "hour.mp3")
    enc = open_encoder(path, "mp3", rate_hz, 1, bitrate_kbps=32)
    cpu0 = time.process_time()
    print(f"1-hour encode, RSS before: {rss_kib()} KiB")
    for m in range(60):
        for start in range(0, len(minute), chunk):
            enc.write(minute[start : start + chunk])
        if m % 10 == 9:
            print(f"  after {m + 1:2d} min of audio: RSS {rss_kib()} KiB")
    result = enc.close()
    print(
        f"  done: {result.duration_ms / 1000:.0f} s, {result.bytes_written} bytes, "
        f"{time.process_time() - cpu0:.1f} CPU-s"
    )
    os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="audio per measurement")
    ap.add_argument("--hour", action="store_true", help="also run the 1-hour RSS check")
    ap.add_argument("--quality", action="store_true", help="also compare LAME algorithm qualities")
    ap.add_argument("--bindings", action="store_true", help="also compare the Python bindings of LAME")
    ap.add_argument("--resample", action="store_true",
                    help="also compare the resamplers (speed and filter): libswresample vs soxr")
    args = ap.parse_args()
    import av  # noqa: F401  (loaded before any measurement: its import is not encoding)

    with tempfile.TemporaryDirectory() as tmp:
        measure(16000, 1, 32, args.seconds, tmp)  # the agent's default
        measure(8000, 1, 32, args.seconds, tmp)  # MPEG-2.5
        measure(16000, 2, 48, args.seconds, tmp)  # stereo (caller left, callee right)
        measure_from_8k(args.seconds, tmp)  # the default MP3 of a G.711 call
        if args.quality:
            quality_table(args.seconds, tmp)
        if args.bindings:
            bindings_table(args.seconds, tmp)
        if args.resample:
            resample_table(args.seconds)
        if args.hour:
            hour_rss(tmp)
    print(
        "calls per core = audio-s per CPU-s: a core keeps up with that many calls being "
        "recorded at once (encoding only; decode and mix are extra)."
    )


if __name__ == "__main__":
    main()

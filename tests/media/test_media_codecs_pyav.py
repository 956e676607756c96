"""PyAV-backed decoders (G.722, G.726, G.729, GSM, iLBC, Opus, Speex) on real payloads.

Two kinds of evidence: (1) our per-packet, stateful decode of real RTP payloads equals an
independent ffmpeg CLI decode of the concatenated frames; (2) the lab captures (FreeSWITCH
playing one WAV file over every codec) decode to the same audio as the L16 capture.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from agent.media.codecs import make_decoder

av = pytest.importorskip("av")

PUBLIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "public"
needs_public = pytest.mark.skipif(not PUBLIC.is_dir(), reason="public captures not available")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI missing")


@lru_cache(maxsize=None)
def rtp_streams(name: str) -> tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...]:
    """((payload type, ((rtp timestamp, payload), ...)), ...) per SSRC, in order of appearance."""
    scapy = pytest.importorskip("scapy.all")
    streams: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    for pkt in scapy.PcapReader(str(PUBLIC / name)):
        if scapy.UDP not in pkt or 5060 in (pkt[scapy.UDP].sport, pkt[scapy.UDP].dport):
            continue
        data = bytes(pkt[scapy.UDP].payload)
        if len(data) < 12 or data[0] >> 6 != 2:
            continue
        offset = 12 + 4 * (data[0] & 0x0F)  # fixed header + CSRC list
        if data[0] & 0x10:  # header extension
            offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
        end = len(data) - (data[-1] if data[0] & 0x20 else 0)  # padding
        ts, ssrc = struct.unpack_from("!II", data, 4)
        streams.setdefault((ssrc, data[1] & 0x7F), []).append((ts, data[offset:end]))
    return tuple((pt, tuple(pkts)) for (_ssrc, pt), pkts in streams.items())


def decode_all(dec, payloads) -> list[np.ndarray]:
    return [dec.decode(p) for p in payloads]


def ffmpeg_decode(tmp_path: Path, data: bytes, in_args: list[str]) -> np.ndarray:
    src, dst = tmp_path / "in.bin", tmp_path / "out.raw"
    src.write_bytes(data)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", *in_args, "-i", str(src),
         "-f", "s16le", "-ac", "1", str(dst)],
        check=True,
    )  # fmt: skip
    return np.frombuffer(dst.read_bytes(), dtype="<i2")


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = np.sum((test.astype(np.float64) - ref) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(ref**2) / noise)


def best_lag_snr(ref: np.ndarray, test: np.ndarray, max_lag: int) -> tuple[int, float]:
    """SNR of test against ref after the best shift of test by 0..max_lag samples."""
    best = (0, -np.inf)
    for lag in range(max_lag + 1):
        n = min(len(ref), len(test) - lag)
        s = snr_db(ref[:n], test[lag : lag + n])
        if s > best[1]:
            best = (lag, s)
    return best


# ------------------------------------------------------------------ public captures vs ffmpeg

CAPTURE_CASES = [
    # (capture, stream index, encoding, clock, ffmpeg raw demuxer args, bytes prepended)
    ("sip-rtp-g722.pcap", 0, "G722", 8000, ["-f", "g722"], b""),
    ("sip-rtp-g729a.pcap", 0, "G729", 8000, ["-f", "g729"], b""),
    ("sip-rtp-gsm.pcap", 0, "GSM", 8000, ["-f", "gsm"], b""),
    ("sip-rtp-ilbc.pcap", 0, "iLBC", 8000, ["-f", "ilbc"], b"#!iLBC30\n"),
    *[
        ("sip-rtp-g726.pcap", i, f"G726-{kbps}", 8000,
         ["-f", "g726le", "-code_size", str(kbps // 8), "-sample_rate", "8000"], b"")
        for i, kbps in enumerate((16, 24, 32, 40))
    ],
    *[
        ("sip-rtp-g726.pcap", 4 + i, f"AAL2-G726-{kbps}", 8000,
         ["-f", "g726", "-code_size", str(kbps // 8), "-sample_rate", "8000"], b"")
        for i, kbps in enumerate((16, 24, 32, 40))
    ],
]  # fmt: skip


@needs_public
@needs_ffmpeg
@pytest.mark.parametrize(
    "capture,index,encoding,clock,in_args,prefix",
    CAPTURE_CASES,
    ids=[f"{c[2]}" for c in CAPTURE_CASES],
)
def test_capture_payloads_match_ffmpeg(tmp_path, capture, index, encoding, clock, in_args, prefix):
    _pt, packets = rtp_streams(capture)[index]
    payloads = [p for _, p in packets]
    dec = make_decoder(encoding, clock)
    assert dec is not None
    parts = decode_all(dec, payloads)
    assert dec.errors == 0
    ours = np.concatenate(parts)
    ticks = packets[-1][0] - packets[0][0]
    # Every packet yields exactly the samples its RTP duration says (last one: one ptime).
    assert len(ours) == dec.samples_for_rtp_ticks(ticks) + len(parts[-1])
    assert {len(p) for p in parts} == {dec.samples_for_rtp_ticks(packets[1][0] - packets[0][0])}
    theirs = ffmpeg_decode(tmp_path, prefix + b"".join(payloads), in_args)
    assert len(theirs) == len(ours)
    assert snr_db(theirs, ours) >= 30
    assert np.array_equal(theirs, ours)  # same libavcodec, same state: bit-exact in practice


@needs_public
def test_g722_outputs_16khz_two_samples_per_tick():
    _pt, packets = rtp_streams("sip-rtp-g722.pcap")[0]
    dec = make_decoder("g722", 8000)
    assert (dec.rtp_clock_hz, dec.sample_rate_hz) == (8000, 16000)
    assert dec.samples_for_rtp_ticks(160) == 320
    out = decode_all(dec, [p for _, p in packets])
    assert [len(o) for o in out] == [320] * len(packets)  # 160-byte payload, 20 ms
    assert packets[1][0] - packets[0][0] == 160


@needs_public
def test_opus_capture_decodes_at_48khz():
    _pt, packets = rtp_streams("sip-rtp-opus.pcap")[0]
    dec = make_decoder("opus", 48000, 2)
    assert (dec.rtp_clock_hz, dec.sample_rate_hz, dec.channels_out) == (48000, 48000, 1)
    out = decode_all(dec, [p for _, p in packets])
    assert dec.errors == 0
    assert all(o.ndim == 1 and o.dtype == np.int16 for o in out)
    assert [len(o) for o in out] == [960] * len(packets)  # 20 ms at 48 kHz
    assert packets[1][0] - packets[0][0] == 960


@needs_public
def test_opus_hybrid_edge_case_counts_bad_packets():
    _pt, packets = rtp_streams("sip-rtp-opus-hybrid.pcap")[0]
    dec = make_decoder("OPUS", 48000, 2)
    out = decode_all(dec, [p for _, p in packets])
    # 20 ms, 2×20 ms, 2×20 ms decode; the two code-3 packets have inconsistent lengths
    # (libopus and ffmpeg's own decoder both refuse them): empty + counted, never raised.
    assert [len(o) for o in out] == [960, 1920, 1920, 0, 0]
    assert dec.errors == 2


@needs_public
@pytest.mark.parametrize("index,clock,channels,per_packet", [
    (0, 8000, 2, 160), (1, 16000, 2, 320), (2, 11025, 1, 256), (3, 48000, 1, 960),
])  # fmt: skip
def test_l16_capture_lengths(index, clock, channels, per_packet):
    _pt, packets = rtp_streams("sip-rtp-l16.pcap")[index]
    dec = make_decoder("L16", clock, channels)
    out = decode_all(dec, [p for _, p in packets])
    assert dec.errors == 0
    assert {len(o) for o in out} == {per_packet}
    assert packets[1][0] - packets[0][0] == per_packet


@needs_public
@pytest.mark.parametrize("index,clock,per_packet", [(0, 8000, 160), (1, 16000, 320), (2, 32000, 640)])
def test_speex_capture_lengths(index, clock, per_packet):
    _pt, packets = rtp_streams("sip-rtp-speex.pcap")[index]
    dec = make_decoder("speex", clock)
    assert dec is not None and dec.sample_rate_hz == clock
    out = decode_all(dec, [p for _, p in packets])
    assert dec.errors == 0
    assert {len(o) for o in out} == {per_packet}


# ------------------------------------------------------------------ same audio as L16


def _decode_stream(capture: str, index: int, encoding: str, clock: int, ch: int = 1):
    _pt, packets = rtp_streams(capture)[index]
    dec = make_decoder(encoding, clock, ch)
    return np.concatenate(decode_all(dec, [p for _, p in packets]))


@needs_public
@pytest.mark.parametrize("capture,index,encoding,clock,ref_index,max_lag,min_snr", [
    ("sip-rtp-g726.pcap", 0, "G726-16", 8000, 0, 0, 12),
    ("sip-rtp-g726.pcap", 1, "G726-24", 8000, 0, 0, 16),
    ("sip-rtp-g726.pcap", 2, "G726-32", 8000, 0, 0, 22),
    ("sip-rtp-g726.pcap", 6, "AAL2-G726-32", 8000, 0, 0, 22),
    ("sip-rtp-gsm.pcap", 0, "GSM", 8000, 0, 0, 10),
    ("sip-rtp-dvi4.pcap", 0, "DVI4", 8000, 0, 0, 17),
    ("sip-rtp-dvi4.pcap", 1, "DVI4", 16000, 1, 0, 22),
    ("sip-rtp-g722.pcap", 0, "G722", 8000, 1, 40, 26),
])  # fmt: skip
def test_waveform_codecs_reproduce_the_l16_recording(
    capture, index, encoding, clock, ref_index, max_lag, min_snr
):
    # FreeSWITCH played one WAV file to every codec; L16 carries it losslessly.
    ref_clock = 8000 if ref_index == 0 else 16000
    ref = _decode_stream("sip-rtp-l16.pcap", ref_index, "L16", ref_clock, 2)
    ours = _decode_stream(capture, index, encoding, clock)
    n = min(len(ref), len(ours)) - max_lag
    lag, snr = best_lag_snr(ref[:n], ours[: n + max_lag], max_lag)
    assert snr >= min_snr, (lag, snr)


# ------------------------------------------------------------------ encode a known sine


def _sine(rate_hz: int, seconds: float, freq_hz: float = 1000.0, amp: int = 8000) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _pyav_encode(codec: str, pcm: np.ndarray, rate_hz: int, bit_rate: int | None = None,
                 frame_samples: int = 160) -> list[bytes]:  # fmt: skip
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.layout = rate_hz, "mono"
    ctx.format = ctx.codec.audio_formats[0].name
    if bit_rate:
        ctx.bit_rate = bit_rate
    ctx.open()
    n = ctx.frame_size or frame_samples
    out: list[bytes] = []
    for start in range(0, len(pcm) - n + 1, n):
        chunk = pcm[start : start + n].astype(np.float32) / 32768.0
        fmt = ctx.format.name
        data = chunk if fmt.startswith("flt") else pcm[start : start + n]
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate_hz, start
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


def _peak_hz(pcm: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate_hz / len(pcm))


@pytest.mark.parametrize("encoding,codec,kbps,min_snr", [
    ("G726-32", "g726le", 32, 25), ("G726-40", "g726le", 40, 30), ("G726-16", "g726le", 16, 15),
    ("AAL2-G726-32", "g726", 32, 25), ("AAL2-G726-24", "g726", 24, 20),
])  # fmt: skip
def test_g726_sine_round_trip(encoding, codec, kbps, min_snr):
    x = _sine(8000, 2.0)
    stream = b"".join(_pyav_encode(codec, x, 8000, bit_rate=kbps * 1000))
    # Re-packetise the bitstream as RTP does: 20 ms = 160 codes of kbps/8 bits each.
    per_packet = 20 * kbps // 8
    payloads = [stream[i : i + per_packet] for i in range(0, len(stream), per_packet)]
    dec = make_decoder(encoding, 8000)
    parts = decode_all(dec, payloads)
    y = np.concatenate(parts)
    assert dec.errors == 0 and {len(p) for p in parts[:-1]} == {160}
    n = len(y)
    assert n >= 12000
    x = x[:n]
    assert snr_db(x[400:], y[400:]) >= min_snr
    assert _peak_hz(y, 8000) == pytest.approx(1000, abs=2)


def test_g722_sine_round_trip_is_16khz():
    x = _sine(16000, 1.0)
    payloads = _pyav_encode("g722", x, 16000, frame_samples=320)
    assert {len(p) for p in payloads} == {160}  # 320 samples → 160 bytes, 160 RTP ticks
    dec = make_decoder("G722", 8000)
    y = np.concatenate(decode_all(dec, payloads))
    assert len(y) == len(x)
    lag, snr = best_lag_snr(x[800:-800], y[800:], 40)
    assert snr >= 30, (lag, snr)
    assert _peak_hz(y, 16000) == pytest.approx(1000, abs=2)


@needs_ffmpeg
def test_opus_ogg_packets_match_ffmpeg(tmp_path):
    ogg = tmp_path / "sine.ogg"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "sine=frequency=1000:sample_rate=48000:duration=1", "-c:a", "libopus",
         "-b:a", "48k", "-ac", "1", str(ogg)],
        check=True,
    )  # fmt: skip
    with av.open(str(ogg)) as c:
        payloads = [bytes(p) for p in c.demux(audio=0) if p.size]
    dec = make_decoder("opus", 48000, 2)
    y = np.concatenate(decode_all(dec, payloads))
    assert dec.errors == 0 and len(y) == 960 * len(payloads)
    # Same decoder library on both sides (libopus and ffmpeg's native Opus decoder differ by
    # ~15 dB on CELT frames); ffmpeg trims the 312-sample pre-skip, we do not.
    theirs = ffmpeg_decode(tmp_path, ogg.read_bytes(), ["-c:a", dec.codec_name])
    lag, snr = best_lag_snr(theirs[:-2000], y, 1000)
    assert lag == 312 and snr >= 30, (lag, snr)
    assert _peak_hz(y[4800:], 48000) == pytest.approx(1000, abs=3)


@needs_ffmpeg
@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_speex_ogg_packets_match_ffmpeg(tmp_path, rate_hz):
    ogg = tmp_path / "sine.ogg"
    try:
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", f"sine=frequency=1000:sample_rate={rate_hz}:duration=1",
             "-c:a", "libspeex", "-ac", "1", str(ogg)],
            check=True,
        )  # fmt: skip
    except subprocess.CalledProcessError:
        pytest.skip("ffmpeg has no libspeex encoder")
    with av.open(str(ogg)) as c:
        payloads = [bytes(p) for p in c.demux(audio=0) if p.size]
    dec = make_decoder("SPEEX", rate_hz)
    y = np.concatenate(decode_all(dec, payloads))
    assert dec.errors == 0
    theirs = ffmpeg_decode(tmp_path, ogg.read_bytes(), [])
    n = min(len(theirs), len(y))
    lag, snr = best_lag_snr(theirs[:n - 500], y[:n], 400)
    assert snr >= 30, (lag, snr)


@needs_ffmpeg
def test_gsm_sine_via_ffmpeg_libgsm(tmp_path):
    raw = tmp_path / "sine.gsm"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "sine=frequency=1000:sample_rate=8000:duration=1", "-c:a", "libgsm",
         "-f", "gsm", str(raw)],
        check=True,
    )  # fmt: skip
    data = raw.read_bytes()
    assert len(data) % 33 == 0
    # RTP GSM packs one or more 33-byte frames per payload: use 2 per packet here.
    payloads = [data[i : i + 66] for i in range(0, len(data) - 65, 66)]
    dec = make_decoder("GSM", 8000)
    y = np.concatenate(decode_all(dec, payloads))
    assert dec.errors == 0 and len(y) == 320 * len(payloads)
    theirs = ffmpeg_decode(tmp_path, data[: 66 * len(payloads)], ["-f", "gsm"])
    assert np.array_equal(theirs, y)
    assert _peak_hz(y, 8000) == pytest.approx(1000, abs=5)


def test_gsm_bad_length_is_counted_not_raised():
    dec = make_decoder("GSM", 8000)
    assert dec.decode(b"\xd0" * 32).shape == (0,)
    assert dec.errors == 1


# ------------------------------------------------------------------ G.729 Annex B, iLBC modes


@needs_public
def test_g729b_sid_frames_keep_the_stream_length():
    _pt, packets = rtp_streams("sip-rtp-g729a.pcap")[0]
    frames = [p[i : i + 10] for _, p in packets[:20] for i in (0, 10)]
    sid = b"\x5a\x21"  # a 2-byte Annex B SID frame (content is irrelevant: it becomes silence)
    payloads = [
        frames[0] + frames[1],      # 2 speech frames → 20 ms
        sid,                        # SID alone → 10 ms
        frames[2] + sid,            # 10 + 2 → 20 ms
        frames[3] + frames[4] + sid,  # 2×10 + 2 → 30 ms
        frames[5],                  # one frame → 10 ms
    ]  # fmt: skip
    dec = make_decoder("G729", 8000, fmtp="annexb=yes")
    out = decode_all(dec, payloads)
    assert [len(o) for o in out] == [160, 80, 160, 240, 80]
    assert dec.errors == 0
    assert not out[1].any() and not out[2][80:].any() and not out[3][160:].any()
    # The speech part decodes exactly as it would without the SID appended.
    ref = make_decoder("G729", 8000)
    ref_out = decode_all(ref, [frames[0] + frames[1], frames[2], frames[3] + frames[4]])
    assert np.array_equal(out[2][:80], ref_out[1])
    assert np.array_equal(out[3][:160], ref_out[2])


def test_g729_bad_length_is_counted():
    dec = make_decoder("G729A", 8000)
    assert dec.decode(b"\x00" * 7).shape == (0,)
    assert dec.errors == 1


@needs_public
def test_ilbc_mode_follows_payload_size_over_fmtp():
    _pt, packets = rtp_streams("sip-rtp-ilbc.pcap")[0]
    payloads = [p for _, p in packets[:10]]
    assert {len(p) for p in payloads} == {50}
    wrong_hint = make_decoder("iLBC", 8000, fmtp="mode=20")
    right_hint = make_decoder("ILBC", 8000, fmtp="mode=30")
    a = decode_all(wrong_hint, payloads)
    b = decode_all(right_hint, payloads)
    assert [len(x) for x in a] == [240] * 10
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # Two 30 ms frames in one payload → 480 samples.
    two = make_decoder("iLBC", 8000)
    assert len(two.decode(payloads[0] + payloads[1])) == 480

"""End to end: synthetic RTP → CallMedia → media log → render_recording → WAV/MP3, checked
by FFT (dominant frequency per channel), burst onsets (±20 ms) and exact durations."""

import random
import struct
import wave

import numpy as np
import pytest

from agent.media.g711 import linear_to_ulaw
from agent.media.render import render_recording
from agent.media.sequencer import CallMedia
from agent.media.timeline import CodecInfo, StreamSpec

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
PCMU = {0: CodecInfo("PCMU", 8000), 13: CodecInfo("CN", 8000),
        101: CodecInfo("telephone-event", 8000)}


def rtp(seq, ts, ssrc, pt, payload):
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def burst(side, freq, start_ms, dur_ms, *, ssrc=None, seq0=100, ts0=5000, drop=(),
          jitter_ms=0, ts_of=None, pt_of=None, payload_of=None, seed=1):
    """20 ms PCMU packets of a tone; returns [(arrival_ns, direction, datagram)]."""
    rng = random.Random(seed)
    ssrc = ssrc if ssrc is not None else 0x1000 + side
    out = []
    for k in range(dur_ms // 20):
        if k in drop:
            continue
        t = np.arange(k * 160, (k + 1) * 160) / 8000
        pcm = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        ts = ts_of(k) if ts_of else ts0 + 160 * k
        pt = pt_of(k) if pt_of else 0
        payload = payload_of(k) if payload_of else linear_to_ulaw(pcm)
        arrival = T0 + (start_ms + 20 * k) * MS + int(rng.uniform(0, jitter_ms) * MS)
        out.append((arrival, side, rtp(seq0 + k, ts, ssrc, pt, payload)))
    return out


def run_call(tmp_path, packets, specs=None, **kw):
    cm = CallMedia(tmp_path / "call.media")
    for arrival, side, data in sorted(packets, key=lambda p: p[0]):
        cm.on_rtp(side, arrival, "10.0.0.1:4000", "10.0.0.2:5000", data)
    cm.close()
    if specs is None:
        specs = [StreamSpec(i.index, i.side, dict(PCMU)) for i in cm.streams]
    kw.setdefault("fmt", "wav")
    out = tmp_path / ("rec." + kw["fmt"])
    res = render_recording(cm.log_path, specs, out, **kw)
    return cm, res


def read_wav(path):
    with wave.open(str(path)) as w:
        rate, ch = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return rate, x.reshape(-1, ch).astype(np.float64)


def dominant_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spec))]


def rms(x):
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def onset_ms(x, rate, thresh=1000):
    idx = np.flatnonzero(np.abs(x) > thresh)
    return idx[0] * 1000 / rate if len(idx) else None


def seg(x, rate, a_ms, b_ms):
    return x[int(a_ms * rate / 1000):int(b_ms * rate / 1000)]


def test_stereo_two_tones(tmp_path):
    pkts = burst(0, 440, 0, 2000) + burst(1, 1000, 500, 2000)
    cm, res = run_call(tmp_path, pkts, channels=2, sample_rate_hz=8000)
    assert res.path == tmp_path / "rec.wav" and res.fmt == "wav"
    assert (res.sample_rate_hz, res.channels, res.audio_packets) == (8000, 2, 200)
    assert res.duration_ms == 2500
    assert res.per_side_ms == [2000, 2000]
    assert res.first_audio_offset_ms == [0, 500]
    assert res.undecodable == []
    rate, x = read_wav(res.path)
    assert x.shape == (20000, 2)
    left, right = x[:, 0], x[:, 1]
    assert dominant_hz(seg(left, rate, 0, 2000), rate) == pytest.approx(440, abs=2)
    assert dominant_hz(seg(right, rate, 500, 2500), rate) == pytest.approx(1000, abs=2)
    assert onset_ms(left, rate) == pytest.approx(0, abs=20)
    assert onset_ms(right, rate) == pytest.approx(500, abs=20)
    assert rms(seg(right, rate, 0, 490)) == 0.0          # callee silent before it starts
    assert rms(seg(left, rate, 2010, 2500)) == 0.0       # caller silent after it stops
    # G.711 round trip is near-exact: compare with the ideal tone
    t = np.arange(16000) / 8000
    ideal = 8000 * np.sin(2 * np.pi * 440 * t)
    assert np.max(np.abs(left[:16000] - ideal)) < 300
    assert not list(tmp_path.glob("*.pcm"))              # temp files are gone


def test_mono_mix_16k(tmp_path):
    pkts = burst(0, 440, 0, 2000) + burst(1, 1000, 500, 2000)
    _, res = run_call(tmp_path, pkts, channels=1, sample_rate_hz=16000)
    assert (res.sample_rate_hz, res.channels, res.duration_ms) == (16000, 1, 2500)
    rate, x = read_wav(res.path)
    assert rate == 16000 and len(x) == 40000
    m = x[:, 0]
    assert dominant_hz(seg(m, rate, 0, 480), rate) == pytest.approx(440, abs=3)
    assert dominant_hz(seg(m, rate, 2020, 2500), rate) == pytest.approx(1000, abs=3)
    both = np.abs(np.fft.rfft(seg(m, rate, 600, 1900)))
    freqs = np.fft.rfftfreq(len(seg(m, rate, 600, 1900)), 1 / rate)
    top2 = sorted(freqs[np.argsort(both)[-2:]])
    assert top2 == pytest.approx([440, 1000], abs=3)
    assert onset_ms(m, rate) == pytest.approx(0, abs=20)


def test_loss_reorder_and_jitter(tmp_path):
    # 10 lost packets (1.0–1.2 s), arrival jitter up to 15 ms (reorders neighbours)
    pkts = burst(0, 440, 0, 2000, drop=set(range(50, 60)), jitter_ms=30)
    cm, res = run_call(tmp_path, pkts, sample_rate_hz=8000)
    s = cm.streams[0].stats
    assert s.lost == 10 and s.packets == 90 and s.late == 0 and s.reordered > 0
    rate, x = read_wav(res.path)
    m = x[:, 0]
    assert res.duration_ms == 2000
    assert rms(seg(m, rate, 1000, 1200)) == 0.0
    assert rms(seg(m, rate, 980, 1000)) > 3000 and rms(seg(m, rate, 1200, 1220)) > 3000
    # jitter does not move audio: every 20 ms slot outside the loss holds the tone
    for k in range(100):
        if not 50 <= k < 60:
            assert rms(seg(m, rate, 20 * k, 20 * k + 20)) > 3000, k


def test_dtx_gap_keeps_wall_clock(tmp_path):
    a = burst(0, 440, 0, 1000, ts0=0)
    b = burst(0, 440, 4000, 1000, seq0=150, ts0=4000 * 8)   # seq continues, ts and time jump
    _, res = run_call(tmp_path, a + b, sample_rate_hz=8000)
    rate, x = read_wav(res.path)
    m = x[:, 0]
    assert res.duration_ms == 5000 and res.reanchors == 0
    assert rms(seg(m, rate, 1010, 3990)) == 0.0
    assert onset_ms(seg(m, rate, 2000, 5000), rate) == pytest.approx(2000, abs=20)


def test_timestamp_jump_without_time_reanchors(tmp_path):
    # at 1 s the sender's timestamp leaps 100 s ahead while packets keep their 20 ms pace
    pkts = burst(0, 440, 0, 2000, ts_of=lambda k: 160 * k + (800_000 if k >= 50 else 0))
    _, res = run_call(tmp_path, pkts, sample_rate_hz=8000)
    assert res.duration_ms == 2000 and res.reanchors == 1
    rate, x = read_wav(res.path)
    for k in range(100):
        assert rms(seg(x[:, 0], rate, 20 * k, 20 * k + 20)) > 3000, k


def test_timestamp_backwards_reanchors(tmp_path):
    pkts = burst(0, 440, 0, 2000, ts_of=lambda k: 900_000 + 160 * k - (40_000 if k >= 50 else 0))
    _, res = run_call(tmp_path, pkts, sample_rate_hz=8000)
    assert res.duration_ms == 2000 and res.reanchors == 1
    rate, x = read_wav(res.path)
    for k in range(100):
        assert rms(seg(x[:, 0], rate, 20 * k, 20 * k + 20)) > 3000, k


def test_ssrc_change_rendered_in_sequence(tmp_path):
    a = burst(0, 440, 0, 1000, ssrc=0xAAAA, seq0=10, ts0=1000)
    b = burst(0, 660, 1000, 1000, ssrc=0xBBBB, seq0=50000, ts0=77_777_777)
    cm, res = run_call(tmp_path, a + b, sample_rate_hz=8000)
    assert [(i.index, i.side, i.ssrc) for i in cm.streams] == [(0, 0, 0xAAAA), (1, 0, 0xBBBB)]
    assert res.duration_ms == 2000 and res.per_side_ms == [2000, 0]
    assert res.first_audio_offset_ms == [0, None]
    rate, x = read_wav(res.path)
    assert dominant_hz(seg(x[:, 0], rate, 0, 1000), rate) == pytest.approx(440, abs=2)
    assert dominant_hz(seg(x[:, 0], rate, 1000, 2000), rate) == pytest.approx(660, abs=2)


def test_seq_and_timestamp_wrap(tmp_path):
    pkts = burst(0, 440, 0, 2000, seq0=65500, ts0=2**32 - 8000)
    cm, res = run_call(tmp_path, pkts, sample_rate_hz=8000)
    assert cm.streams[0].stats.lost == 0
    assert res.duration_ms == 2000 and res.reanchors == 0
    rate, x = read_wav(res.path)
    for k in range(100):
        assert rms(seg(x[:, 0], rate, 20 * k, 20 * k + 20)) > 3000, k


def test_clock_drift_is_followed(tmp_path):
    # the sender's RTP clock runs 2 % fast: without re-anchoring the 10 s call would be 10.2 s
    pkts = burst(0, 440, 0, 10000, ts_of=lambda k: round(163.2 * k))
    pkts += burst(1, 1000, 9000, 1000)     # a reference burst from the other side at 9 s
    _, res = run_call(tmp_path, pkts, channels=2, sample_rate_hz=8000)
    assert res.reanchors >= 2
    assert res.duration_ms == pytest.approx(10000, abs=70)
    rate, x = read_wav(res.path)
    left = x[:, 0]
    last = np.flatnonzero(np.abs(left) > 1000)[-1] * 1000 / rate
    assert last == pytest.approx(10000, abs=70)
    assert onset_ms(x[:, 1], rate) == pytest.approx(9000, abs=20)


def test_cn_dtmf_and_undecodable_are_silence(tmp_path):
    # k 20–29 CN, 30–39 telephone-event, 40–44 unknown PT 99, 45–49 PT 18 mapped to "FOO"
    def pt_of(k):
        return 13 if 20 <= k < 30 else 101 if 30 <= k < 40 else 99 if 40 <= k < 45 \
            else 18 if 45 <= k < 50 else 0

    def payload_of(k):
        pt = pt_of(k)
        if pt == 13:
            return b"\x40"
        if pt == 101:
            return bytes([5, 10, 0, 160])
        t = np.arange(k * 160, (k + 1) * 160) / 8000
        return linear_to_ulaw((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))

    pkts = burst(0, 440, 0, 1200, pt_of=pt_of, payload_of=payload_of)
    codecs = dict(PCMU)
    codecs[18] = CodecInfo("FOO", 8000)
    cm = CallMedia(tmp_path / "c.media")
    for arr, d, data in pkts:
        cm.on_rtp(d, arr, "a:1", "b:2", data)
    cm.close()
    res = render_recording(cm.log_path, [StreamSpec(0, 0, codecs)], tmp_path / "r.wav",
                           fmt="wav", sample_rate_hz=8000)
    assert res.undecodable == ["FOO", "pt99"]
    assert res.audio_packets == 30 and res.duration_ms == 1200
    rate, x = read_wav(res.path)
    m = x[:, 0]
    assert rms(seg(m, rate, 0, 400)) > 3000 and rms(seg(m, rate, 1000, 1200)) > 3000
    assert rms(seg(m, rate, 400, 1000)) == 0.0


def test_no_audio_writes_nothing(tmp_path):
    pkts = burst(0, 440, 0, 400, pt_of=lambda k: 101, payload_of=lambda k: bytes([1, 0, 0, 80]))
    _, res = run_call(tmp_path, pkts)
    assert res.path is None and res.duration_ms == 0 and res.audio_packets == 0
    assert not list(tmp_path.glob("rec*")) and not list(tmp_path.glob("*.pcm"))
    res = render_recording(tmp_path / "absent.media", [], tmp_path / "x.wav", fmt="wav")
    assert res.path is None


def test_start_ns_sets_time_zero(tmp_path):
    pkts = burst(0, 440, 0, 1000) + burst(1, 1000, 300, 500)
    _, res = run_call(tmp_path, pkts, channels=2, sample_rate_hz=8000, start_ns=T0 - 1000 * MS)
    assert res.first_audio_offset_ms == [1000, 1300]
    assert res.duration_ms == 2000
    rate, x = read_wav(res.path)
    assert onset_ms(x[:, 0], rate) == pytest.approx(1000, abs=20)
    assert onset_ms(x[:, 1], rate) == pytest.approx(1300, abs=20)


def test_rate_zero_uses_native_rate_of_used_decoders(tmp_path):
    pkts = burst(0, 440, 0, 1000) + burst(1, 1000, 0, 1000)
    codecs = dict(PCMU)
    codecs[9] = CodecInfo("G722", 8000)     # offered, never sent
    cm = CallMedia(tmp_path / "c.media")
    for arr, d, data in sorted(pkts, key=lambda p: p[0]):
        cm.on_rtp(d, arr, "a:1", "b:2", data)
    cm.close()
    specs = [StreamSpec(i.index, i.side, codecs) for i in cm.streams]
    res = render_recording(cm.log_path, specs, tmp_path / "r.wav", fmt="wav", channels=2,
                           sample_rate_hz=0)
    assert res.sample_rate_hz == 8000
    rate, x = read_wav(res.path)
    assert rate == 8000 and abs(len(x) - 8000) <= 40
    assert dominant_hz(x[:, 0], rate) == pytest.approx(440, abs=2)
    assert dominant_hz(x[:, 1], rate) == pytest.approx(1000, abs=2)


def test_mp3_output(tmp_path):
    pkts = burst(0, 440, 0, 2000) + burst(1, 1000, 500, 2000)
    _, res = run_call(tmp_path, pkts, fmt="mp3", channels=1, sample_rate_hz=16000)
    assert res.fmt == "mp3" and res.path.suffix == ".mp3"
    assert res.duration_ms == 2500
    head = res.path.read_bytes()[:3]
    assert head == b"ID3" or head[0] == 0xFF
    import av
    with av.open(str(res.path)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert len(pcm) == pytest.approx(40000, abs=2400)


# ---------------------------------------------------------------- timeline unit tests

from agent.media.timeline import StreamTimeline  # noqa: E402


def test_timeline_stall_burst_does_not_reanchor():
    tl = StreamTimeline(8000)
    pos = []
    for k in range(150):
        if 50 <= k < 100:
            arrival = 2000 * MS + 1000 * MS + (k - 50) * 100_000   # stalled, then a burst
        else:
            arrival = k * 20 * MS
        pos.append(tl.place(160 * k, arrival))
    assert tl.reanchors == 0
    assert pos == [k * 20 * MS for k in range(150)]


def test_timeline_sender_clock_paused_reanchors_after_confirmation():
    tl = StreamTimeline(8000)
    pos = [tl.place(160 * k, k * 20 * MS) for k in range(50)]
    # the sender paused 2 s without advancing its timestamp
    pos += [tl.place(160 * k, (k * 20 + 2000) * MS) for k in range(50, 100)]
    assert tl.reanchors == 1
    assert pos[:50] == [k * 20 * MS for k in range(50)]
    # first few packets of the new segment still follow the RTP clock, then arrival time
    assert pos[50] == 50 * 20 * MS
    assert pos[60:] == [(k * 20 + 2000) * MS for k in range(60, 100)]


def test_timeline_jitter_below_threshold_is_ignored():
    rng = random.Random(7)
    tl = StreamTimeline(8000)
    for k in range(500):
        jitter_ns = int(rng.uniform(0, 50) * MS) if k else 0   # anchored on the first arrival
        assert tl.place(160 * k, k * 20 * MS + jitter_ns) == k * 20 * MS
    assert tl.reanchors == 0


def test_exact_samples_through_loss_copies_reordering_and_ssrc_change(tmp_path):
    """Every packet carries one distinct sample value (a G.711 code repeated), so the WAV shows
    exactly where each one went: lost slots are zeros, a copy (carrying other samples, so a
    misplaced one would show) is dropped, a swapped pair lands in sequence order, and the
    second SSRC continues at the sample its first packet arrived at."""
    from agent.media.g711 import ULAW_TO_LINEAR

    codes = [0x10 + k for k in range(100)]                # 100 distinct values, none silent
    lost, copied, swapped = {20, 21}, 40, 30

    def packet(k, code=None):
        ssrc, seq0, ts0 = (0xAAAA, 65530, 2**32 - 480) if k < 50 else (0xBBBB, 1000, 123_456)
        j = k if k < 50 else k - 50
        arrival = T0 + 20 * MS * k + (12 * MS if k == swapped else -12 * MS if k == swapped + 1 else 0)
        return arrival, 0, rtp(seq0 + j, ts0 + 160 * j, ssrc, 0, bytes([codes[k] if code is None else code]) * 160)

    pkts = [packet(k) for k in range(100) if k not in lost]
    arrival, side, data = packet(copied, code=0x7A)
    pkts.append((arrival + 70 * MS, side, data))            # the copy, 3.5 packets late
    cm, res = run_call(tmp_path, pkts, sample_rate_hz=8000)
    first, second = (info.stats for info in cm.streams)
    assert (first.ssrc, first.lost, first.duplicated, first.reordered) == (0xAAAA, 2, 1, 1)
    assert (second.ssrc, second.packets) == (0xBBBB, 50)
    assert res.duration_ms == 2000 and res.per_side_ms == [1960, 0]
    rate, x = read_wav(res.path)
    assert rate == 8000 and x.shape == (16000, 1)
    for k in range(100):
        want = 0 if k in lost else int(ULAW_TO_LINEAR[codes[k]])
        assert (x[160 * k:160 * (k + 1), 0] == want).all(), k

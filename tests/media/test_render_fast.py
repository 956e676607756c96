"""The batched render path gives the same results as the packet-by-packet definitions it
replaces: the bulk media-log reader, the array timeline, the DTMF block stepping and the
whole render (compared with the per-packet decode/placement path of ``render.py``)."""

import random

import numpy as np
import pytest

import agent.media.render as render
from agent.media import side_pcm, placement
from agent.media.dtmf import InbandDtmfDetector, detect_inband
from agent.media.g711 import linear_to_alaw, linear_to_ulaw
from agent.media.medialog import MediaLogWriter, read_media_log, read_media_log_blocks
from agent.media.timeline import CodecInfo, StreamSpec, StreamTimeline

T0 = 1_700_000_000_000_000_000
CODECS = {0: CodecInfo("PCMU", 8000), 8: CodecInfo("PCMA", 8000), 13: CodecInfo("CN", 8000),
          101: CodecInfo("telephone-event", 8000), 96: CodecInfo("X-UNKNOWN", 8000)}


def _records(block):
    for i in range(len(block)):
        a, n = int(block.payload_at[i]), int(block.payload_len[i])
        yield (int(block.stream[i]), int(block.seq[i]), int(block.ts[i]), int(block.arrival_ns[i]),
               int(block.pt[i]), bool(block.marker[i]), block.data[a:a + n].tobytes())


@pytest.mark.parametrize("chunk_bytes", [100, 997, 4096, 1 << 20])
def test_bulk_reader_matches_record_reader(tmp_path, chunk_bytes):
    rnd = random.Random(chunk_bytes)
    path = tmp_path / "call.media"
    w = MediaLogWriter(path)
    for i in range(3000):
        size = 160 if rnd.random() < 0.85 else rnd.choice([0, 3, 80, 161, 900])
        w.append(rnd.randrange(3), i, rnd.getrandbits(32), rnd.getrandbits(62), rnd.randrange(128),
                 rnd.random() < 0.1, bytes(rnd.getrandbits(8) for _ in range(size)))
    w.close()
    with open(path, "ab") as fh:
        fh.write(b"\x02\x00\x07")          # a torn last record is dropped by both readers
    expected = list(read_media_log(path))
    got = [r for block in read_media_log_blocks(path, chunk_bytes=chunk_bytes) for r in _records(block)]
    assert got == expected


def test_bulk_reader_missing_file(tmp_path):
    assert list(read_media_log_blocks(tmp_path / "none")) == []


@pytest.mark.parametrize("kind", ["plain", "jumps", "drift", "paused", "jitter"])
def test_place_many_matches_place(kind):
    rnd = random.Random(kind)
    ts, t = rnd.getrandbits(32), T0
    packets = []
    for k in range(4000):
        r = rnd.random()
        if kind == "jumps" and r < 0.01:
            ts += rnd.choice([-80000, 40000, 2**31 - 5, -2**31 + 5])
        if kind == "jumps" and r > 0.995:
            t += rnd.choice([3 * 10**9, -5 * 10**7])
        if kind == "drift":
            t += 100_000
        if kind == "paused" and 100 < k < 300:
            ts -= 160
        ts = (ts + 160) & 0xFFFFFFFF
        t += 20_000_000
        packets.append((ts, t + int(rnd.uniform(0, 50e6 if kind == "jitter" else 2e6))))
    one, many = StreamTimeline(8000), StreamTimeline(8000)
    expected = [one.place(a, b) for a, b in packets]
    arr_ts = np.array([p[0] for p in packets])
    arr_ns = np.array([p[1] for p in packets])
    got, i = [], 0
    while i < len(packets):
        n = rnd.randint(1, 900)
        got += many.place_many(arr_ts[i:i + n], arr_ns[i:i + n]).tolist()
        i += n
    assert got == expected
    assert many.reanchors == one.reanchors


def _tone_signal(rate, seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = rng.standard_normal(t.size) * 600
    for k in range(int(seconds * 2)):
        a = int((k * 0.5 + 0.1) * rate)
        b = a + int(rate * (0.03 + 0.02 * (k % 4)))      # some too short to count
        x[a:b] += 4000 * (np.sin(2 * np.pi * (697, 770, 852, 941)[k % 4] * t[a:b])
                          + np.sin(2 * np.pi * (1209, 1336, 1477, 1633)[k // 4 % 4] * t[a:b]))
    return np.clip(x, -32768, 32767).astype(np.int16)


class _SteppedDetector(InbandDtmfDetector):
    """Reference: every block through ``_step`` (no skipping of idle stretches)."""

    def _run_steps(self, codes, first_pos):
        for i, code in enumerate(codes.tolist()):
            self._step(code, first_pos + i * self.hop)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_inband_block_skipping_and_chunking_change_nothing(rate):
    x = _tone_signal(rate, 20, rate)
    ref = _SteppedDetector(rate)
    ref.feed(x)
    expected = ref.finish()
    assert len(expected) >= 20
    for pieces in (1, 7, 333):
        det = InbandDtmfDetector(rate)
        for part in np.array_split(x, pieces):
            det.feed(part)
        assert det.finish() == expected
    assert detect_inband(x.astype(np.float64), rate) == expected


def _messy_log(path, seed):
    """Two streams per direction (overlapping), loss, jumps, CN, events, odd sizes."""
    rnd = random.Random(seed)
    recs, specs = [], []
    for s in range(4):
        specs.append(StreamSpec(s, s % 2, dict(CODECS)))
        ts, arr, seq = rnd.getrandbits(32), T0 + rnd.randrange(0, 2 * 10**9), rnd.getrandbits(16)
        main_pt = (0, 8)[s % 2]
        for k in range(rnd.randrange(300, 900)):
            r = rnd.random()
            if r < 0.03:
                continue
            if r < 0.05:
                ts += rnd.choice([480, 24000, -1600, 2**31])
            pt = 13 if 0.6 < r < 0.62 else 101 if 0.62 < r < 0.63 else 96 if 0.63 < r < 0.635 else main_pt
            size = rnd.choice([0, 80, 240]) if r > 0.99 else 160
            t = np.arange(k * size, (k + 1) * size) / 8000
            pcm = (5000 * np.sin(2 * np.pi * (300 + 150 * s) * t)).astype(np.int16)
            payload = {0: linear_to_ulaw, 8: linear_to_alaw}.get(pt, lambda _p: b"\x05\x0a\x00\xa0")(pcm)
            recs.append((s, seq & 0xFFFF, ts & 0xFFFFFFFF, arr + int(rnd.uniform(0, 3e7)), pt, False, payload))
            seq, ts, arr = seq + 1, (ts + size) & 0xFFFFFFFF, arr + 20_000_000
    w = MediaLogWriter(path)
    for rec in sorted(recs, key=lambda r: r[3]):
        w.append(*rec)
    w.close()
    return specs


@pytest.mark.parametrize("seed", range(4))
def test_batched_render_equals_packet_path(tmp_path, seed, monkeypatch):
    log = tmp_path / "call.media"
    specs = _messy_log(log, seed)
    kw = dict(fmt="wav", channels=1 + seed % 2, inband_dtmf_sides=(0, 1), mask_inband=True)
    fast = render.render_recording(log, specs, tmp_path / "fast.wav", **kw)
    # The per-packet path for every codec: decode one payload, place it with placement.add_audio.
    monkeypatch.setattr(render, "_render_g711", render._render_packets)
    slow = render.render_recording(log, specs, tmp_path / "slow.wav", **kw)
    assert fast.path.read_bytes() == slow.path.read_bytes()
    for name in ("duration_ms", "audio_packets", "undecodable", "per_side_ms",
                 "first_audio_offset_ms", "reanchors", "dtmf", "masked_ms"):
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.parametrize("seed", range(2))
def test_side_pcm_spilled_to_disk_renders_the_same(tmp_path, seed, monkeypatch):
    """A direction longer than the in-memory bound moves to a sparse temp file part way: the
    recording, found tones and masking are the same as when it stays in memory."""
    log = tmp_path / "call.media"
    specs = _messy_log(log, seed)
    start = T0 - 500 * 10**6
    kw = dict(fmt="wav", channels=2, inband_dtmf_sides=(0, 1), mask_inband=True, start_ns=start,
              mask_spans_ns=[(start + 3 * 10**9, start + 4 * 10**9)])
    held = render.render_recording(log, specs, tmp_path / "held.wav", **kw)
    spilled_paths = []
    real_spill = side_pcm.SidePcm._spill
    monkeypatch.setattr(side_pcm, "MEMORY_SAMPLES", 30_000)
    monkeypatch.setattr(side_pcm.SidePcm, "_spill", lambda df: spilled_paths.append(df.path) or real_spill(df))
    spilled = render.render_recording(log, specs, tmp_path / "spilled.wav", **kw)
    assert len(spilled_paths) == 2 and not any(p.exists() for p in spilled_paths)
    assert spilled.path.read_bytes() == held.path.read_bytes()
    assert (spilled.dtmf, spilled.masked_ms, spilled.duration_ms) == (held.dtmf, held.masked_ms, held.duration_ms)
    assert held.masked_ms > 0

"""resample.Resampler: exact lengths, output independent of how the input is cut, silence
kept exact, a flat telephone passband, images and aliases rejected, no delay, saturation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.media.resample import Resampler


def _tone(rate_hz: int, freq_hz: float, seconds: float = 1.0, amp: float = 16000.0) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return np.rint(amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _whole(pcm: np.ndarray, in_hz: int, out_hz: int, channels: int = 1) -> np.ndarray:
    r = Resampler(in_hz, out_hz, channels)
    return np.concatenate([r.push(pcm), r.finish()])


def _level_db(x: np.ndarray, rate_hz: int, freq_hz: float, full_scale: float = 16000.0) -> float:
    """Level of ``freq_hz`` in ``x`` (Hann window, edges dropped) relative to ``full_scale``."""
    x = x[rate_hz // 8: -rate_hz // 8].astype(np.float64)
    w = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * w)) * 2 / w.sum()
    k = int(round(freq_hz * len(x) / rate_hz))
    return 20 * np.log10(spectrum[max(k - 3, 0):k + 4].max() / full_scale + 1e-12)


@pytest.mark.parametrize("in_hz,out_hz", [(8000, 16000), (16000, 8000), (8000, 48000)])
def test_whole_input_comes_out_at_the_new_rate_exactly(in_hz, out_hz):
    pcm = _tone(in_hz, 440, 2.5)
    assert len(_whole(pcm, in_hz, out_hz)) == len(pcm) * out_hz // in_hz


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 24000), max_size=8), channels=st.sampled_from([1, 2]),
       rates=st.sampled_from([(8000, 16000), (16000, 8000)]))
def test_pieces_cut_anywhere_give_the_whole_input_output(cuts, channels, rates):
    in_hz, out_hz = rates
    rng = np.random.default_rng(len(cuts))
    pcm = rng.integers(-20000, 20000, size=(24000, channels), dtype=np.int16)
    if channels == 1:
        pcm = pcm[:, 0]
    whole = _whole(pcm, in_hz, out_hz, channels)
    r = Resampler(in_hz, out_hz, channels)
    bounds = [0, *sorted(cuts), len(pcm)]
    pieces = [r.push(pcm[a:b]) for a, b in zip(bounds, bounds[1:])] + [r.finish()]
    assert all(p.dtype == np.int16 and p.shape[1:] == pcm.shape[1:] for p in pieces)
    assert np.array_equal(np.concatenate(pieces), whole)


def test_digital_silence_stays_exact_zeros():
    # soxr's own int16 output would dither: +-1 noise where the call was silent.
    for in_hz, out_hz in ((8000, 16000), (16000, 8000)):
        out = _whole(np.zeros(8000, dtype=np.int16), in_hz, out_hz)
        assert out.size == 8000 * out_hz // in_hz and not out.any()


def test_8k_to_16k_passband_flat_and_images_rejected():
    for f in range(200, 3401, 200):
        out = _whole(_tone(8000, f), 8000, 16000)
        assert abs(_level_db(out, 16000, f)) < 0.05, f                 # passband
        assert _level_db(out, 16000, 8000 - f) < -85, f                 # image above 4 kHz


def test_16k_to_8k_passband_flat_and_aliases_rejected():
    for f in range(200, 3401, 400):
        assert abs(_level_db(_whole(_tone(16000, f), 16000, 8000), 8000, f)) < 0.05, f
    for f in range(4500, 7901, 400):                # would fold to 8000 - f
        assert _level_db(_whole(_tone(16000, f), 16000, 8000), 8000, 8000 - f) < -85, f


def test_no_delay_a_click_stays_at_its_time():
    click = np.zeros(8000, dtype=np.int16)
    click[3000] = 20000
    assert int(np.argmax(_whole(click, 8000, 16000))) == 6000
    click16 = np.zeros(16000, dtype=np.int16)
    click16[6000:6002] = 20000
    assert int(np.argmax(_whole(click16, 16000, 8000))) == 3000


def test_full_scale_overshoot_saturates_instead_of_wrapping():
    # A full-scale square wave rings above full scale after the low-pass (Gibbs).
    square = np.where(np.arange(8000) % 40 < 20, 32767, -32768).astype(np.int16)
    out = _whole(square, 8000, 16000)
    assert out.max() == 32767 and out.min() == -32768
    high = np.arange(20, 16000 - 80, 80)[5:-5]   # middles of the high half periods at 16 kHz
    assert (out[high] > 30000).all() and (out[high + 40] < -30000).all()


def test_bad_channel_count_is_refused():
    with pytest.raises(ValueError, match="channels"):
        Resampler(8000, 16000, 3)


def test_float32_mix_is_the_int16_path_in_range_and_saturates_beyond():
    tone = _tone(8000, 700, 1.0, amp=12000)
    assert np.array_equal(_whole(tone.astype(np.float32), 8000, 16000), _whole(tone, 8000, 16000))
    loud = _whole(tone.astype(np.float32) * 4, 8000, 16000)    # a mono mix of two loud sides
    assert loud.max() == 32767 and loud.min() == -32768
    crest = np.abs(_whole(tone, 8000, 16000)).astype(np.int32) * 4
    # Where the in-range tone times four clears full scale the mix is pinned there, never wrapped.
    pinned = crest > 33000
    assert pinned.any() and (np.abs(loud[pinned].astype(np.int32)) >= 32767).all()


@pytest.mark.parametrize("fmt,channels", [("wav", 1), ("wav", 2), ("mp3", 1)])
def test_the_mixers_step_changes_no_byte_of_a_resampled_recording(tmp_path, monkeypatch, fmt, channels):
    """The mix is resampled and encoded in steps (``_MIX_CHUNK_S``): a recording at 16 kHz
    of an 8 kHz call is byte for byte the same in 1 s steps as in the default ones."""
    from agent.media import render
    from tests.media.test_render_fast import _messy_log

    log = tmp_path / "call.media"
    specs = _messy_log(log, channels)
    kw = dict(fmt=fmt, channels=channels, sample_rate_hz=16000)
    default = render.render_recording(log, specs, tmp_path / f"default.{fmt}", **kw)
    monkeypatch.setattr(render, "_MIX_CHUNK_S", 1)
    small = render.render_recording(log, specs, tmp_path / f"small.{fmt}", **kw)
    assert default.sample_rate_hz == 16000 and default.duration_ms > 10_000
    assert small.path.read_bytes() == default.path.read_bytes()

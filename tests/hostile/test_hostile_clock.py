"""Capture clock jumps inside a call: +5 years (engine, Engine._after_gap) and -1 day
(reader, agent.capture.files) keep one call with the right end and no giant silence."""

from __future__ import annotations

import wave

import pytest

from agent.media.render import render_recording

from _hostile_lib import PCAPS, essentials, read_records, run_engine, write_pcap

YEAR_NS = 365 * 86400 * 10**9
DAY_NS = 86400 * 10**9


def _jumped(records, jumps):
    """Shift every record from index i on by delta, for each (i, delta)."""
    out = []
    for idx, (ts, lt, frame) in enumerate(records):
        out.append((ts + sum(d for i, d in jumps if idx >= i), lt, frame))
    return out


def _run_and_render(path, tmp_path):
    rendered = []

    def on_finished(f):
        if f.media_log is not None:
            res = render_recording(f.media_log, f.streams, tmp_path / f"{len(rendered)}.wav",
                                   fmt="wav", channels=2)
            rendered.append(res)
            f.media_log.unlink()

    recs, counters = run_engine(path, on_finished=on_finished)
    return recs, counters, rendered


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _run_and_render(PCAPS / "basic_udp.pcap", tmp_path_factory.mktemp("clean"))


@pytest.mark.parametrize("jumps", [
    [(150, 5 * YEAR_NS)],                         # forward, mid-RTP
    [(150, -DAY_NS)],                             # backward, mid-RTP
    [(120, 5 * YEAR_NS), (200, -DAY_NS)],         # both, in one call
], ids=["plus5y", "minus1d", "both"])
def test_clock_jump_inside_a_call(tmp_path, clean, jumps):
    want, _, want_audio = clean
    records = read_records(PCAPS / "basic_udp.pcap")
    recs, counters, audio = _run_and_render(write_pcap(tmp_path / "j.pcap", _jumped(records, jumps)),
                                            tmp_path)
    assert len(recs) == 1, [r["end_reason"] for r in recs]
    r, w = recs[0], want[0]
    assert r["callid"] == w["callid"] and r["answered"]
    assert r["end_reason"] == "bye"
    assert counters["capture.clock_jumps"] == len(jumps)
    got_e, want_e = essentials(r), essentials(w)
    assert got_e["rtp_packets"] == want_e["rtp_packets"]
    # Each jump costs at most a few ms of re-based time, never the jump itself.
    assert abs(r["duration_ms"] - w["duration_ms"]) <= 50 * len(jumps)
    assert r["start_ts_ns"] == w["start_ts_ns"]
    assert len(audio) == 1 and audio[0].path is not None
    with wave.open(str(audio[0].path)) as wf:
        seconds = wf.getnframes() / wf.getframerate()
    with wave.open(str(want_audio[0].path)) as wf:
        want_seconds = wf.getnframes() / wf.getframerate()
    assert abs(seconds - want_seconds) < 0.2, (seconds, want_seconds)


def test_forward_leap_between_calls_is_a_quiet_spell_not_a_jump(tmp_path):
    """Two calls 2 hours apart: time really passed; nothing is re-based."""
    a = read_records(PCAPS / "basic_udp.pcap")
    b = [(ts + 2 * 3600 * 10**9, lt, f.replace(b"basic_udp-0001", b"basic_udp-0002"))
         for ts, lt, f in a]
    recs, counters = run_engine(write_pcap(tmp_path / "two.pcap", a + b))
    assert counters["capture.clock_jumps"] == 0
    assert [r["end_reason"] for r in recs] == ["bye", "bye"]
    assert recs[1]["start_ts_ns"] - recs[0]["start_ts_ns"] == 2 * 3600 * 10**9

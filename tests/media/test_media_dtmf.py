"""RFC 4733 event tracking and in-band DTMF detection (agent/media/dtmf.py), CallMedia wiring."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from agent.media.dtmf import (DTMF_HIGH_HZ, DTMF_LOW_HZ, TelephoneEventTracker, _KEYPAD,
                              detect_inband, digit_for_event)
from agent.media.sequencer import CallMedia
from agent.media.timeline import CodecInfo

MS = 1_000_000
SIPP = Path("/usr/share/sip-tester")


def ev(event: int, end: bool, duration: int) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)


def press(tracker, event, ts, t0_ns, n=5, *, drop=(), order=None, end_copies=3, dup=()):
    pkts = [(t0_ns + i * 20 * MS, ev(event, False, i * 160)) for i in range(n)]
    pkts += [(t0_ns + n * 20 * MS + k * MS, ev(event, True, n * 160)) for k in range(end_copies)]
    idx = order or list(range(len(pkts)))
    for i in idx:
        if i in drop:
            continue
        tracker.on_packet(ts, pkts[i][0], pkts[i][1])
        if i in dup:
            tracker.on_packet(ts, pkts[i][0], pkts[i][1])


def digits(tracker) -> str:
    return "".join(e.digit for e in tracker.events())


def test_one_press_per_event_whatever_the_faults() -> None:
    t = TelephoneEventTracker(0)
    press(t, 1, 1000, 0)                                   # clean
    press(t, 5, 3000, 500 * MS, drop={0})                  # first packet lost
    press(t, 9, 5000, 1000 * MS, order=[0, 3, 1, 2, 4, 5, 6, 7], dup={2, 5})  # reorder, dup
    press(t, 9, 7000, 1500 * MS, drop={6, 7})              # 2 of 3 end packets lost
    press(t, 11, 9000, 2000 * MS, end_copies=0)            # all end packets lost
    press(t, 10, 11000, 2500 * MS)
    assert digits(t) == "1599#*"
    evs = t.events()
    assert evs[0].ts_ns == 0 and evs[0].duration_ms == 100 and evs[0].source == "rfc4733"
    # the lost first packet: the start is still estimated from the duration field
    assert evs[1].ts_ns == 500 * MS


def test_all_sixteen_events_and_non_digits() -> None:
    t = TelephoneEventTracker(1)
    for e in range(16):
        press(t, e, 1000 + e * 4000, e * 500 * MS)
    press(t, 194, 200000, 9000 * MS)                       # Cisco NSE / fax: never a digit
    press(t, 32, 300000, 9500 * MS)                        # ANS tone event
    assert digits(t) == "0123456789*#ABCD"
    assert t.other_events == 2
    assert digit_for_event(16) is None and digit_for_event(15) == "D"


def test_events_arriving_out_of_order_are_sorted_by_time() -> None:
    t = TelephoneEventTracker(0)
    press(t, 2, 9000, 900 * MS)
    press(t, 1, 1000, 100 * MS)
    assert digits(t) == "12"


def test_long_hold_segments_merge_into_one_press() -> None:
    """RFC 4733 2.5.1.3: a key held past 0xFFFF ticks continues with a new timestamp."""
    t = TelephoneEventTracker(0)
    ts0 = 0xFFFF0000                                       # wraps during the hold
    # segment 1: durations up to 0xFFFF (8.19 s), no end bit
    for i in range(0, 0xFFFF // 160 + 1):
        t.on_packet(ts0, i * 20 * MS, ev(4, False, min(i * 160, 0xFFFF)))
    ts1 = (ts0 + 0xFFFF) & 0xFFFFFFFF
    base = (0xFFFF // 160 + 1) * 20 * MS
    for i in range(1, 50):
        t.on_packet(ts1, base + i * 20 * MS, ev(4, False, i * 160))
    for k in range(3):
        t.on_packet(ts1, base + 50 * 20 * MS + k * MS, ev(4, True, 50 * 160))
    evs = t.events()
    assert [e.digit for e in evs] == ["4"]
    assert evs[0].duration_ms == (0xFFFF + 50 * 160) * 1000 // 8000


def test_same_key_twice_stays_two_presses() -> None:
    t = TelephoneEventTracker(0)
    press(t, 7, 1000, 0, end_copies=0)                     # end lost ...
    press(t, 7, 1000 + 6 * 160 + 480, 180 * MS)            # ... but a 60 ms pause then a new ts
    assert digits(t) == "77"


def test_malformed_event_payload_is_counted() -> None:
    t = TelephoneEventTracker(0)
    t.on_packet(1, 0, b"\x01")
    assert t.malformed == 1 and t.events() == []


# --------------------------------------------------------------------- CallMedia wiring

def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker=False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


def _media(tmp_path: Path, maps: dict[int, dict[int, CodecInfo]], **kw) -> CallMedia:
    return CallMedia(tmp_path / "m.rtp", codecs_for_side=lambda d: maps[d], **kw)


def test_callmedia_uses_the_event_pt_of_each_direction(tmp_path: Path) -> None:
    te = CodecInfo("telephone-event", 8000)
    pcmu = CodecInfo("PCMU", 8000)
    # direction 0 sends events on 96, direction 1 on 101; 96 in direction 1 is audio
    cm = _media(tmp_path, {0: {0: pcmu, 96: te}, 1: {0: pcmu, 101: te, 96: pcmu}})
    seq = {0: 100, 1: 200}
    for i in range(6):
        for d, pt, e in ((0, 96, 3), (1, 101, 7)):
            pay = ev(e, i == 5, i * 160)
            cm.on_rtp(d, i * 20 * MS, "a:1", "b:2", rtp(pt, seq[d], 8000, 10 + d, pay))
            seq[d] += 1
    cm.on_rtp(1, 200 * MS, "a:1", "b:2", rtp(96, seq[1], 9000, 11, ev(9, True, 800)))
    cm.close()
    got = [(e["digit"], e["direction"], e["source"]) for e in cm.dtmf_events]
    assert got == [("3", 0, "rfc4733"), ("7", 1, "rfc4733")]
    assert cm.dtmf_events[0]["ts_ns"] == 0 and cm.dtmf_events[0]["duration_ms"] == 100


def test_callmedia_redaction_keeps_event_payloads_off_disk(tmp_path: Path) -> None:
    from agent.media.medialog import read_media_log

    te = CodecInfo("telephone-event", 8000)
    cm = _media(tmp_path, {0: {101: te}, 1: {}}, redact_dtmf=True)
    for i in range(4):
        cm.on_rtp(0, i * 20 * MS, "a:1", "b:2", rtp(101, 5 + i, 800, 1, ev(1, i == 3, i * 160)))
    cm.close()
    assert [e["digit"] for e in cm.dtmf_events] == ["1"]       # still known in memory (masking)
    recs = list(read_media_log(cm.log_path))
    assert len(recs) == 4 and all(r[6] == b"" for r in recs)


@pytest.mark.skipif(not (SIPP / "dtmf_2833_1.pcap").is_file(), reason="sip-tester not installed")
def test_sipp_bundled_rfc2833_captures(tmp_path: Path) -> None:
    from scapy.all import UDP, rdpcap

    names = [str(i) for i in range(10)] + ["star", "pound"]
    want = "0123456789*#"
    te = CodecInfo("telephone-event", 8000)
    cm = _media(tmp_path, {0: {101: te}, 1: {}})
    offset = 0
    for name in names:
        for p in rdpcap(str(SIPP / f"dtmf_2833_{name}.pcap")):
            cm.on_rtp(0, int(p.time * 1e9) + offset, "a:1", "b:2", bytes(p[UDP].payload))
        offset += 10**9
    cm.close()
    assert "".join(e["digit"] for e in cm.dtmf_events) == want
    assert all(e["duration_ms"] == 280 for e in cm.dtmf_events)


# --------------------------------------------------------------------- in-band

DBM0 = 22400.0


def tone(d: str, ms: int, rate=8000, level_dbm0=-10.0, twist_db=0.0, foff=0.0, phase=0.0):
    r = next(i for i, row in enumerate(_KEYPAD) if d in row)
    c = _KEYPAD[r].index(d)
    n = np.arange(int(rate * ms / 1000))
    a = DBM0 * 10 ** (level_dbm0 / 20)
    return (a * np.sin(2 * np.pi * DTMF_LOW_HZ[r] * (1 + foff) * n / rate + phase)
            + a * 10 ** (twist_db / 20) * np.sin(2 * np.pi * DTMF_HIGH_HZ[c] * (1 + foff) * n / rate))


def keyed(keys: str, on=80, off=80, rate=8000, **kw) -> np.ndarray:
    parts = [np.zeros(rate // 5)]
    for k in keys:
        parts += [tone(k, on, rate, **kw), np.zeros(int(rate * off / 1000))]
    return np.concatenate(parts)


def speech_like(seconds: float, rate=8000, seed=7) -> np.ndarray:
    """See bench/dtmf_false_rate.py (shared generator)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from dtmf_false_rate import speech_like as gen

    return gen(seconds, rate, seed)


def test_inband_no_false_keys_on_speech_like_signal() -> None:
    x = speech_like(60.0)
    assert detect_inband(x) == []
    # ... and keys pressed while the talker is quiet (speech 26 dB down in the background)
    y = x.copy()
    k = keyed("2468", on=80, off=200, level_dbm0=-12)
    y[8000:8000 + k.size] = y[8000:8000 + k.size] * 0.05 + k
    assert "".join(s.digit for s in detect_inband(y)) == "2468"


def test_inband_all_keys_at_levels_twists_and_offsets() -> None:
    keys = "0123456789*#ABCD"
    for kw in ({}, {"level_dbm0": -25}, {"twist_db": -6}, {"twist_db": 4},
               {"foff": 0.015}, {"foff": -0.015}):
        assert "".join(s.digit for s in detect_inband(keyed(keys, **kw))) == keys, kw


def test_inband_rejects_off_frequency_and_short_tones() -> None:
    assert detect_inband(keyed("123", foff=0.05)) == []
    assert detect_inband(keyed("123", on=20, off=60)) == []
    assert "".join(s.digit for s in detect_inband(keyed("123", on=40, off=40))) == "123"


@pytest.mark.parametrize("snr_db", [20, 15, 10])
def test_inband_in_noise(snr_db: int) -> None:
    rng = np.random.default_rng(snr_db)
    x = keyed("147*2580#369")
    p = np.mean(tone("5", 1000) ** 2)
    x = x + rng.normal(0, np.sqrt(p / 10 ** (snr_db / 10)), x.size)
    assert "".join(s.digit for s in detect_inband(x)) == "147*2580#369"


def test_inband_through_g711_at_16k_and_spans() -> None:
    from agent.media.g711 import ULAW_TO_LINEAR
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pcaps"))
    from make_pcaps import linear_to_ulaw

    x8 = keyed("9D", on=100, off=100)
    y8 = ULAW_TO_LINEAR[np.frombuffer(linear_to_ulaw(np.round(x8)), np.uint8)]
    y16 = np.repeat(y8, 2)                                 # crude 16 kHz copy
    spans = detect_inband(y16, 16000)
    assert [s.digit for s in spans] == ["9", "D"]
    # first tone at 200..300 ms: the span covers it within a block length
    assert abs(spans[0].start_sample / 16 - 200) <= 30 and abs(spans[0].end_sample / 16 - 300) <= 30


def test_inband_streaming_equals_one_shot() -> None:
    from agent.media.dtmf import InbandDtmfDetector

    x = keyed("0518", on=60, off=50)
    det = InbandDtmfDetector(8000)
    for i in range(0, x.size, 333):
        det.feed(x[i:i + 333])
    assert det.finish() == detect_inband(x)

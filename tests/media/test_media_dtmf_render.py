"""In-band DTMF and PCI masking through render_recording, and the recorder's DTMF merge."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np

from agent.media.g711 import linear_to_ulaw
from agent.media.render import DTMF_MASK_GUARD_MS, render_recording
from agent.media.sequencer import CallMedia
from agent.media.timeline import CodecInfo, StreamSpec
from agent.recorder import dtmf_plan, merge_inband_dtmf

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
CODECS = {0: CodecInfo("PCMU", 8000), 101: CodecInfo("telephone-event", 8000)}
KEY5 = (770, 1336)


def rtp(seq, ts, ssrc, pt, payload):
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def signal(side: int, seconds: float, keys: list[tuple[float, float, tuple[int, int]]]):
    """A background tone (300 Hz caller, 500 Hz callee) with DTMF pairs replacing it."""
    n = np.arange(int(seconds * 8000))
    x = 3000 * np.sin(2 * np.pi * (300 if side == 0 else 500) * n / 8000)
    for start_s, dur_s, (fl, fh) in keys:
        a, b = int(start_s * 8000), int((start_s + dur_s) * 8000)
        m = n[a:b]
        x[a:b] = 6000 * np.sin(2 * np.pi * fl * m / 8000) + 5000 * np.sin(2 * np.pi * fh * m / 8000)
    return x


def packets(side: int, x: np.ndarray):
    out = []
    for k in range(x.size // 160):
        pay = linear_to_ulaw(np.round(x[k * 160:(k + 1) * 160]).astype(np.int16))
        out.append((T0 + k * 20 * MS, side, rtp(100 + k, 1000 + 160 * k, 0x10 + side, 0, pay)))
    return out


def render(tmp_path: Path, pkts, name: str, **kw):
    cm = CallMedia(tmp_path / f"{name}.media")
    for arrival, d, data in sorted(pkts, key=lambda p: (p[0], p[1])):
        cm.on_rtp(d, arrival, "10.0.0.1:4000", "10.0.0.2:5000", data)
    cm.close()
    specs = [StreamSpec(i.index, i.side, dict(CODECS)) for i in cm.streams]
    res = render_recording(cm.log_path, specs, tmp_path / f"{name}.wav", fmt="wav", channels=2,
                           sample_rate_hz=8000, start_ns=T0, **kw)
    with wave.open(str(res.path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return res, pcm.astype(np.float64)


def band_power(x: np.ndarray, f: float) -> float:
    n = np.arange(x.size)
    return abs(np.sum(x * np.exp(-2j * np.pi * f * n / 8000))) ** 2 / max(x.size, 1) ** 2


def test_inband_found_and_masked_rest_unchanged(tmp_path: Path) -> None:
    x0 = signal(0, 3.0, [(1.0, 0.12, KEY5), (2.0, 0.1, (941, 1477))])   # '5', '#'
    x1 = signal(1, 3.0, [])
    pkts = packets(0, x0) + packets(1, x1)
    plain, a = render(tmp_path, pkts, "plain", inband_dtmf_sides=(0, 1))
    assert [(e["digit"], e["direction"], e["source"]) for e in plain.dtmf] == [
        ("5", 0, "inband"), ("#", 0, "inband")]
    assert abs((plain.dtmf[0]["ts_ns"] - T0) / MS - 1000) <= 30
    masked, b = render(tmp_path, pkts, "masked", inband_dtmf_sides=(0,), mask_inband=True)
    assert masked.masked_ms > 0
    for e in masked.dtmf:
        s = (e["ts_ns"] - T0) // MS * 8
        seg = b[s:s + e["duration_ms"] * 8, 0]
        assert np.all(seg == 0)                      # silence, so no energy at the pair
        assert np.all(b[s:s + e["duration_ms"] * 8, 1] == 0)
    # every key press sample is silent in the masked recording
    for start_s, dur_s in ((1.0, 0.12), (2.0, 0.1)):
        seg = b[int(start_s * 8000):int((start_s + dur_s) * 8000), 0]
        assert band_power(seg, 770) < 1e-6 and band_power(seg, 1477) < 1e-6
    # outside the masked spans (and their guard) the audio is sample-identical
    keep = np.ones(b.shape[0], dtype=bool)
    guard = (DTMF_MASK_GUARD_MS + 30) * 8
    for e in masked.dtmf:
        s = (e["ts_ns"] - T0) // MS * 8
        keep[max(0, s - guard):s + e["duration_ms"] * 8 + guard] = False
    assert np.array_equal(a[keep], b[keep])
    assert keep.sum() > 0.75 * keep.size


def test_masking_signalled_spans_both_directions(tmp_path: Path) -> None:
    x0 = signal(0, 2.0, [])
    x1 = signal(1, 2.0, [])
    span = (T0 + 500 * MS, T0 + 700 * MS)
    res, b = render(tmp_path, packets(0, x0) + packets(1, x1), "spans", mask_spans_ns=[span])
    lo, hi = (500 - DTMF_MASK_GUARD_MS) * 8, (700 + DTMF_MASK_GUARD_MS) * 8
    assert np.all(b[lo:hi] == 0)
    assert np.any(b[lo - 80:lo] != 0) and np.any(b[hi:hi + 80] != 0)
    assert res.dtmf == []


def test_dtmf_plan_and_merge() -> None:
    record = {"start_ts_ns": T0, "callerdtmf": "1", "destinationdtmf": "",
              "dtmf": [{"digit": "1", "side": "caller", "offset_ms": 500, "source": "rfc4733",
                        "duration_ms": 100},
                       {"digit": "#", "side": "caller", "offset_ms": 900, "source": "sip_info",
                        "duration_ms": None}]}
    dirs, spans = dtmf_plan(record, mask=True)
    assert dirs == (1,)
    assert spans == [(T0 + 500 * MS, T0 + 600 * MS), (T0 + 900 * MS, T0 + 1150 * MS)]
    assert dtmf_plan(record, mask=False) == ((1,), [])
    inband = [{"digit": "9", "direction": 1, "ts_ns": T0 + 700 * MS, "duration_ms": 80,
               "source": "inband"}]
    merged = merge_inband_dtmf(record, inband, redact=False)
    assert merged["callerdtmf"] == "1#" and merged["destinationdtmf"] == "9"
    assert [p["offset_ms"] for p in merged["dtmf"]] == [500, 700, 900]
    red = merge_inband_dtmf(record, inband, redact=True)
    assert red["callerdtmf"] == "" and red["destinationdtmf"] == ""
    assert all(p["digit"] == "" for p in red["dtmf"])
    assert record["dtmf"][0]["digit"] == "1"          # the input is not modified

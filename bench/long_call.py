"""Memory flatness and speed of the media path: MediaCapture (the capture loop's append),
then sequence_capture + render_recording (what a recorder worker does when the call ends).

Two scenarios, each run in its own child process so each peak RSS is its own:

* ``long``: one synthetic call of ``--minutes`` (default 60) of two-way PCMU at 50 pkt/s per
  direction, with 0.5 % loss and some reordering, captured through ``MediaCapture`` then
  rendered to MP3 (mono, 16 kHz). A short call (``--short-minutes``) is run the same way
  as the baseline: flat memory means the two peaks are about equal.
* ``many``: ``--calls`` (default 500) concurrent calls of ``--seconds`` each, packets
  interleaved across calls as a SPAN port would deliver them, then every call rendered.

Prints packets/s of the capture side, audio-seconds rendered per CPU-second and peak RSS.
Usage: python3 bench/long_call.py [--minutes 60] [--calls 500] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from agent.media.g711 import linear_to_ulaw  # noqa: E402
from agent.media.render import render_recording  # noqa: E402
from agent.media.stream import MediaCapture, sequence_capture  # noqa: E402
from agent.media.timeline import CodecInfo, StreamSpec  # noqa: E402

T0 = 1_700_000_000_000_000_000
PKT_NS = 20_000_000
CODECS = {0: CodecInfo("PCMU", 8000), 101: CodecInfo("telephone-event", 8000)}


def _payloads() -> list[bytes]:
    """50 distinct 20 ms PCMU payloads (one second of a 440/1000 Hz tone pair)."""
    t = np.arange(8000) / 8000
    tone = (6000 * np.sin(2 * np.pi * 440 * t) + 2000 * np.sin(2 * np.pi * 1000 * t))
    u = linear_to_ulaw(tone.astype(np.int16))
    return [u[i * 160:(i + 1) * 160] for i in range(50)]


def _packet(seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_long(minutes: float, workdir: Path, fmt: str) -> dict:
    payloads = _payloads()
    n = int(minutes * 60 * 50)
    cm = MediaCapture(workdir / "long.raw")
    t_cap, c_cap = time.perf_counter(), _cpu()
    packets = 0
    for k in range(n):
        arr = T0 + k * PKT_NS
        for d in (0, 1):
            if (k * 7 + d) % 200 == 0:
                continue  # 0.5 % loss
            kk = k - 1 if (k % 97 == 1 and d == 1) else k  # occasional swap → reorder
            if k % 97 == 0 and d == 1:
                kk = k + 1
            data = _packet(1000 + kk, 160 * kk, 0x5000 + d, payloads[kk % 50])
            cm.on_rtp(d, arr + d * 3_000_000, "10.0.0.1:4000", "10.0.0.2:5000", data)
            packets += 1
    cm.close()
    cap_s = time.perf_counter() - t_cap
    cap_cpu = _cpu() - c_cap
    rss_capture = _peak_rss_mb()
    c_r = _cpu()
    t_r = time.perf_counter()
    seq = sequence_capture(cm.log_path, workdir / "long.media", cm.plan({0: CODECS, 1: CODECS}))
    specs = [StreamSpec(i.index, i.side, dict(CODECS)) for i in seq.streams]
    res = render_recording(seq.log_path, specs, workdir / f"long.{fmt}", fmt=fmt,
                           channels=1, sample_rate_hz=16000)
    render_s = time.perf_counter() - t_r
    render_cpu = _cpu() - c_r
    return {
        "scenario": "long", "minutes": minutes, "packets": packets,
        "capture_pkts_per_s": round(packets / cap_s), "capture_cpu_s": round(cap_cpu, 2),
        "media_log_mb": round(cm.log.bytes_written / 2**20, 1),
        "lost": [s.stats.lost for s in seq.streams],
        "reordered": [s.stats.reordered for s in seq.streams],
        "render_wall_s": round(render_s, 2), "render_cpu_s": round(render_cpu, 2),
        "audio_s_per_cpu_s": round(res.duration_ms / 1000 / max(render_cpu, 1e-9), 1),
        "duration_ms": res.duration_ms, "fmt": fmt,
        "peak_rss_after_capture_mb": round(rss_capture, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def run_many(calls: int, seconds: float, workdir: Path, fmt: str) -> dict:
    payloads = _payloads()
    media = [MediaCapture(workdir / f"c{c}.raw") for c in range(calls)]
    n = int(seconds * 50)
    t_cap, c_cap = time.perf_counter(), _cpu()
    packets = 0
    for k in range(n):
        base = T0 + k * PKT_NS
        for c, cm in enumerate(media):
            arr = base + c * 1000
            for d in (0, 1):
                data = _packet(k + c, 160 * k + c, (c << 1) | d, payloads[k % 50])
                cm.on_rtp(d, arr, "10.0.0.1:4000", "10.0.0.2:5000", data)
                packets += 1
    for cm in media:
        cm.close()
    cap_s = time.perf_counter() - t_cap
    cap_cpu = _cpu() - c_cap
    rss_capture = _peak_rss_mb()
    c_r, t_r = _cpu(), time.perf_counter()
    audio_ms = 0
    for c, cm in enumerate(media):
        seq = sequence_capture(cm.log_path, workdir / f"c{c}.media", cm.plan({0: CODECS, 1: CODECS}))
        os.unlink(cm.log_path)
        specs = [StreamSpec(i.index, i.side, dict(CODECS)) for i in seq.streams]
        res = render_recording(seq.log_path, specs, workdir / f"c{c}.{fmt}", fmt=fmt,
                               channels=1, sample_rate_hz=16000)
        audio_ms += res.duration_ms
        os.unlink(res.path)
        os.unlink(seq.log_path)
    render_cpu = _cpu() - c_r
    return {
        "scenario": "many", "calls": calls, "seconds": seconds, "packets": packets,
        "capture_pkts_per_s": round(packets / cap_s), "capture_cpu_s": round(cap_cpu, 2),
        "peak_rss_after_capture_mb": round(rss_capture, 1),
        "render_wall_s": round(time.perf_counter() - t_r, 2),
        "render_cpu_s": round(render_cpu, 2),
        "audio_s_per_cpu_s": round(audio_ms / 1000 / max(render_cpu, 1e-9), 1),
        "fmt": fmt, "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--short-minutes", type=float, default=2.0)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fmt", default="mp3", choices=("mp3", "wav"))
    ap.add_argument("--child", choices=("long", "many"))
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="calln-bench-") as tmp:
            if args.child == "long":
                out = run_long(args.minutes, Path(tmp), args.fmt)
            else:
                out = run_many(args.calls, args.seconds, Path(tmp), args.fmt)
        print(json.dumps(out))
        return
    runs = [["--child", "long", "--minutes", str(args.short_minutes)],
            ["--child", "long", "--minutes", str(args.minutes)],
            ["--child", "many", "--calls", str(args.calls), "--seconds", str(args.seconds)]]
    for extra in runs:
        cmd = [sys.executable, __file__, "--fmt", args.fmt, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        print(proc.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()

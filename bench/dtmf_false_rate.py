#!/usr/bin/env python3
"""False-detection rate of the in-band DTMF detector on speech-like signals without tones.

Signals: (1) synthetic speech: voiced syllables (glottal pulse train, pitch gliding 90-260 Hz,
through three moving formant resonators), unvoiced noise bursts, pauses, a syllable-rate
envelope and a random level per syllable; (2) white and pink-ish noise; (3) the real PCMA
speech of sip-tester's g711a.pcap if installed, looped with random gains. Prints false keys
per hour of audio for each. Usage: ``python3 bench/dtmf_false_rate.py [minutes]`` (default 20).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.media.dtmf import InbandDtmfDetector  # noqa: E402


def _resonate(x: np.ndarray, f_hz: np.ndarray, bw_hz: float, rate: int) -> np.ndarray:
    """Two-pole resonator with a per-sample centre frequency (a formant)."""
    r = np.exp(-np.pi * bw_hz / rate)
    a1 = -2 * r * np.cos(2 * np.pi * f_hz / rate)
    a2 = r * r
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    for i in range(x.size):     # plain loop: fine for benchmark lengths at 8 kHz
        v = x[i] - a1[i] * y1 - a2 * y2
        y[i] = v
        y2, y1 = y1, v
    return y


def speech_like(seconds: float, rate: int = 8000, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_total = int(seconds * rate)
    out = np.zeros(n_total)
    pos = 0
    while pos < n_total:
        kind = rng.choice(["voiced", "voiced", "voiced", "unvoiced", "pause"])
        n = int(rate * rng.uniform(0.08, 0.35))
        n = min(n, n_total - pos)
        if kind == "voiced":
            f0 = np.linspace(rng.uniform(90, 260), rng.uniform(90, 260), n)
            phase = np.cumsum(f0 / rate)
            pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
            src = pulses + 0.02 * rng.normal(size=n)
            seg = np.zeros(n)
            for lo, hi, bw in ((300, 900, 90), (850, 2300, 120), (2200, 3200, 180)):
                f = np.linspace(rng.uniform(lo, hi), rng.uniform(lo, hi), n)
                seg += _resonate(src, f, bw, rate) * rng.uniform(0.3, 1.0)
        elif kind == "unvoiced":
            seg = rng.normal(size=n) * np.linspace(1, 0.3, n)
        else:
            seg = 0.01 * rng.normal(size=n)
        env = np.sin(np.pi * np.arange(n) / max(n, 1)) ** 0.5
        seg = seg * env
        peak = np.max(np.abs(seg)) or 1.0
        out[pos:pos + n] = seg / peak * rng.uniform(2000, 20000)
        pos += n
    return out


def real_speech(seconds: float, seed: int = 3) -> np.ndarray | None:
    pcap = Path("/usr/share/sip-tester/g711a.pcap")
    if not pcap.is_file():
        return None
    from scapy.all import UDP, rdpcap

    from agent.media.g711 import ALAW_TO_LINEAR

    pl = b"".join(bytes(p[UDP].payload)[12:] for p in rdpcap(str(pcap)) if UDP in p)
    x = ALAW_TO_LINEAR[np.frombuffer(pl, np.uint8)].astype(np.float64)
    rng = np.random.default_rng(seed)
    reps = int(seconds * 8000 // x.size) + 1
    return np.concatenate([np.clip(x * rng.uniform(0.5, 6), -32768, 32767) for _ in range(reps)])


def false_rate(x: np.ndarray, rate: int = 8000) -> tuple[int, float]:
    det = InbandDtmfDetector(rate)
    for i in range(0, x.size, rate):
        det.feed(x[i:i + rate])
    found = det.finish()
    hours = x.size / rate / 3600
    return len(found), len(found) / hours


def main(argv: list[str]) -> int:
    minutes = float(argv[0]) if argv else 20.0
    seconds = minutes * 60
    rng = np.random.default_rng(11)
    signals = {
        "speech-like (synthetic)": speech_like(seconds),
        "white noise": rng.normal(0, 4000, int(seconds * 8000)),
        "pink-ish noise": np.cumsum(rng.normal(0, 600, int(seconds * 8000))) * 0.02,
    }
    real = real_speech(seconds)
    if real is not None:
        signals["g711a.pcap speech (looped)"] = real
    for name, x in signals.items():
        t = time.perf_counter()
        n, per_hour = false_rate(x)
        dt = time.perf_counter() - t
        print(f"{name:30s} {x.size / 8000 / 60:6.1f} min  false keys: {n:3d}  "
              f"({per_hour:.2f}/hour)  detector {x.size / 8000 / dt:.0f}x real time")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

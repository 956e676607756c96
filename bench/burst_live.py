"""A burst of endings, live: bench/burst_end.py's capture (``--dialogs`` answered dialogs that
all fall silent within half a second, one real call with media and a BYE running through the
burst) sent into a veth pair at its own pace, ``calln-agent run`` capturing on the other end
with the agent's default ring and delivering to a local receiver on 127.0.0.1.

The burst dialogs carry no media by default (``--burst-packets 0``): answered dialogs that
never carry media, which end together by the signalling timeout (set to ``--timeout-s``, as is
the RTP timeout); with media they end by RTP timeout and each is recorded and uploaded too.

Prints: frames sent and captured, ring and kernel drops (target 0), the CPU of the capture
process in the second the burst ended and in its slowest second (any 1 s window), and whether
the real call came out exact: its record (from the spool, which retains delivered calls here)
answered, ended by ``bye``, its duration to the millisecond and every RTP packet of both
directions; and the stereo WAV the receiver stored holds 160 non-zero samples per packet in
each channel (the renderer fills a lost packet with zeros).

Needs root (veth, CAP_NET_RAW); nothing leaves the machine.

    sudo python3 bench/burst_live.py [--dialogs 10000] [--real-s 15] [--timeout-s 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "live")]

from _live_testlib import AgentProcess, pcap_frames, veth_pair  # noqa: E402
from agent.receiver import ReceiverServer  # noqa: E402
from bench.burst_end import (BURST_AT_NS, REAL_CALLID, real_call_packets, real_call_problems,  # noqa: E402
                             write_burst)
from bench.live_rate import deployed_config, metric, proc_cpu_s, reap_descendants, send_paced  # noqa: E402

SAMPLE_EVERY_S = 0.1
DELIVERY_WAIT_S = 600.0


class CpuSampler(threading.Thread):
    """(monotonic time, CPU seconds) of one process every SAMPLE_EVERY_S, for per-second figures."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), proc_cpu_s(self.pid)))
            except OSError:
                return
            self.stop.wait(SAMPLE_EVERY_S)

    def cpu_between(self, lo: float, hi: float) -> float:
        """CPU seconds used between two monotonic times (the samples nearest inside)."""
        inside = [cpu for t, cpu in self.samples if lo <= t <= hi]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0

    def slowest_second(self, lo: float = 0.0, hi: float = float("inf")) -> tuple[float, float]:
        """(CPU seconds, start time) of the busiest 1 s window starting between ``lo`` and ``hi``."""
        best = (0.0, 0.0)
        for t, _ in self.samples:
            if lo <= t <= hi:
                best = max(best, (self.cpu_between(t, t + 1.0), t))
        return best


def nonzero_samples_per_channel(wav_bytes: bytes) -> list[int]:
    import numpy as np
    with wave.open(io.BytesIO(wav_bytes)) as w:
        channels = w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    return [int(np.count_nonzero(pcm[:, c])) for c in range(channels)]


def spooled_record(spool: Path, callid: str) -> dict | None:
    for path in (spool / "calls").glob("*/record.json"):
        text = path.read_text()
        if callid in text:
            record = json.loads(text)
            if record.get("callid") == callid:
                return record
    return None


def audio_problems(rx: ReceiverServer, real_s: float) -> list[str]:
    stored = [c for c in rx.stored_calls() if c.v1_fields().get("callerphone") == "1999999"]
    if len(stored) != 1:
        return [f"the receiver stored the real call {len(stored)} times"]
    want = real_call_packets(real_s) * 160
    got = nonzero_samples_per_channel(stored[0].audio)
    return [] if got == [want, want] else [f"stored audio: {got} non-zero samples per channel, expected {want} each"]


def run_burst(dialogs: int, real_s: float, timeout_s: float, burst_packets: int, port: int, work: Path) -> dict:
    rx = ReceiverServer(work / "received", username="agent", password="secret")
    url, ca = rx.start()
    cap = work / "burst.pcap"
    write_burst(cap, dialogs=dialogs, real_s=real_s, burst_packets=burst_packets)
    records = pcap_frames(cap)
    cap.unlink()
    # the last frame of the burst: the dialogs fall silent by then, and end timeout_s later
    burst_last = max(i for i, (ts, frame) in enumerate(records) if BURST_AT_NS <= ts < BURST_AT_NS + 10**9)
    real_sip = [i for i, (_, frame) in enumerate(records) if f"Call-ID: {REAL_CALLID}".encode() in frame]
    answer, bye = (next(i for i in real_sip if start in records[i][1]) for start in (b"SIP/2.0 200 OK", b"BYE sip:"))
    spool = work / "spool"
    # the agent's defaults, but WAV (its samples are checked) and delivered calls kept (the record is read back)
    cfg = deployed_config(work / "agent.toml", url=url, ca=ca, spool=spool, port=port, fmt="wav",
                          extra=f"[sip]\nrtp_timeout_s = {timeout_s}\nsignalling_timeout_s = {timeout_s}\n",
                          keep=("retention_days = 1",))
    cfg.write_text(cfg.read_text().replace("[recording]\n", "[recording]\nchannels = 2\n"))
    try:
        with veth_pair() as (a, b):
            agent = AgentProcess(cfg, [b], work / "agent.log")
            try:
                agent.wait_ready()
                cpid = int(re.search(r"agent\.run\[(\d+)\]: capturing on", agent.log_text()).group(1))
                sampler = CpuSampler(cpid)
                sampler.start()
                sent_mono = {burst_last: 0.0, 0: 0.0, answer: 0.0, bye: 0.0}
                achieved = send_paced(a, records, sent_mono).rate_pps
                deadline = time.monotonic() + DELIVERY_WAIT_S
                metrics = ""
                delivered_mono = None
                while time.monotonic() < deadline:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                        metrics = resp.read().decode()
                    finished = sum(int(v) for v in re.findall(
                        r'^calln_calls_finished_total\{reason="[^"]+"\} (\d+)', metrics, re.M))
                    if delivered_mono is None and any(c.v1_fields().get("callerphone") == "1999999"
                                                      for c in rx.stored_calls()):
                        delivered_mono = time.monotonic()
                    if finished >= dialogs + 1 and delivered_mono is not None:
                        break
                    time.sleep(1.0)
                sampler.stop.set()
                sampler.join()
            finally:
                agent.stop(timeout_s=600)
                reap_descendants()
        # the endings fall due within the burst's half second: its busiest second around then
        ended_at = sent_mono[burst_last] + timeout_s
        burst_s, _ = sampler.slowest_second(ended_at - 1.0, ended_at + 1.0)
        slowest_s, slowest_at = sampler.slowest_second()
        # Live, packet time is the kernel's capture time: the duration is what the sender's clock
        # measured between the answer and the BYE (1 ms of slack: both are floored, µs apart).
        duration_ms = int((sent_mono[bye] - sent_mono[answer]) * 1000)
        real = spooled_record(spool, REAL_CALLID)
        problems = real_call_problems(real, real_s, duration_ms, 1) + audio_problems(rx, real_s)
        return {"frames": len(records), "achieved_pps": achieved,
                "captured": metric(metrics, "calln_packets_total"),
                "ring_drops": metric(metrics, 'calln_drops_total{kind="ring"}'),
                "kernel_drops": metric(metrics, 'calln_drops_total{kind="kernel"}'),
                "finished": finished, "burst_cpu_s": burst_s,
                "backpressure": metric(metrics, "calln_render_backpressure_total"),
                "per_second": [sampler.cpu_between(t, t + 1.0) for t in
                               (sent_mono[0] + k for k in range(int(sampler.samples[-1][0] - sent_mono[0])))],
                "delivered_after_s": delivered_mono - sent_mono[bye],
                "slowest_cpu_s": slowest_s, "slowest_at_s": slowest_at - sent_mono[0],
                "burst_end_at_s": ended_at - sent_mono[0], "problems": problems,
                "duration_ms": real and real["duration_ms"], "sent_duration_ms": duration_ms}
    finally:
        rx.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogs", type=int, default=10_000)
    ap.add_argument("--real-s", type=float, default=15.0, help="the real call's media, seconds")
    ap.add_argument("--timeout-s", type=float, default=5.0, help="[sip] rtp_timeout_s and signalling_timeout_s")
    ap.add_argument("--burst-packets", type=int, default=0, help="RTP packets each way per burst dialog")
    ap.add_argument("--port", type=int, default=19733, help="the agent's metrics port")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (veth pair, CAP_NET_RAW)")
    with tempfile.TemporaryDirectory(prefix="calln-burst-live-") as tmp:
        r = run_burst(args.dialogs, args.real_s, args.timeout_s, args.burst_packets, args.port, Path(tmp))
    print(f"{args.dialogs:,} dialogs ending together live (load {os.getloadavg()[0]:.2f}): "
          f"{r['frames']:,} frames sent ({r['achieved_pps']:,.0f}/s average), {r['captured']:,} captured, "
          f"ring drops {r['ring_drops']}, kernel drops {r['kernel_drops']}; {r['finished']:,} calls finished")
    print(f"capture process CPU: {r['burst_cpu_s']:.2f} s in the second the burst ended "
          f"(t={r['burst_end_at_s']:.1f} s), slowest second {r['slowest_cpu_s']:.2f} s (t={r['slowest_at_s']:.1f} s)")
    print(f"render back-pressure waits of the capture loop: {r['backpressure']}; capture CPU-s per second "
          "from the first frame: " + " ".join(f"{c:.2f}" for c in r["per_second"]))
    print(f"real call: delivered {r['delivered_after_s']:.1f} s after its BYE, {r['duration_ms']} ms (sender's clock: {r['sent_duration_ms']} ms), " +
          ("exact (bye, duration to the ms, every packet both ways, the stored audio)"
                           if not r["problems"] else "WRONG: " + "; ".join(r["problems"])))
    return 2 if r["problems"] or r["ring_drops"] or r["kernel_drops"] else 0


if __name__ == "__main__":
    sys.exit(main())

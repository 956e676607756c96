"""Live capture rate: push bench/synth.py's synthetic calls into a veth pair at fixed rates and
measure what ``calln-agent run`` (capturing on the other end) keeps up with.

Needs root (veth, CAP_NET_RAW). Everything stays on this machine: the veth pair has no
addresses, the agent delivers to a local receiver on 127.0.0.1. No tcpreplay needed: frames are
sent with an AF_PACKET socket in 1 ms bursts. Prints, per rate: achieved send rate, ring and
kernel drops, calls finished, capture-process RSS and CPU per 1,000 pps.

    sudo python3 bench/live_rate.py [--rates 10000,20000,40000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "live")]

from _live_testlib import AgentProcess, pcap_frames, veth_pair, write_config  # noqa: E402
from agent.receiver import ReceiverServer  # noqa: E402
from bench.synth import write_calls  # noqa: E402

CALL_S = 10.0                      # each synthetic call: 10 s of 20 ms PCMU both ways


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0          # utime + stime, clock ticks


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metric(text: str, name: str) -> int:
    m = re.search(rf"^{re.escape(name)} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def _send(ifname: str, frames: list[bytes], pps: int) -> float:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    burst = max(1, pps // 1000)
    start = time.monotonic()
    sent = 0
    for i in range(0, len(frames), burst):
        for frame in frames[i:i + burst]:
            s.send(frame)
        sent += min(burst, len(frames) - i)
        delay = start + sent / pps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    s.close()
    return sent / (time.monotonic() - start)


def run_rate(pps: int, seconds: float, work: Path, url: str, ca: Path, port: int) -> dict:
    calls = max(1, int(pps * seconds / (2 * CALL_S * 50)))
    cap = work / f"synth-{pps}.pcap"
    write_calls(cap, calls=calls, concurrent=calls, duration_s=CALL_S)
    frames = [f for _, f in pcap_frames(cap)]
    cap.unlink()
    cfg = write_config(work / f"agent-{pps}.toml", url=url, ca=ca, spool=work / f"spool-{pps}",
                       extra="")
    text = cfg.read_text().replace("buffer_mb = 16", "buffer_mb = 64").replace('listen = ""', f'listen = "127.0.0.1:{port}"')
    cfg.write_text(text)
    with veth_pair() as (a, b):
        agent = AgentProcess(cfg, [b], work / f"agent-{pps}.log")
        try:
            agent.wait_ready()
            m = re.search(r"agent\.run\[(\d+)\]: capturing on", agent.log_text())
            cpid = int(m.group(1))
            cpu0 = _proc_cpu_s(cpid)
            t0 = time.monotonic()
            achieved = _send(a, frames, pps)
            time.sleep(1.5)
            elapsed = time.monotonic() - t0
            cpu = _proc_cpu_s(cpid) - cpu0
            rss = _proc_rss_mb(cpid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
        finally:
            agent.stop(timeout_s=300)
    finished = sum(int(v) for v in re.findall(r'^calln_calls_finished_total\{reason="[^"]+"\} (\d+)', metrics, re.M))
    return {"pps": pps, "achieved_pps": achieved, "frames": len(frames),
            "captured": _metric(metrics, "calln_packets_total"),
            "ring_drops": _metric(metrics, 'calln_drops_total{kind="ring"}'),
            "kernel_drops": _metric(metrics, 'calln_drops_total{kind="kernel"}'),
            "calls": calls, "finished_before_stop": finished, "rss_mb": rss,
            "cpu_pct": 100 * cpu / elapsed, "cpu_pct_per_kpps": 100 * cpu / elapsed / (achieved / 1000)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10000,20000,40000")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=19731)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calln-live-bench-"))
    rx = ReceiverServer(work / "received", username="agent", password="secret")
    url, ca = rx.start()
    try:
        print(f"{'rate':>7} {'sent/s':>8} {'frames':>8} {'captured':>9} {'ring drop':>9} {'kern drop':>9} "
              f"{'calls':>6} {'ended':>6} {'RSS MB':>7} {'CPU %':>6} {'CPU%/kpps':>9}")
        for pps in (int(r) for r in args.rates.split(",")):
            r = run_rate(pps, args.seconds, work, url, ca, args.port)
            print(f"{r['pps']:>7} {r['achieved_pps']:>8.0f} {r['frames']:>8} {r['captured']:>9} "
                  f"{r['ring_drops']:>9} {r['kernel_drops']:>9} {r['calls']:>6} {r['finished_before_stop']:>6} "
                  f"{r['rss_mb']:>7.0f} {r['cpu_pct']:>6.1f} {r['cpu_pct_per_kpps']:>9.2f}", flush=True)
    finally:
        rx.stop()


if __name__ == "__main__":
    main()

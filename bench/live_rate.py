"""Live capture rate: push bench/synth.py's synthetic calls into a veth pair at fixed rates and
measure what ``calln-agent run`` (capturing on the other end) keeps up with.

Needs root (veth, CAP_NET_RAW). Everything stays on this machine: the veth pair has no
addresses, the agent delivers to a local receiver on 127.0.0.1. No tcpreplay needed: frames are
sent with an AF_PACKET socket in 1 ms bursts. Prints, per rate: achieved send rate, ring and
kernel drops, calls finished, capture-process RSS and CPU per 1,000 pps, and the CPU of the
agent's whole process tree (capture, forkserver, recorder workers: the bench is a child
subreaper and reaps every descendant) from start to the end of its shutdown, which records and
spools every call: audio-seconds recorded per CPU-second of the tree = concurrent calls one
core records (``--format`` mp3 by default, as delivered).

    sudo python3 bench/live_rate.py [--rates 10000,20000,40000] [--seconds 20] [--format mp3]

Frames are sent at their capture's own pace (its timestamps, as tcpreplay replays), so every
call arrives in real time; the calls start over the first ``CALL_S`` seconds, so at the
middle of the run all of them are up at once: ``--rates`` is the average packet rate over
``--seconds`` and the peak is twice it (``--rates 50000`` = 1,000 concurrent calls at the peak,
100,000 packets/s).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
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


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0          # utime + stime, clock ticks


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str) -> int:
    m = re.search(rf"^{re.escape(name)} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def send_paced(ifname: str, records: list[tuple[int, bytes]], sent_mono: dict[int, float] | None = None) -> float:
    """Send the frames at their capture's own pace (as tcpreplay does), in bursts of what is
    due within the next millisecond; returns the average rate achieved. ``sent_mono``: frame
    indexes whose send time (time.monotonic) the caller wants, filled in."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    t0 = records[0][0]
    start = time.monotonic()
    i = 0
    while i < len(records):
        now_ns = t0 + int((time.monotonic() - start) * 1e9) + 1_000_000
        while i < len(records) and records[i][0] <= now_ns:
            s.send(records[i][1])
            if sent_mono is not None and i in sent_mono:
                sent_mono[i] = time.monotonic()
            i += 1
        if i < len(records):
            delay = start + (records[i][0] - t0) / 1e9 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    s.close()
    return len(records) / (time.monotonic() - start)


def reap_descendants() -> None:
    """Wait for every orphaned descendant re-parented to this (subreaper) process."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:
            return


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_rate(pps: int, seconds: float, work: Path, url: str, ca: Path, port: int, fmt: str) -> dict:
    calls = max(1, int(pps * seconds / (2 * CALL_S * 50)))
    cap = work / f"synth-{pps}.pcap"
    write_calls(cap, calls=calls, concurrent=calls, duration_s=CALL_S)
    records = pcap_frames(cap)
    cap.unlink()
    cfg = write_config(work / f"agent-{pps}.toml", url=url, ca=ca, spool=work / f"spool-{pps}",
                       extra="")
    text = cfg.read_text().replace("buffer_mb = 16", "buffer_mb = 64").replace('listen = ""', f'listen = "127.0.0.1:{port}"')
    text = text.replace('format = "wav"', f'format = "{fmt}"').replace("workers = 1", "workers = 0")
    cfg.write_text(text)
    with veth_pair() as (a, b):
        reap_descendants()
        tree0 = children_cpu_s()
        agent = AgentProcess(cfg, [b], work / f"agent-{pps}.log")
        try:
            agent.wait_ready()
            m = re.search(r"agent\.run\[(\d+)\]: capturing on", agent.log_text())
            cpid = int(m.group(1))
            cpu0 = proc_cpu_s(cpid)
            t0 = time.monotonic()
            achieved = send_paced(a, records)
            time.sleep(1.5)
            elapsed = time.monotonic() - t0
            cpu = proc_cpu_s(cpid) - cpu0
            rss = proc_rss_mb(cpid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
        finally:
            agent.stop(timeout_s=600)
            reap_descendants()
        tree_cpu = children_cpu_s() - tree0
    finished = sum(int(v) for v in re.findall(r'^calln_calls_finished_total\{reason="[^"]+"\} (\d+)', metrics, re.M))
    return {"pps": pps, "achieved_pps": achieved, "frames": len(records),
            "captured": metric(metrics, "calln_packets_total"),
            "ring_drops": metric(metrics, 'calln_drops_total{kind="ring"}'),
            "kernel_drops": metric(metrics, 'calln_drops_total{kind="kernel"}'),
            "calls": calls, "finished_before_stop": finished, "rss_mb": rss,
            "cpu_pct": 100 * cpu / elapsed, "cpu_pct_per_kpps": 100 * cpu / elapsed / (achieved / 1000),
            "tree_cpu_s": tree_cpu, "calls_per_core": calls * CALL_S / tree_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10000,20000,40000")
    ap.add_argument("--seconds", type=float, default=2 * CALL_S)
    ap.add_argument("--port", type=int, default=19731)
    ap.add_argument("--format", default="mp3", choices=("mp3", "wav"))
    args = ap.parse_args()
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    work = Path(tempfile.mkdtemp(prefix="calln-live-bench-"))
    rx = ReceiverServer(work / "received", username="agent", password="secret")
    url, ca = rx.start()
    try:
        print(f"{'rate':>7} {'sent/s':>8} {'frames':>8} {'captured':>9} {'ring drop':>9} {'kern drop':>9} "
              f"{'calls':>6} {'ended':>6} {'RSS MB':>7} {'CPU %':>6} {'CPU%/kpps':>9} {'tree CPU s':>10} "
              f"{'calls/core':>10}   (load: {os.getloadavg()[0]:.2f})")
        for pps in (int(r) for r in args.rates.split(",")):
            r = run_rate(pps, args.seconds, work, url, ca, args.port, args.format)
            print(f"{r['pps']:>7} {r['achieved_pps']:>8.0f} {r['frames']:>8} {r['captured']:>9} "
                  f"{r['ring_drops']:>9} {r['kernel_drops']:>9} {r['calls']:>6} {r['finished_before_stop']:>6} "
                  f"{r['rss_mb']:>7.0f} {r['cpu_pct']:>6.1f} {r['cpu_pct_per_kpps']:>9.2f} {r['tree_cpu_s']:>10.1f} "
                  f"{r['calls_per_core']:>10.0f}", flush=True)
    finally:
        rx.stop()


if __name__ == "__main__":
    main()

"""Replay throughput, next to tshark on the same file in the same run.

Generates (once, cached) a synthetic capture of 200 concurrent G.711 calls of 60 s
(about 1.2 million packets), then measures:
  1. ``calln-agent inspect`` (signalling + RTP fast path, no audio) vs ``tshark -q -z sip,stat``
  2. ``calln-agent replay --out DIR --format wav`` (full recording) vs ``tshark -q -z rtp,streams``
  3. ``replay --format mp3``: audio-seconds encoded per CPU-second, and calls per core
Each command runs in a child process; CPU time and peak RSS are that child's.

    python3 bench/replay_rate.py [--calls 200] [--duration-s 60] [--skip-tshark]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synth import write_calls  # noqa: E402


WORKER_CPU = re.compile(r"recorder worker CPU: ([0-9.]+) s")


def run_child(cmd: list[str]) -> tuple[float, float, int]:
    """Run cmd; return (wall s, CPU s, peak RSS in MiB of the main process).

    CPU counts the process and its waited-for children; the recorder's worker processes
    (children of a forkserver) are not waited for by us, so `replay --counters` reports
    their CPU itself and it is added here."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # A fresh process per command, so ru_maxrss is that command's own peak.
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys;"
               "p=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE,text=True);"
               "sys.stderr.write(p.stderr);"
               "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "print(r.ru_maxrss, file=sys.stderr);sys.exit(p.returncode)", *cmd]
    proc = subprocess.run(wrapper, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    workers = WORKER_CPU.search(proc.stderr)
    if workers:
        cpu += float(workers.group(1))
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return wall, cpu, peak_kib // 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--capture", help="use this capture instead of generating one")
    ap.add_argument("--skip-tshark", action="store_true")
    ap.add_argument("--skip-mp3", action="store_true")
    args = ap.parse_args()

    cache = Path(tempfile.gettempdir()) / f"calln-bench-{args.calls}x{int(args.duration_s)}s.pcap"
    capture = Path(args.capture) if args.capture else cache
    if not capture.exists():
        print(f"generating {capture} ...", flush=True)
        write_calls(capture, calls=args.calls, concurrent=args.calls, duration_s=args.duration_s)
    packets = int(subprocess.run(["capinfos", "-c", "-M", str(capture)], capture_output=True, text=True)
                  .stdout.split()[-1]) if shutil.which("capinfos") else None
    if packets is None:
        sys.path.insert(0, str(HERE.parent))
        from agent.capture.pcapfile import read_capture
        packets = sum(1 for _ in read_capture(capture, {}))
    print(f"capture: {capture} ({capture.stat().st_size / 2**20:.0f} MiB, {packets:,} packets, "
          f"{args.calls} calls x {args.duration_s:.0f} s)")
    agent = [sys.executable, "-m", "agent.cli"]
    rows = []

    wall, cpu, rss = run_child(agent + ["inspect", "-q", str(capture)])
    rows.append(("calln-agent inspect", wall, cpu, rss))
    if not args.skip_tshark and shutil.which("tshark"):
        wall, cpu, rss = run_child(["tshark", "-n", "-q", "-r", str(capture), "-z", "sip,stat"])
        rows.append(("tshark -z sip,stat", wall, cpu, rss))
    out = Path(tempfile.mkdtemp(prefix="calln-bench-out-"))
    try:
        wall, cpu, rss = run_child(agent + ["replay", "-q", "--counters", "--out", str(out), "--format", "wav", str(capture)])
        rows.append(("calln-agent replay --format wav", wall, cpu, rss))
        if not args.skip_tshark and shutil.which("tshark"):
            wall, cpu, rss = run_child(["tshark", "-n", "-q", "-r", str(capture), "-z", "rtp,streams"])
            rows.append(("tshark -z rtp,streams", wall, cpu, rss))
        shutil.rmtree(out)
        out.mkdir()
        if not args.skip_mp3:
            wall, cpu, rss = run_child(agent + ["replay", "-q", "--counters", "--out", str(out), "--format", "mp3", str(capture)])
            rows.append(("calln-agent replay --format mp3", wall, cpu, rss))
            mp3_cpu = cpu
    finally:
        shutil.rmtree(out, ignore_errors=True)

    print(f"\n{'command':34} {'wall s':>8} {'CPU s':>8} {'packets/wall-s':>15} {'packets/CPU-s':>14} {'peak RSS':>9}")
    for name, wall, cpu, rss in rows:
        print(f"{name:34} {wall:8.1f} {cpu:8.1f} {packets / wall:15,.0f} {packets / cpu:14,.0f} {rss:7d} MiB")
    by = {name: (wall, cpu) for name, wall, cpu, rss in rows}
    for ours, theirs in (("calln-agent inspect", "tshark -z sip,stat"),
                         ("calln-agent replay --format wav", "tshark -z rtp,streams")):
        if ours in by and theirs in by:
            print(f"{ours} vs {theirs}: {by[theirs][1] / by[ours][1]:.2f}x tshark's rate (CPU time)")
    if not args.skip_mp3:
        audio_s = args.calls * args.duration_s
        per_cpu = audio_s / mp3_cpu
        print(f"MP3 full replay: {audio_s:,.0f} audio-seconds in {mp3_cpu:.1f} CPU-s = {per_cpu:.0f} "
              f"audio-s per CPU-s -> {per_cpu:.0f} concurrent calls per core "
              f"({1000 / per_cpu:.1f} cores for 1,000 concurrent calls)")
    return 0


if __name__ == "__main__":
    os.chdir(HERE.parent)
    sys.exit(main())

"""Replay throughput of the whole process tree, next to tshark on the same file in the same run.

Generates (once, cached under /tmp) two synthetic captures of 200 concurrent G.711 calls of
60 s (about 1.2 million packets, 12,000 audio-seconds): a clean one, and the same calls with
1 % packet loss and 1 % reordering (``bench/synth.py``). For each it measures, CPU of the
whole process tree (the recorder's forkserver and workers included: ``bench/proctree.py``
makes the measuring process a child subreaper):

  * ``calln-agent inspect`` vs ``tshark -q -z sip,stat``;
  * ``calln-agent replay --format wav`` at the call's native rate (8 kHz for G.711) and at a
    fixed 16 kHz, vs ``tshark -q -z rtp,streams``: the ratio is tshark's CPU over ours
    (1.0 = the same CPU), and audio-seconds per CPU-second;
  * ``replay --format mp3`` (the default, 16 kHz): audio-seconds per CPU-second, calls per core;
  * the recorder workers' own CPU (``replay --counters``): the render alone.

The machine's load average is printed first and last: on a shared machine CPU-time ratios
hold better than wall times.

The agent runs from compiled bytecode, as installed (``--no-bytecode-cache``: as the
environment says; with PYTHONDONTWRITEBYTECODE=1 every process compiles the agent again).

    python3 bench/replay_rate.py [--calls 200] [--duration-s 60] [--skip-tshark] [--skip-mp3] [--clean-only]
                                 [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proctree import machine_load, run_tree  # noqa: E402
from synth import write_calls  # noqa: E402

WORKER_CPU = re.compile(r"recorder worker CPU: ([0-9.]+) s")


def capture_for(calls: int, duration_s: float, loss: float, reorder: float) -> Path:
    tag = f"{calls}x{int(duration_s)}s" + (f"-loss{loss:g}-reorder{reorder:g}" if loss or reorder else "")
    path = Path(tempfile.gettempdir()) / f"calln-bench-{tag}.pcap"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        write_calls(path, calls=calls, concurrent=calls, duration_s=duration_s, loss=loss, reorder=reorder)
    return path


def count_packets(capture: Path) -> int:
    if shutil.which("capinfos"):
        out = subprocess.run(["capinfos", "-c", "-M", str(capture)], capture_output=True, text=True).stdout
        return int(out.split()[-1])
    sys.path.insert(0, str(HERE.parent))
    from agent.capture.pcapfile import read_capture
    return sum(1 for _ in read_capture(capture, {}))


# The agent runs from compiled bytecode, as an installed package does (pip compiles it). In a
# source tree under PYTHONDONTWRITEBYTECODE=1 every process (the command, the forkserver)
# would compile the agent's ~170 modules again: ~0.12 CPU-s each, charged to the agent.
PYCACHE = Path(tempfile.gettempdir()) / "calln-bench-pycache"
WARM_UP_CAPTURE = HERE.parent / "pcaps" / "basic_udp.pcap"


def agent_command(args) -> list[str]:
    """How the agent is started: with a bytecode cache outside the tree, warmed once by a
    replay of a small capture in each format (command, forkserver and workers import what
    they import on the bench capture); ``--no-bytecode-cache``: as the environment says."""
    if args.no_bytecode_cache:
        return [sys.executable, "-m", "agent.cli"]
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    agent = [sys.executable, "-m", "agent.cli"]
    out = Path(tempfile.mkdtemp(prefix="calln-bench-warm-"))
    try:
        subprocess.run(agent + ["inspect", "-q", str(WARM_UP_CAPTURE)], check=True, capture_output=True)
        for fmt in ("wav", "mp3"):
            subprocess.run(agent + ["replay", "-q", "--out", str(out / fmt), "--format", fmt, str(WARM_UP_CAPTURE)],
                           check=True, capture_output=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return agent


def bench_capture(capture: Path, audio_s: float, args, agent: list[str]) -> None:
    packets = count_packets(capture)
    print(f"\ncapture: {capture.name} ({capture.stat().st_size / 2**20:.0f} MiB, {packets:,} packets, "
          f"{audio_s:,.0f} audio-s)")
    rows = []          # (name, usage, worker CPU or None)
    tshark = shutil.which("tshark") and not args.skip_tshark

    def replay(fmt: str, rate: str | None) -> None:
        out = Path(tempfile.mkdtemp(prefix="calln-bench-out-"))
        env_rate = [] if rate is None else ["env", f"CALLN_RECORDING_SAMPLE_RATE_HZ={rate}"]
        try:
            usage = run_tree(env_rate + agent + ["replay", "-q", "--counters", "--out", str(out), "--format", fmt,
                                                 str(capture)])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        workers = WORKER_CPU.search(usage.stderr)
        name = f"replay --format {fmt}" + ("" if rate is None else f" ({int(rate) // 1000} kHz)")
        rows.append((name, usage, float(workers.group(1)) if workers else None))

    rows.append(("inspect", run_tree(agent + ["inspect", "-q", str(capture)]), None))
    if tshark:
        rows.append(("tshark -z sip,stat", run_tree(["tshark", "-n", "-q", "-r", str(capture), "-z", "sip,stat"]), None))
    replay("wav", None)
    if tshark:
        rows.append(("tshark -z rtp,streams", run_tree(["tshark", "-n", "-q", "-r", str(capture), "-z", "rtp,streams"]),
                     None))
    replay("wav", "16000")
    if not args.skip_mp3:
        replay("mp3", None)

    print(f"{'command':30} {'CPU s':>7} {'wall s':>7} {'packets/CPU-s':>14} {'audio-s/CPU-s':>14} "
          f"{'workers CPU s':>13} {'render audio-s/CPU-s':>21} {'peak RSS':>9}")
    for name, u, workers in rows:
        audio = f"{audio_s / u.cpu_s:14,.0f}" if name.startswith("replay") else f"{'':14}"
        w = f"{workers:13.1f} {audio_s / workers:21,.0f}" if workers else f"{'':13} {'':21}"
        print(f"{name:30} {u.cpu_s:7.1f} {u.wall_s:7.1f} {packets / u.cpu_s:14,.0f} {audio} {w} "
              f"{u.peak_rss_mib:6d} MiB")
    by = {name: u.cpu_s for name, u, _ in rows}
    for ours, theirs in (("inspect", "tshark -z sip,stat"),
                         ("replay --format wav", "tshark -z rtp,streams"),
                         ("replay --format wav (16 kHz)", "tshark -z rtp,streams")):
        if ours in by and theirs in by:
            print(f"  {ours} vs {theirs}: {by[theirs] / by[ours]:.2f}x (tshark CPU / ours)")
    if "replay --format mp3" in by:
        per_cpu = audio_s / by["replay --format mp3"]
        print(f"  MP3 end to end: {per_cpu:,.0f} audio-s per CPU-s = concurrent calls per core "
              f"({1000 / per_cpu:.2f} cores for 1,000 concurrent calls)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--skip-tshark", action="store_true")
    ap.add_argument("--skip-mp3", action="store_true")
    ap.add_argument("--clean-only", action="store_true", help="skip the capture with loss and reordering")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run the agent as the environment says (PYTHONDONTWRITEBYTECODE=1: compiled on every start)")
    args = ap.parse_args()
    print(f"machine: {machine_load()} at start")
    print("agent: " + ("as the environment runs it" if args.no_bytecode_cache else
                       f"from compiled bytecode (cache {PYCACHE}), as an installed package runs"))
    audio_s = args.calls * args.duration_s
    agent = agent_command(args)
    bench_capture(capture_for(args.calls, args.duration_s, 0.0, 0.0), audio_s, args, agent)
    if not args.clean_only:
        bench_capture(capture_for(args.calls, args.duration_s, 0.01, 0.01), audio_s, args, agent)
    print(f"\nmachine: {machine_load()} at end")
    return 0


if __name__ == "__main__":
    os.chdir(HERE.parent)
    sys.exit(main())

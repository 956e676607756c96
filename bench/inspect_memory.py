"""``inspect``'s memory per call-minute: how its RSS grows with the length of the calls in
progress.

``inspect`` keeps no audio, but it does keep each call's RTP header columns for the voice
quality figures (``QualityCollector``) until the call ends. Two synthetic captures of the same
concurrent G.711 calls (``bench/synth.py``), ``--short-s`` and ``--long-s`` long, are fed
through the engine as ``inspect`` does (``MediaMode.COUNTERS``), each in a fresh process,
up to 95 % of their packets (every call still in progress); the RSS growth difference over
the call-minute difference is what a minute of call costs while it lasts. ``--impaired``
adds 1 % loss and 1 % reordering. Compare trees with PYTHONPATH=/path/to/tree.

Usage: python3 bench/inspect_memory.py [--calls 50] [--short-s 30] [--long-s 150] [--impaired]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proctree import machine_load  # noqa: E402
from synth import write_calls  # noqa: E402


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def child(capture: Path, packets: int) -> dict:
    """Feed ``packets`` packets of ``capture`` as inspect does; the RSS they added."""
    from agent.capture.batches import read_batches
    from agent.config import load_config
    from agent.pipeline.engine import Engine, MediaMode

    engine = Engine(load_config(None, {}), lambda finished: None, media=MediaMode.COUNTERS)
    before = _rss_mib()
    fed = 0
    for batch in read_batches([capture], engine.counters):
        engine.feed_batch(batch)
        fed += len(batch)
        if fed >= packets:
            break
    grown = _rss_mib() - before
    engine.close()
    return {"packets": fed, "rss_growth_mib": grown}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--short-s", type=float, default=30.0)
    ap.add_argument("--long-s", type=float, default=150.0)
    ap.add_argument("--impaired", action="store_true", help="1 %% loss and 1 %% reordering")
    ap.add_argument("--child", nargs=2, metavar=("CAPTURE", "PACKETS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), int(args.child[1]))))
        return 0
    loss = reorder = 0.01 if args.impaired else 0.0
    print(f"machine: {machine_load()}")
    grown = {}
    with tempfile.TemporaryDirectory() as tmp:
        for duration_s in (args.short_s, args.long_s):
            capture = Path(tmp) / f"calls-{duration_s:g}s.pcap"
            total = write_calls(capture, calls=args.calls, concurrent=args.calls, duration_s=duration_s,
                                loss=loss, reorder=reorder)
            out = subprocess.run([sys.executable, __file__, "--child", str(capture), str(int(total * 0.95))],
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out)
            grown[duration_s] = result["rss_growth_mib"]
            print(f"{args.calls} calls x {duration_s:g} s, {result['packets']:,} packets fed: "
                  f"RSS grew {result['rss_growth_mib']:.1f} MiB", flush=True)
    call_minutes = args.calls * (args.long_s - args.short_s) / 60 * 0.95
    per = (grown[args.long_s] - grown[args.short_s]) * 1024 / call_minutes
    print(f"inspect{' (1 % loss + reorder)' if args.impaired else ''}: {per:,.0f} KiB of RSS per call-minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`inspect` over the same traffic in the encapsulations real SPAN ports carry.

Rewrites the first ``--frames`` records of the synthetic bench capture (bench/replay_rate.py's
200 concurrent 60 s G.711 calls, generated and cached under /tmp if missing) as untagged
IPv4, 802.1Q, QinQ (802.1ad + 802.1Q), IPv6, IPv6 under QinQ, inside VXLAN (cloud
traffic mirroring) and ERSPAN (a switch's remote SPAN), as HEP3 to a collector, and as a
directory of 5 rotated files and as two taps overlapping in time, then runs
``calln-agent inspect`` on each in a child process and prints packets per CPU-second and
peak RSS. A site whose traffic the batch path cannot take falls back to frame-by-frame
decoding, several times slower: this shows which ones it takes.

    python3 bench/encap_rate.py [--frames 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synth import QINQ_TAGS, in_erspan, in_hep, in_vxlan, rewrite_pcap, to_ipv6, with_tags, write_calls  # noqa: E402

VARIANTS = {
    "ipv4": lambda f: f,
    "802.1q": lambda f: with_tags(f, b"\x81\x00\x00\x07"),
    "qinq": lambda f: with_tags(f, QINQ_TAGS),
    "ipv6": to_ipv6,
    "ipv6+qinq": lambda f: to_ipv6(with_tags(f, QINQ_TAGS)),
    "vxlan": lambda f: in_vxlan(f, len(f)),          # cloud traffic mirroring to a collector
    "erspan": lambda f: in_erspan(f, len(f), 2),     # a switch's remote SPAN (ERSPAN type II)
    "hep": lambda f: in_hep(f, len(f)),              # a SIP server's / media relay's HEP3 copies
}


def cpu_of(cmd: list[str]) -> tuple[float, int]:
    """CPU seconds and peak RSS (MiB) of ``cmd`` run as a child."""
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys;"
               "p=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
               "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "print(r.ru_utime+r.ru_stime, r.ru_maxrss);sys.exit(p.returncode)", *cmd]
    out = subprocess.run(wrapper, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]) // 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3, help="best CPU of this many runs (a shared machine is noisy)")
    args = ap.parse_args()
    tmp = Path(tempfile.gettempdir())
    source = tmp / "calln-bench-200x60s.pcap"
    if not source.exists():
        print(f"generating {source} ...", flush=True)
        write_calls(source, calls=200, concurrent=200, duration_s=60.0)
    agent = [sys.executable, "-m", "agent.cli", "inspect"]
    print(f"{'traffic':<12} {'packets/CPU-s':>14} {'peak RSS':>9}")
    for name, convert in VARIANTS.items():
        path = tmp / f"calln-encap-{name}-{args.frames}.pcap"
        if not path.exists():
            rewrite_pcap(source, path, convert, args.frames)
        runs = [cpu_of(agent + [str(path)]) for _ in range(args.runs)]
        cpu = min(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        print(f"{name:<12} {args.frames / cpu:>14,.0f} {rss:>6} MiB", flush=True)
    # The same IPv4 traffic as a directory of 5 rotated files (tcpdump -C / -G), merged by time.
    rotated = tmp / f"calln-encap-rotated-{args.frames}"
    if not rotated.is_dir():
        rotated.mkdir()
        for n in range(5):
            rewrite_pcap(tmp / f"calln-encap-ipv4-{args.frames}.pcap", rotated / f"part_{n}.pcap",
                         lambda f: f, args.frames // 5, skip=n * (args.frames // 5))
    # ... and as two taps overlapping in time (every other frame in each), merged by time.
    taps = tmp / f"calln-encap-taps-{args.frames}"
    if not taps.is_dir():
        taps.mkdir()
        ipv4 = tmp / f"calln-encap-ipv4-{args.frames}.pcap"
        for n in range(2):
            rewrite_pcap(ipv4, taps / f"tap_{n}.pcap", lambda f: f, keep=lambda i: i % 2 == n)
    for name, path in (("5 rotated", rotated), ("2 taps", taps)):
        runs = [cpu_of(agent + [str(path)]) for _ in range(args.runs)]
        cpu = min(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        print(f"{name:<12} {args.frames / cpu:>14,.0f} {rss:>6} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

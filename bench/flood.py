"""Scanner flood: 100,000 SIPVicious-style INVITE/OPTIONS (no media, random Call-IDs, a few
scanner IPs) interleaved with ~20 real calls with media; replayed through the engine in a
child process. Prints the child's peak RSS and the fraction of real calls recorded correctly
(answered, right numbers, RTP packets per direction).

Usage: python3 bench/flood.py [--scans 100000] [--calls 20] [--duration-s 30] [--keep FILE]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER, T0_S, udp_frame, write_calls  # noqa: E402

SCANNERS = [bytes([203, 0, 113, n]) for n in (7, 66, 199)]
PBX = bytes([10, 2, 0, 1])


def scan_frames(n: int, span_ns: int, rng: random.Random):
    """(ts_ns, frame) of ``n`` scanner requests spread evenly over ``span_ns``."""
    start = T0_S * 10**9
    for i in range(n):
        src = SCANNERS[i % len(SCANNERS)]
        sport = 5060 + (i % 7)
        method = "OPTIONS" if i % 3 == 0 else "INVITE"
        ext = rng.randrange(100, 99999)
        cid = "%032x" % rng.getrandbits(128)
        tag = "%08x" % rng.getrandbits(32)
        src_txt = ".".join(map(str, src))
        msg = (f"{method} sip:{ext}@10.2.0.1 SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {src_txt}:{sport};branch=z9hG4bK-{tag};rport\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: \"sipvicious\"<sip:100@1.1.1.1>;tag={tag}\r\n"
               f"To: \"sipvicious\"<sip:{ext}@1.1.1.1>\r\n"
               f"Call-ID: {cid}\r\nCSeq: 1 {method}\r\n"
               f"Contact: <sip:100@{src_txt}:{sport}>\r\nUser-Agent: friendly-scanner\r\n"
               f"Accept: application/sdp\r\nContent-Length: 0\r\n\r\n").encode()
        yield start + i * span_ns // n, udp_frame(ETH_PBX, ETH_CALLER, src, PBX, sport, 5060, msg, i)


def build(path: Path, *, scans: int, calls: int, duration_s: float, seed: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real.pcap"
        write_calls(real, calls=calls, concurrent=calls, duration_s=duration_s)
        data = real.read_bytes()
    real_recs = []
    pos = 24
    while pos < len(data):
        sec, us, caplen, _ = struct.unpack_from("<IIII", data, pos)
        real_recs.append((sec * 10**9 + us * 1000, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    span = real_recs[-1][0] - real_recs[0][0]
    n = 0
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for ts, frame in heapq.merge(real_recs, scan_frames(scans, span, random.Random(seed)),
                                     key=lambda r: r[0]):
            fh.write(struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, len(frame), len(frame)))
            fh.write(frame)
            n += 1
    return {"packets": n, "real_packets": len(real_recs),
            "packets_per_direction": int(duration_s * 1000 / 20)}


CHILD = r"""
import json, resource, sys, time
from agent.config import load_config
from agent.replay import replay
out = []
def on_finished(f):
    if f.media_log is not None:
        f.media_log.unlink(missing_ok=True)
    r = f.record
    if r["callid"].startswith("bench-"):
        per = {0: 0, 1: 0}
        for s in r.get("streams", []):
            per[s["direction"]] += s["packets"]
        out.append({"callid": r["callid"], "answered": r["answered"], "caller": r["callerphone"],
                    "callee": r["destinationphone"], "end": r["end_reason"], "rtp": [per[0], per[1]]})
started = time.monotonic()
engine = replay([sys.argv[1]], load_config(None, {}), on_finished, progress=False)
took = time.monotonic() - started
counters = {k: v for k, v in engine.counters.items() if k.startswith(("calls.", "sip.", "capture."))}
print(json.dumps({"calls": out, "seconds": took, "counters": counters,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--duration-s", type=float, default=30.0)
    ap.add_argument("--keep", type=Path, help="write the capture here (default: a temp file)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "flood.pcap"
        t = time.monotonic()
        info = build(path, scans=args.scans, calls=args.calls, duration_s=args.duration_s)
        print(f"capture: {info['packets']:,} packets ({args.scans:,} scanner requests, "
              f"{args.calls} real calls, {info['real_packets']:,} real packets), "
              f"{path.stat().st_size / 1e6:.1f} MB, built in {time.monotonic() - t:.1f} s")
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        child_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    want = info["packets_per_direction"]
    good = 0
    bad = []
    by_id = {c["callid"]: c for c in res["calls"]}
    for n in range(args.calls):
        c = by_id.get(f"bench-{n}@10.1.0.1")
        ok = (c is not None and c["answered"] and c["caller"] == f"1{n:06d}"
              and c["callee"] == f"2{n:06d}" and c["rtp"] == [want, want] and c["end"] == "bye")
        good += ok
        if not ok:
            bad.append(c or f"bench-{n} missing")
    print(f"replay: {res['seconds']:.1f} s, {info['packets'] / res['seconds']:,.0f} packets/s")
    print(f"peak RSS of the replay child: {child_rss_kb / 1024:.0f} MiB")
    print(f"real calls recorded correctly: {good}/{args.calls} ({good / args.calls:.0%})")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(res["counters"].items())))
    for b in bad[:5]:
        print(f"  wrong: {b}")
    return 0 if good == args.calls else 2


if __name__ == "__main__":
    sys.exit(main())

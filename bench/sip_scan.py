"""A SIP scan at line rate: OPTIONS, REGISTER and INVITE with SDP from a few scanner
addresses, a third each, never answered (as SIPVicious / sipsak floods look), replayed
through the engine as ``inspect`` does. Prints SIP messages per CPU-second (the target is
10,000 per core) for the whole mix and for each kind alone.

Usage: python3 bench/sip_scan.py [--messages 30000]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER, T0_S, udp_frame  # noqa: E402

SCANNERS = [bytes([203, 0, 113, n]) for n in (7, 66, 199)]
PBX = bytes([10, 2, 0, 1])
KINDS = ("OPTIONS", "REGISTER", "INVITE")


def scan_message(kind: str, i: int, rng: random.Random) -> tuple[bytes, bytes, int]:
    src = SCANNERS[i % len(SCANNERS)]
    sport = 5060 + (i % 7)
    src_txt = ".".join(map(str, src))
    ext = rng.randrange(100, 99999)
    cid = "%032x" % rng.getrandbits(128)
    tag = "%08x" % rng.getrandbits(32)
    body = ""
    if kind == "INVITE":
        body = (f"v=0\r\no=- {i} {i} IN IP4 {src_txt}\r\ns=-\r\nc=IN IP4 {src_txt}\r\nt=0 0\r\n"
                f"m=audio {10000 + 2 * (i % 20000)} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
                f"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
    target = f"sip:{ext}@10.2.0.1" if kind != "REGISTER" else "sip:10.2.0.1"
    msg = (f"{kind} {target} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {src_txt}:{sport};branch=z9hG4bK-{tag};rport\r\n"
           f"Max-Forwards: 70\r\n"
           f"From: \"sipvicious\"<sip:{ext}@1.1.1.1>;tag={tag}\r\n"
           f"To: \"sipvicious\"<sip:{ext}@1.1.1.1>\r\n"
           f"Call-ID: {cid}\r\nCSeq: 1 {kind}\r\n"
           f"Contact: <sip:{ext}@{src_txt}:{sport}>\r\nUser-Agent: friendly-scanner\r\n"
           + ("Content-Type: application/sdp\r\n" if body else "")
           + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    return src, msg, sport


def write_scan(path: Path, kinds: tuple[str, ...], messages: int, rate_per_s: int = 5000, seed: int = 1) -> None:
    rng = random.Random(seed)
    start = T0_S * 10**9
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for i in range(messages):
            src, msg, sport = scan_message(kinds[i % len(kinds)], i, rng)
            frame = udp_frame(ETH_PBX, ETH_CALLER, src, PBX, sport, 5060, msg, i)
            ts = start + i * 10**9 // rate_per_s
            fh.write(struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, len(frame), len(frame)) + frame)


def rate(path: Path, messages: int) -> tuple[float, dict]:
    from agent.capture.batches import read_batches
    from agent.config import load_config
    from agent.pipeline.engine import Engine, MediaMode

    engine = Engine(load_config(None, {}), lambda finished: None, media=MediaMode.COUNTERS)
    cpu = time.process_time()
    for batch in read_batches([path], engine.counters):
        engine.feed_batch(batch)
    engine.finish()
    cpu = time.process_time() - cpu
    engine.close()
    return messages / cpu, dict(engine.counters)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=30_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for kinds in (KINDS, ("OPTIONS",), ("REGISTER",), ("INVITE",)):
            path = Path(tmp) / "scan.pcap"
            write_scan(path, kinds, args.messages)
            per_s, counters = rate(path, args.messages)
            print(f"{'+'.join(kinds):24} {per_s:9,.0f} SIP messages per CPU-s "
                  f"({counters.get('calls.started', 0):,} dialogs opened)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

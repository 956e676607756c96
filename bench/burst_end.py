"""A burst of endings: ``--dialogs`` answered dialogs, each with a little media, all fall
silent in the same second and end together by RTP timeout, while one real call with media
runs through the burst and ends with a BYE. Replayed through the engine as ``inspect`` does
(no audio kept), a second of packet time per batch as live capture feeds it; prints the CPU
time of the whole replay, of the second in which the burst ended and of the slowest second, and checks the real call came out exact (answered, ``bye``, its duration to the
millisecond, every RTP packet of both directions).

Ending a call used to scan the whole endpoint map, so a burst cost the square of its size.

Usage: python3 bench/burst_end.py [--dialogs 10000] [--real-s 100]
"""

from __future__ import annotations

import argparse
import heapq
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER, T0_S, _sdp, _sip, udp_frame  # noqa: E402

NS = 1_000_000_000
PTIME_NS = 20_000_000
REAL_CALLID = "real-call@10.9.0.1"
REAL_START_NS = T0_S * NS
BURST_AT_NS = REAL_START_NS + 2 * NS     # the dialogs start and send their media in this second


SILENCE = b"\xff" * 160
# The real call's payload: no sample of it decodes to 0 (G.711 u-law 0xFF / 0x7F would), so a
# recording's non-zero samples count the packets it holds (the renderer fills gaps with zeros).
REAL_PAYLOAD = b"\xa5\x25" * 80


def _rtp(seq: int, ssrc: int, payload: bytes = SILENCE) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + payload


def call_frames(callid: str, n: int, a_ip: bytes, b_ip: bytes, a_port: int, b_port: int, start_ns: int,
          packets: int, bye: bool, payload: bytes = SILENCE) -> Iterator[tuple[int, bytes]]:
    """One answered call: INVITE/200/ACK with SDP, ``packets`` RTP packets each way every 20 ms
    (160 bytes of ``payload``), then a BYE (or silence, for the burst)."""
    a_txt, b_txt = ".".join(map(str, a_ip)), ".".join(map(str, b_ip))
    caller, callee, ftag, ttag = f"1{n:06d}", f"2{n:06d}", f"f{n}", f"t{n}"

    def sig(at_ns: int, src: bytes, dst: bytes, payload: bytes) -> tuple[int, bytes]:
        macs = (ETH_CALLER, ETH_PBX) if src == a_ip else (ETH_PBX, ETH_CALLER)
        return at_ns, udp_frame(macs[0], macs[1], src, dst, 5060, 5060, payload)

    yield sig(start_ns, a_ip, b_ip, _sip(f"INVITE sip:{callee}@pbx.example SIP/2.0", callid, ftag, "",
                                         "1 INVITE", caller, callee, _sdp(a_txt, a_port)))
    yield sig(start_ns + 1_000_000, b_ip, a_ip, _sip("SIP/2.0 200 OK", callid, ftag, ttag, "1 INVITE",
                                                     caller, callee, _sdp(b_txt, b_port)))
    yield sig(start_ns + 2_000_000, a_ip, b_ip, _sip(f"ACK sip:{callee}@pbx.example SIP/2.0", callid, ftag,
                                                     ttag, "1 ACK", caller, callee))
    media_ns = start_ns + 3_000_000
    for i in range(packets):
        t = media_ns + i * PTIME_NS
        yield t, udp_frame(ETH_CALLER, ETH_PBX, a_ip, b_ip, a_port, b_port, _rtp(i, 0x1000 + n, payload), i)
        yield t + 100_000, udp_frame(ETH_PBX, ETH_CALLER, b_ip, a_ip, b_port, a_port, _rtp(i, 0x2000 + n, payload), i)
    if bye:
        yield sig(media_ns + packets * PTIME_NS, a_ip, b_ip, _sip(f"BYE sip:{callee}@pbx.example SIP/2.0",
                                                                 callid, ftag, ttag, "2 BYE", caller, callee))


def real_call_packets(real_s: float) -> int:
    return int(real_s * NS) // PTIME_NS


def real_call_duration_ms(real_s: float) -> int:
    """From the answer (200 OK) to the BYE, as ``_call`` places them."""
    return (2_000_000 + real_call_packets(real_s) * PTIME_NS) // 1_000_000


def write_burst(path: Path, *, dialogs: int, real_s: float, burst_packets: int = 3,
                real_start_s: float = 0.0) -> int:
    """The capture: the real call from ``real_start_s`` after REAL_START_NS, the burst dialogs
    inside one second from BURST_AT_NS (``burst_packets`` RTP packets each way, 0: none).
    Returns the number of frames written."""
    real = call_frames(REAL_CALLID, 999_999, bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2]), 40000, 40002,
                       REAL_START_NS + int(real_start_s * NS), real_call_packets(real_s), bye=True,
                       payload=REAL_PAYLOAD)
    step_ns = (NS // 2) // max(dialogs, 1)
    burst = [call_frames(f"burst-{n}@10.1.0.1", n, bytes([10, 1, (n >> 8) & 0xFF, n & 0xFF]),
                   bytes([10, 2, (n >> 8) & 0xFF, n & 0xFF]), 20000, 30000, BURST_AT_NS + n * step_ns,
                   burst_packets, bye=False) for n in range(dialogs)]
    written = 0
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for ts_ns, frame in heapq.merge(real, *burst, key=lambda item: item[0]):
            fh.write(struct.pack("<IIII", ts_ns // NS, (ts_ns % NS) // 1000, len(frame), len(frame)))
            fh.write(frame)
            written += 1
    return written


def seconds_of(batches) -> Iterator:
    """The batches cut at every second of packet time, as live capture hands them over."""
    import numpy as np

    from agent.capture.batches import FrameBatch

    for b in batches:
        second = b.ts_ns // NS
        cuts = np.flatnonzero(np.diff(second)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(b)]):
            yield FrameBatch(b.buf, b.starts[lo:hi], b.lens[lo:hi], b.ts_ns[lo:hi], b.linktype)


def run(path: Path, config=None) -> dict:
    """Replay ``path`` as ``inspect`` does, one second of packet time per batch as live capture
    feeds it: the real call's record, the number of burst calls that ended by RTP timeout, the
    CPU seconds of the whole replay, of the second in which the burst ended and of the slowest
    second (above 1 CPU-s a live tap would drop frames)."""
    from agent.capture.batches import read_batches
    from agent.config import load_config
    from agent.pipeline.engine import Engine, MediaMode

    records: dict[str, dict] = {}
    ended_by_timeout = 0

    def on_finished(finished) -> None:
        nonlocal ended_by_timeout
        record = finished.record
        if record["callid"] == REAL_CALLID:
            records["real"] = record
        elif record["end_reason"] == "rtp_timeout":
            ended_by_timeout += 1

    engine = Engine(config or load_config(None, {}), on_finished, media=MediaMode.COUNTERS)
    slowest_s = burst_end_s = 0.0
    cpu = time.process_time()
    for batch in seconds_of(read_batches([path], engine.counters)):
        t = time.process_time()
        ending = engine.counters["calls.ended.rtp_timeout"]
        engine.feed_batch(batch)
        took = time.process_time() - t
        slowest_s = max(slowest_s, took)
        if engine.counters["calls.ended.rtp_timeout"] - ending > 1:
            burst_end_s += took
    engine.finish()
    cpu = time.process_time() - cpu
    engine.close()
    return {"real": records.get("real"), "ended_by_timeout": ended_by_timeout, "cpu_s": cpu,
            "slowest_s": slowest_s, "burst_end_s": burst_end_s, "counters": dict(engine.counters)}


def real_call_problems(real: dict | None, real_s: float, duration_ms: int | None = None,
                       duration_slack_ms: int = 0) -> list[str]:
    """What is wrong with the real call's record (empty: exact). ``duration_ms``: the duration
    expected instead of the capture's own (live: as the sender's clock measured it, within
    ``duration_slack_ms``)."""
    if real is None:
        return ["the real call is missing"]
    want_packets = real_call_packets(real_s)
    got = {0: 0, 1: 0}
    for stream in real.get("streams", []):
        got[stream["direction"]] += stream["packets"]
    problems = []
    want_ms = real_call_duration_ms(real_s) if duration_ms is None else duration_ms
    if abs(real["duration_ms"] - want_ms) > duration_slack_ms:
        problems.append(f"duration_ms: {real['duration_ms']}, expected {want_ms}")
    for name, have, want in (("end_reason", real["end_reason"], "bye"), ("answered", real["answered"], True),
                             ("callerphone", real["callerphone"], "1999999"),
                             ("destinationphone", real["destinationphone"], "2999999"),
                             ("packets", [got[0], got[1]], [want_packets, want_packets])):
        if have != want:
            problems.append(f"{name}: {have!r}, expected {want!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogs", type=int, nargs="+", default=[10_000])
    ap.add_argument("--real-s", type=float, default=100.0)
    args = ap.parse_args(argv)
    status = 0
    for dialogs in args.dialogs:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "burst.pcap"
            frames = write_burst(path, dialogs=dialogs, real_s=args.real_s)
            res = run(path)
        problems = real_call_problems(res["real"], args.real_s)
        print(f"{dialogs:,} dialogs ending together ({frames:,} frames): replay {res['cpu_s']:.2f} CPU-s; "
              f"{res['ended_by_timeout']:,} ended by RTP timeout, that second of traffic took "
              f"{res['burst_end_s']:.2f} CPU-s (slowest second: {res['slowest_s']:.2f}); real call "
              f"{'exact' if not problems else 'WRONG: ' + '; '.join(problems)}")
        status |= bool(problems) or res["ended_by_timeout"] != dialogs
    return 2 if status else 0


if __name__ == "__main__":
    sys.exit(main())

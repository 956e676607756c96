"""Capture-path throughput: read_capture alone, read_capture + FrameDecoder.decode, and the
batch path (read_batches, then read_batches + the RTP fast path's vectorised field extraction).

Usage: python3 bench/decode_rate.py [capture ...]
Without arguments it writes a temporary pcap of many small Ethernet/IPv4/UDP RTP
frames (200 concurrent G.711 streams, 160-byte payloads) and measures that.
Prints records/s and datagrams/s.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.capture.files import open_captures  # noqa: E402
from agent.capture.batches import read_batches  # noqa: E402
from agent.net.decode import FrameDecoder      # noqa: E402
from agent.net.fastpath import rtp_frames      # noqa: E402


def _checksum(hdr: bytes) -> int:
    s = sum(struct.unpack("!10H", hdr))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def build_rtp_pcap(path: Path, n_frames: int = 300_000, n_streams: int = 200) -> None:
    """Write ``n_frames`` RTP packets spread over ``n_streams`` streams, 20 ms apart per stream."""
    payload = bytes(range(160))
    eth = bytes.fromhex("0200000000010200000000020800")
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    t0_ns = 1_700_000_000_000_000_000
    for i in range(n_frames):
        s = i % n_streams
        k = i // n_streams
        rtp = struct.pack("!BBHII", 0x80, 8, k & 0xFFFF, (k * 160) & 0xFFFFFFFF, 0x1000 + s) + payload
        udp = struct.pack("!HHHH", 20000 + 2 * s, 30000 + 2 * s, 8 + len(rtp), 0) + rtp
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), i & 0xFFFF, 0x4000,
                                   64, 17, 0, bytes((10, 0, s >> 8, s & 255)),
                                   bytes((10, 1, s >> 8, s & 255))))
        ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
        frame = eth + bytes(ip) + udp
        ts_ns = t0_ns + k * 20_000_000 + s * 50_000
        out += struct.pack("<IIII", ts_ns // 1_000_000_000, (ts_ns % 1_000_000_000) // 1000,
                           len(frame), len(frame))
        out += frame
    path.write_bytes(out)


def measure(paths: list[Path]) -> None:
    counters: Counter[str] = Counter()
    t = time.perf_counter()
    n = 0
    for _rec in open_captures(paths, counters):
        n += 1
    read_s = time.perf_counter() - t
    print(f"read only:      {n:>9} records in {read_s:6.3f} s = {n / read_s:>12,.0f} records/s")

    counters = Counter()
    dec = FrameDecoder(counters)
    decode = dec.decode
    t = time.perf_counter()
    n = d = 0
    for ts_ns, linktype, frame in open_captures(paths, counters):
        n += 1
        if decode(ts_ns, linktype, frame) is not None:
            d += 1
    s = time.perf_counter() - t
    print(f"read + decode:  {n:>9} records in {s:6.3f} s = {n / s:>12,.0f} records/s, "
          f"{d / s:>12,.0f} datagrams/s")
    if counters:
        print("counters:", dict(counters))

    # The replay path: frames in batches (agent/capture/batches.py), the RTP fast path's
    # fields for every frame of a batch at once (agent/net/fastpath.py).
    counters = Counter()
    t = time.perf_counter()
    n = 0
    for batch in read_batches(paths, counters):
        n += len(batch)
    s = time.perf_counter() - t
    print(f"batches:        {n:>9} records in {s:6.3f} s = {n / s:>12,.0f} records/s")
    t = time.perf_counter()
    n = c = 0
    for batch in read_batches(paths, counters):
        n += len(batch)
        fx = rtp_frames(batch.buf, batch.starts, batch.lens, batch.linktype)
        if fx is not None:
            c += int(fx.cand.sum())
    s = time.perf_counter() - t
    print(f"batches + RTP fields: {n:>9} records in {s:6.3f} s = {n / s:>12,.0f} records/s "
          f"({c:,} fast-path candidates)")


def main(argv: list[str]) -> None:
    if argv:
        measure([Path(a) for a in argv])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rtp.pcap"
        build_rtp_pcap(path)
        print(f"built {path.stat().st_size:,} bytes of RTP capture")
        measure([path])


if __name__ == "__main__":
    main(sys.argv[1:])

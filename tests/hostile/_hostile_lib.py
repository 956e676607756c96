"""Helpers for the hostile-input tests: read/write raw pcap records, replay in-process,
and reduce a call record to the fields damage must not change."""

from __future__ import annotations

import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from scapy.all import IP, UDP, Ether, IPv6, raw

from agent.capture.pcapfile import read_capture
from agent.config import Config
from agent.replay import replay

REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"

Rec = tuple[int, int, bytes]


def read_records(path: Path) -> list[Rec]:
    return [(ts, lt, bytes(f)) for ts, lt, f in read_capture(path, Counter())]


def pcap_bytes(records: list[Rec], linktype: int = 1) -> bytes:
    """A µs pcap of ``records`` (all must share ``linktype``)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for ts, _lt, frame in records:
        out.append(struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def write_pcap(path: Path, records: list[Rec], linktype: int = 1) -> Path:
    path.write_bytes(pcap_bytes(records, linktype))
    return path


def run_engine(*paths: Path, config: Config | None = None,
               on_finished: Callable | None = None) -> tuple[list[dict[str, Any]], Counter]:
    """Replay captures through the real engine in-process; records sorted by start time."""
    records: list[dict[str, Any]] = []

    def finished(f) -> None:
        if on_finished is not None:
            on_finished(f)
        elif f.media_log is not None:
            f.media_log.unlink(missing_ok=True)
        records.append(f.record)

    with tempfile.TemporaryDirectory() as work:
        engine = replay(list(paths), config or Config(), finished, workdir=Path(work),
                        progress=False)
    records.sort(key=lambda r: (r["start_ts_ns"], r["callid"]))
    return records, engine.counters


def essentials(rec: dict[str, Any]) -> dict[str, Any]:
    """What damage elsewhere in the capture must not change about a call."""
    per_dir = {0: 0, 1: 0}
    for s in rec.get("streams", []):
        per_dir[s["direction"]] += s["packets"]
    keys = ("callid", "callerphone", "callername", "destinationphone", "destinationname",
            "answered", "end_reason", "start_ts_ns", "answer_ts_ns", "end_ts_ns", "duration_ms",
            "callermediaendpoint", "destinationmediaendpoint", "final_status", "callerdtmf",
            "destinationdtmf")
    out = {k: rec.get(k) for k in keys}
    out["rtp_packets"] = per_dir
    return out


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes,
        smac: str = "02:00:00:00:00:01", dmac: str = "02:00:00:00:00:02") -> bytes:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return raw(Ether(src=smac, dst=dmac) / ip / UDP(sport=sport, dport=dport) / payload)


def sip(start: str, headers: list[tuple[str, str]], body: bytes = b"", *,
        content_length: str | None = None, eol: str = "\r\n") -> bytes:
    lines = [start] + [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-type", "c") for n, _ in headers):
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return (eol.join(lines) + eol + eol).encode() + body


def pcapng_bytes(records: list[Rec], linktype: int = 1) -> bytes:
    """A little-endian pcapng (one SHB, one µs IDB, one EPB per record)."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", linktype, 0, 262144))]
    for ts, _lt, frame in records:
        us = ts // 1000
        out.append(block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(frame),
                                        len(frame)) + frame))
    return b"".join(out)

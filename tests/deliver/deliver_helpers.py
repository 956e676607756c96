"""Helpers of the delivery tests (a uniquely named module: every test area has a conftest)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import ApiSection
from agent.receiver import ReceiverServer


def make_record(i: int, **over: object) -> dict:
    rec = {
        "startdatetimeutc": f"2024-05-0{1 + i % 9} 10:{i % 60:02d}:00",
        "callername": f"Caller {i}", "callerphone": f"6139000{i:04d}", "callerdtmf": "12#",
        "callermacaddress": "00908F0A393A", "callermediaendpoint": "10.0.0.1:4000",
        "destinationname": "Desk", "destinationphone": f"20{i:02d}", "destinationdtmf": "",
        "destinationmacaddress": "", "destinationmediaendpoint": "10.0.0.2:5000",
        "clientoperatingsystem": "Linux 6.1.0 x86_64 (Debian 12)", "servername": "rec1",
        "location": "Melbourne office — 3rd floor",
        "callid": f"call-{i}@pbx", "from_tag": f"ft{i}", "to_tag": "tt", "leg": 0,
        "answered": True, "end_reason": "bye", "start_ts_ns": 1714557600_000_000_000 + i,
        "duration_ms": 1000,
    }
    rec.update(over)
    return rec


def make_audio(tmp: Path, i: int, size: int, ext: str = "mp3") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp / f"rec{i}.{ext}"
    path.write_bytes(data)
    return path, data


def api_for(rx: ReceiverServer, **over: object) -> ApiSection:
    kw = dict(url=rx.url, username="agent", password="secret", ca_bundle=str(rx.ca_path),
              chunk_bytes=4096, connect_timeout_s=5.0, read_timeout_s=5.0, write_timeout_s=5.0)
    kw.update(over)
    return ApiSection(**kw)


class FakeTime:
    """An injectable clock + sleep: back-off of hours passes in no time.

    ``wall()`` is the matching wall clock (seconds since the epoch): a restart is a new
    FakeTime whose monotonic ``now`` starts afresh while ``wall_at_start`` goes on."""

    def __init__(self, now: float = 1000.0, wall_at_start: float = 1_714_557_600.0) -> None:
        self.now = now
        self._wall_offset = wall_at_start - now
        self.slept = 0.0
        self.on_sleep = None

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s
        if self.on_sleep is not None:
            self.on_sleep(self)

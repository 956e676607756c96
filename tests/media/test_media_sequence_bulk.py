"""sequence_capture takes in-order stretches of a raw media log at once (CallMedia.feed_run):
the ordered log, the counters and the key presses are exactly those of feeding the packets
one by one, for every project capture and for traffic with loss, reordering, duplicates, a
sequence restart and an SSRC change."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from agent.capture.batches import read_batches
from agent.config import load_config
from agent.engine import Engine
from agent.media.stream import sequence_capture

REPO = Path(__file__).resolve().parents[2]
CAPTURES = sorted(p for p in (REPO / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng"))


def _raw_logs(path: Path, workdir: Path):
    finished = []
    eng = Engine(load_config(None, env={}), finished.append, counters=Counter(), workdir=workdir,
                 defer_media=True)
    for batch in read_batches([path], eng.counters):
        eng.feed_batch(batch)
    eng.finish()
    return [f for f in finished if f.media_log is not None]


def _outcome(media, ordered: Path):
    streams = [(s.index, s.direction, s.ssrc, s.stats) for s in media.streams]
    return streams, media.dtmf_events, media.zrtp_seen, media.bad_seq, ordered.read_bytes()


def _compare(path: Path, tmp_path: Path) -> int:
    checked = 0
    for n, fin in enumerate(_raw_logs(path, tmp_path / "work")):
        raw = fin.media_log
        keep = tmp_path / f"raw-{n}"
        shutil.copy(raw, keep)
        one = sequence_capture(keep, tmp_path / f"one-{n}", fin.media_plan, bulk=False)
        many = sequence_capture(keep, tmp_path / f"many-{n}", fin.media_plan, bulk=True)
        assert _outcome(many, tmp_path / f"many-{n}") == _outcome(one, tmp_path / f"one-{n}")
        checked += sum(s.stats.packets for s in one.streams)
    return checked


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_bulk_sequencing_equals_packet_by_packet(path, tmp_path):
    _compare(path, tmp_path)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_sequencing_equals_packet_by_packet_on_damaged_traffic(seed, tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "engine"))
    from test_engine_batch import _mangled_capture

    path = tmp_path / "mangled.pcap"
    _mangled_capture(path, seed)
    assert _compare(path, tmp_path) > 2000

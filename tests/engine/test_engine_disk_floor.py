"""Below [spool] min_free_mb the agent keeps recording signalling but writes no new audio,
says so, and marks the call; when space returns, audio is recorded again."""

import dataclasses
from collections import Counter

from agent.config import load_config
from agent.pipeline.engine import Engine
from agent.capture.files import open_captures
from tests.conftest import PCAPS


def _run(min_free_mb: int, tmp_path):
    config = load_config(None, env={})
    config = dataclasses.replace(config, spool=dataclasses.replace(config.spool, min_free_mb=min_free_mb))
    counters: Counter = Counter()
    records = []
    engine = Engine(config, lambda f: records.append(f.record), counters=counters, workdir=tmp_path)
    for ts, lt, frame in open_captures([PCAPS / "basic_udp.pcap"], counters):
        engine.feed(ts, lt, frame)
    engine.finish()
    return records, counters


def test_disk_below_floor_records_signalling_without_audio(tmp_path):
    records, counters = _run(10**12, tmp_path)             # no disk has a petabyte free
    (record,) = records
    assert record["answered"] and record["end_reason"] == "bye"
    assert record["callerphone"] == "1001" and record["destinationphone"] == "1002"
    assert record["no_audio_reason"] == "disk_low"
    # the packets seen stay on record, marked as not recorded
    assert [(s["direction"], s["packets"], s["unrecorded"]) for s in record["streams"]] == [
        (0, 150, True), (1, 152, True)]
    assert counters["media.disk_low.calls_without_audio"] >= 1
    assert not list(tmp_path.glob("*.rtp"))                # nothing written


def test_disk_above_floor_records_audio(tmp_path):
    records, counters = _run(0, tmp_path)
    (record,) = records
    assert "no_audio_reason" not in record
    assert sum(s["packets"] for s in record["streams"]) == 302

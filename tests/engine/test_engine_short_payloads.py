"""Empty and short UDP payloads sent to a call's media endpoint are counted as not RTP in
every media mode; the call is unaffected."""

from collections import Counter

import pytest

from agent.capture.files import open_captures
from agent.config import load_config
from agent.pipeline.engine import Engine, MediaMode
from bench.synth import udp_frame
from tests.conftest import PCAPS

CALLEE_RTP = (bytes([10, 0, 0, 20]), 50000)      # basic_udp's callee media endpoint
CALLER = bytes([10, 0, 0, 10])


@pytest.mark.parametrize("mode", list(MediaMode))
def test_empty_udp_to_a_media_endpoint(mode, tmp_path):
    counters: Counter = Counter()
    records = []
    engine = Engine(load_config(None, env={}), lambda f: records.append(f.record), counters=counters,
                    workdir=tmp_path, media=mode)
    frames = list(open_captures([PCAPS / "basic_udp.pcap"], counters))
    middle = len(frames) // 2
    for i, (ts, lt, frame) in enumerate(frames):
        engine.feed(ts, lt, frame)
        if i == middle:                          # mid-call: junk to the callee's RTP port
            for payload in (b"", b"\x80", b"\x80" * 11):
                junk = udp_frame(frame[6:12], frame[0:6], CALLER, CALLEE_RTP[0], 40000, CALLEE_RTP[1],
                                 payload, ip_id=len(payload) + 7)
                engine.feed(ts + 1000, lt, junk)
    engine.finish()
    (record,) = records
    assert record["end_reason"] == "bye"
    if mode is MediaMode.DEFERRED:
        return                                   # counters come with the worker's sequencing
    assert sum(s["packets"] for s in record["streams"]) == 302
    assert counters["rtp.skip.not_rtp"] == 3


def test_hostile_sdp_addresses_do_not_reach_the_fast_path():
    """SDP may carry anything in c=: only canonical addresses (what packets decode to) get a
    packed fast-path key."""
    from agent.calls.endpoints import packed_endpoint

    assert packed_endpoint(("10.0.0.20", 50000)) == bytes([10, 0, 0, 20, 0xC3, 0x50])
    assert packed_endpoint(("2001:db8::1", 5000)) == bytes.fromhex("20010db8" + "00" * 11 + "01" + "1388")
    for ip in ("10.0.0\x00.1", "010.0.0.1", "1", "0x0a.0.0.1", "pbx.example.com", "2001:DB8::1",
               "2001:db8:0::1", "fe80::1%eth0", "::ffff:10.0.0.1x", "2001:db8::1\x00"):
        assert packed_endpoint((ip, 5000)) is None, ip
    assert packed_endpoint(("10.0.0.1", 70000)) is None

"""Bursts and full tables never cost a real call (bench/burst_end.py at a small size)."""

from agent.config import load_config
from bench.burst_end import real_call_problems, run, write_burst


def test_a_burst_of_endings_leaves_the_real_call_exact(tmp_path):
    """300 answered dialogs with media fall silent together and end in one tick by RTP timeout
    while a real call runs through: every one of them ends, and the real call keeps its BYE,
    its duration to the millisecond and every packet of both directions."""
    path = tmp_path / "burst.pcap"
    write_burst(path, dialogs=300, real_s=70.0)
    res = run(path)
    assert real_call_problems(res["real"], 70.0) == []
    assert res["ended_by_timeout"] == 300
    assert res["counters"]["calls.ended.rtp_timeout"] == 300


def test_a_full_table_of_dialogs_without_media_never_refuses_a_real_call(tmp_path):
    """max_calls 20, filled twice over with answered dialogs that never carry media: the oldest
    of them make room, one per new dialog, and the real call that follows is recorded exact."""
    path = tmp_path / "full.pcap"
    write_burst(path, dialogs=40, real_s=5.0, burst_packets=0, real_start_s=3.0)
    res = run(path, load_config(None, {"CALLN_SIP_MAX_CALLS": "20"}))
    assert real_call_problems(res["real"], 5.0) == []
    counters = res["counters"]
    assert counters.get("calls.refused_limit", 0) == 0
    assert counters["calls.evicted.answered_no_media"] == 21       # 20 dialogs past the limit, and the real call
    assert counters["calls.evicted"] == 21
    assert counters["calls.ended.evicted"] == 21


def test_a_table_full_of_calls_with_media_refuses_the_new_invite(tmp_path):
    """Calls with media are never evicted: with every slot held by one, a new INVITE is refused
    (and counted), and the calls in progress are untouched."""
    path = tmp_path / "media.pcap"
    write_burst(path, dialogs=20, real_s=5.0, burst_packets=3, real_start_s=3.0)
    res = run(path, load_config(None, {"CALLN_SIP_MAX_CALLS": "20"}))
    assert res["real"] is None
    assert res["counters"].get("calls.evicted", 0) == 0
    # Its INVITE, the 200 and the BYE would each open it; the ACK opens nothing.
    assert res["counters"]["calls.refused_limit"] == 3
    assert res["counters"]["calls.ended.capture_end"] == 20

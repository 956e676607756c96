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


def test_calls_without_media_never_hold_the_capture_loop_behind_the_spool() -> None:
    """agent.run.RenderQueue: thousands of media-less endings pass while the spool is slow (the
    recorder below never finishes anything); calls with media still get back-pressure, and
    each kind is released by its own done()."""
    import threading
    from types import SimpleNamespace

    from agent.counters import new_counters
    from agent.run import NO_MEDIA_QUEUE_FACTOR, RenderQueue

    taken: list = []
    counters = new_counters()
    queue = RenderQueue(taken.append, limit=2, counters=counters)

    def call(n: int, media: bool):
        return SimpleNamespace(media_log=f"/m/{n}" if media else None, record={"callid": f"c{n}"})

    for n in range(2 * NO_MEDIA_QUEUE_FACTOR):            # the whole burst passes at once
        queue(call(n, media=False))
    assert len(taken) == 2 * NO_MEDIA_QUEUE_FACTOR and counters["recorder.backpressure"] == 0
    queue(call(1000, media=True))
    queue(call(1001, media=True))                          # the media limit is its own
    blocked = threading.Thread(target=queue, args=(call(1002, media=True),), daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and counters["recorder.backpressure"] == 1
    queue.done({"callid": "c5"})                           # a media-less call spooled: no room for media
    blocked.join(0.5)
    assert blocked.is_alive()
    queue.done({"callid": "c1000"})
    blocked.join(5)
    assert not blocked.is_alive() and taken[-1].record["callid"] == "c1002"
    assert queue.in_flight == 2 * NO_MEDIA_QUEUE_FACTOR - 1 + 2
    queue(call(1999, media=False))                         # the media-less limit reached again
    beyond = threading.Thread(target=queue, args=(call(2000, media=False),), daemon=True)
    beyond.start()                                         # media-less calls are bounded too
    beyond.join(0.5)
    assert beyond.is_alive() and counters["recorder.backpressure"] == 2
    queue.done({"callid": "c6"})
    beyond.join(5)
    assert not beyond.is_alive()

"""Scanner floods: many media-less INVITE/OPTIONS must not slow down or disturb real calls."""

from __future__ import annotations


import pytest

from bench.flood import build

from _hostile_lib import run_engine


def test_small_flood_keeps_real_calls_intact(tmp_path):
    info = build(tmp_path / "f.pcap", scans=300, calls=3, duration_s=2.0)
    recs, counters = run_engine(tmp_path / "f.pcap")
    real = {r["callid"]: r for r in recs if r["callid"].startswith("bench-")}
    assert len(real) == 3
    want = info["packets_per_direction"]
    for n in range(3):
        r = real[f"bench-{n}@10.1.0.1"]
        assert r["answered"] and r["end_reason"] == "bye"
        assert (r["callerphone"], r["destinationphone"]) == (f"1{n:06d}", f"2{n:06d}")
        per = {0: 0, 1: 0}
        for s in r["streams"]:
            per[s["direction"]] += s["packets"]
        assert per == {0: want, 1: want}
    assert counters["calls.started"] == 3 + 200        # OPTIONS start no call


@pytest.mark.slow
def test_flood_of_unanswered_invites_is_linear(tmp_path, monkeypatch):
    """Thousands of scanner dialogs ending together: the conversation grouper compares each
    with a bounded number of candidates (an index), not with everything it holds."""
    import agent.calls.legs as legs

    comparisons = 0
    real = legs.link_reason

    def counting(a, b, pbx_ips=frozenset()):
        nonlocal comparisons
        comparisons += 1
        return real(a, b, pbx_ips)

    monkeypatch.setattr(legs, "link_reason", counting)
    build(tmp_path / "f.pcap", scans=6000, calls=1, duration_s=1.0)
    run_engine(tmp_path / "f.pcap")
    # Each dialog meets at most HOT_KEY_LIMIT (64) held conversations per shared key: linear.
    # Comparing with everything held would be ~6,000^2 / 2 = 18,000,000.
    assert comparisons < 100 * 6000, comparisons

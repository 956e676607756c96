"""E-model worked examples: loss and delay -> R -> MOS, written out by hand."""

import pytest

from agent.media.quality import (StreamQuality, codec_impairment, side_quality, mos_estimate, mos_from_r,
                                 r_factor)

G711 = codec_impairment("PCMU")
G729 = codec_impairment("G729")


def test_default_connection_is_r_93_2_mos_4_41():
    # G.107: with every parameter at its default R = 93.2; MOS = 1 + 0.035 R + R (R-60)(100-R) 7e-6
    r = r_factor(0.0, G711, 0.0)
    assert r == pytest.approx(93.2)
    assert mos_from_r(r) == pytest.approx(1 + 3.262 + 93.2 * 33.2 * 6.8 * 7e-6)   # 4.4093
    assert round(mos_from_r(r), 2) == 4.41


def test_g729a_without_loss():
    r = r_factor(0.0, G729, 0.0)                  # Ie 11
    assert r == pytest.approx(82.2)
    assert round(mos_from_r(r), 2) == 4.10        # 1 + 2.877 + 0.2274


def test_g711_two_percent_random_loss():
    # Ie,eff = 0 + 95 * 2 / (2 + 25.1) = 7.0111; R = 86.189; MOS = 4.2348
    r = r_factor(2.0, G711, 0.0)
    assert r == pytest.approx(93.2 - 190 / 27.1)
    assert mos_from_r(r) == pytest.approx(4.2348, abs=1e-4)


def test_g729a_five_percent_loss_and_150ms():
    # Ie,eff = 11 + 84 * 5 / (5 + 19) = 28.5; Id = 0.024 * 150 = 3.6; R = 61.1; MOS = 3.1465
    r = r_factor(5.0, G729, 150.0)
    assert r == pytest.approx(61.1)
    assert mos_from_r(r) == pytest.approx(1 + 0.035 * 61.1 + 61.1 * 1.1 * 38.9 * 7e-6)


def test_delay_beyond_177ms_costs_more():
    # Id = 0.024 * 300 + 0.11 * (300 - 177.3) = 7.2 + 13.497
    assert r_factor(0.0, G711, 300.0) == pytest.approx(93.2 - 20.697)


def test_mos_is_clamped():
    assert mos_from_r(-5) == 1.0 and mos_from_r(0) == 1.0
    assert mos_from_r(100) == 4.5 and mos_from_r(120) == 4.5


def test_unknown_codec_is_scored_as_g711_and_says_so():
    c = codec_impairment("x-weird")
    assert (c.ie, c.bpl) == (0.0, 25.1) and "unknown" in c.source


def test_stream_mos_uses_buffer_loss_and_states_delay():
    q = StreamQuality(expected=1000, received=990, lost=10, late_fixed=10, late_adaptive=0, adaptive_depth_ms=80.0)
    est = mos_estimate(q, "PCMA")
    fixed, adaptive = est["fixed_50ms"], est["adaptive_500ms"]
    assert fixed.effective_loss_pct == pytest.approx(2.0)         # 10 lost + 10 too late
    assert adaptive.effective_loss_pct == pytest.approx(1.0)
    assert fixed.assumed_delay_ms == pytest.approx(70.0)          # 20 ms path + 50 ms buffer
    assert adaptive.assumed_delay_ms == pytest.approx(100.0)      # 20 ms path + 80 ms buffer
    assert fixed.r == pytest.approx(93.2 - 0.024 * 70 - 190 / 27.1)
    assert adaptive.mos > fixed.mos


def test_direction_takes_the_worst_stream():
    good = StreamQuality(expected=500, received=500)
    bad = StreamQuality(expected=500, received=450, lost=50)
    d = side_quality([(good, "PCMU"), (bad, "PCMU")])
    assert d["ssrc_changes"] == 1
    assert d["loss_pct"] == pytest.approx(5.0)
    assert d["mos"] == round(mos_estimate(bad, "PCMU")["adaptive_500ms"].mos, 2)
    assert side_quality([]) is None

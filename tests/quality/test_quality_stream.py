"""stream_quality on synthetic streams with known loss, copies, reordering, jitter and delay."""

import numpy as np
import pytest

from agent.media.quality import _distinct, _last_before, _references, jitter_buffer_loss, stream_quality

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def stream(n=100, *, drop=(), dup=(), swap=(), offset_ms=None, seq0=1000, ts0=5000, pt=0, clock=8000):
    """A 20 ms G.711-like stream: packet k carries seq0+k and ts0+160k and arrives at 20k ms
    plus ``offset_ms(k)``; ``drop`` / ``dup`` / ``swap`` name packet indices k."""
    order = [k for k in range(n) if k not in drop]
    for k in dup:
        order.insert(order.index(k) + 1, k)
    for k in swap:
        i = order.index(k)
        order[i], order[i + 1] = order[i + 1], order[i]
    off = offset_ms or (lambda k: 0.0)
    ks = np.array(order)
    # arrival is what the network did: a swapped pair keeps its arrival instants, in new order
    arrival = np.array([T0 + int((20 * k + off(k)) * MS) for k in ks], dtype=np.int64)
    if swap:
        arrival = np.sort(arrival)
    return dict(seq=(seq0 + ks) & 0xFFFF, rtp_ts=(ts0 + 160 * ks) & 0xFFFFFFFF, arrival_ns=arrival,
                pt=np.full(ks.size, pt), marker=np.zeros(ks.size, dtype=bool), clock_rate_hz=np.full(ks.size, clock))


def test_clean_stream_has_no_loss_no_jitter_and_20ms_delta():
    q = stream_quality(**stream())
    assert (q.expected, q.received, q.lost, q.duplicated, q.reordered, q.sequence_errors) == (100, 100, 0, 0, 0, 0)
    assert q.jitter_max_ms == 0.0 and q.jitter_mean_ms == 0.0
    assert q.max_delta_ms == pytest.approx(20.0)
    assert q.longest_gap_ms == pytest.approx(20.0)
    assert (q.late_fixed, q.late_adaptive) == (0, 0)


def test_loss_counts_slots_and_widens_the_delta():
    q = stream_quality(**stream(drop={10, 11, 50}))
    assert (q.expected, q.received, q.lost, q.duplicated) == (100, 97, 3, 0)
    assert q.sequence_errors == 2                  # the packets after the two holes
    assert q.max_delta_ms == pytest.approx(60.0)   # 9 -> 12
    assert q.jitter_max_ms == 0.0                  # on time, just missing


def test_copies_are_received_but_not_lost_or_reordered():
    q = stream_quality(**stream(dup={20, 21}))
    assert (q.received, q.duplicated, q.lost, q.reordered) == (102, 2, 0, 0)


def test_swapped_pair_is_one_reordered_packet():
    q = stream_quality(**stream(swap={30}))
    assert (q.lost, q.duplicated, q.reordered) == (0, 0, 1)
    assert q.sequence_errors == 2                  # 31 after 29 (gap), then 30 behind 31


def test_wraparound_of_sequence_and_timestamp_is_not_loss():
    q = stream_quality(**stream(seq0=65_500, ts0=0xFFFFFFFF - 160 * 40))
    assert (q.expected, q.lost, q.reordered, q.sequence_errors) == (100, 0, 0, 0)
    assert q.jitter_max_ms == 0.0


def test_alternating_5ms_offset_gives_the_rfc3550_series():
    """Every other packet 5 ms late: |D| = 5 ms for every packet after the first, so
    J_k = 5 (1 - (15/16)^k); max is the last, mean Wireshark's mean over k = 1..n-1."""
    n = 200
    q = stream_quality(**stream(n, offset_ms=lambda k: 5.0 if k % 2 else 0.0))
    series = 5.0 * (1 - (15 / 16) ** np.arange(1, n))
    assert q.jitter_max_ms == pytest.approx(series[-1], rel=1e-9)
    assert q.jitter_mean_ms == pytest.approx(series.mean(), rel=1e-9)
    assert q.max_delta_ms == pytest.approx(25.0)


def test_packet_without_clock_moves_the_arrival_reference_only():
    """Packet 20 has no clock (e.g. telephone-event) and arrives 7 ms late: it does not step
    J; packet 21 is expected 40 ms of media time (since packet 19) after packet 20's arrival,
    407 + 40 - 420 = 27 ms early: J = 27/16, as Wireshark 4.0 computes it."""
    s = stream(50, offset_ms=lambda k: 7.0 if k == 20 else 0.0)
    s["clock_rate_hz"][20] = 0
    q = stream_quality(**s)
    assert q.jitter_max_ms == pytest.approx(27.0 / 16)


def test_marker_and_comfort_noise_packets_are_not_regular():
    s = stream(50, drop=set(range(10, 20)))        # 220 ms of silence, then a talkspurt
    s["marker"][10] = True                         # the first packet after the silence
    q = stream_quality(**s)
    assert q.max_delta_ms == pytest.approx(20.0)   # the marked packet's delta is not counted
    assert q.longest_gap_ms == pytest.approx(220.0)


def test_fixed_buffer_discards_what_adaptive_keeps():
    # one spike 80 ms late, later a 70 ms one: fixed 50 ms loses both; adaptive grows after the first
    transit = np.zeros(100)
    transit[10] = 80.0
    transit[60] = 70.0
    late_fixed, late_adaptive, depth = jitter_buffer_loss(transit)
    assert (late_fixed, late_adaptive, depth) == (2, 1, 80.0)


def test_adaptive_buffer_is_capped_at_500ms():
    transit = np.zeros(50)
    transit[5] = 900.0
    transit[30] = 600.0
    assert jitter_buffer_loss(transit) == (2, 2, 500.0)


def test_late_spike_reaches_the_stream_buffers():
    q = stream_quality(**stream(100, offset_ms=lambda k: 120.0 if k == 40 else 0.0))
    assert (q.lost, q.late_fixed, q.late_adaptive) == (0, 1, 1)
    assert q.adaptive_depth_ms == pytest.approx(120.0)


def test_empty_stream():
    empty = np.zeros(0, dtype=np.int64)
    q = stream_quality(empty, empty, empty, empty, empty.astype(bool), empty)
    assert (q.expected, q.received, q.lost) == (0, 0, 0)


@pytest.mark.parametrize("count", [0, 1, 2, 8, 9, 500])
def test_distinct_stream_keys_are_np_unique(count):
    """The per-call stream keys: peeled one by one for a few streams, np.unique past eight
    (an SSRC a packet), ascending either way."""
    rng = np.random.default_rng(count)
    values = rng.choice(rng.integers(0, 1 << 40, size=max(count, 1)), size=6 * count).astype(np.int64)
    got = _distinct(values)
    assert got == np.unique(values).tolist()
    assert len(got) == len(set(values.tolist())) and (count == 0) == (got == [])


@pytest.mark.parametrize("n", [1, 2, 3000])
def test_references_of_an_all_clocked_in_time_stream_are_the_general_ones(n):
    """The shortcut for a stream whose packets are all in time and clocked gives exactly the
    media times and references of the masked path (the packet before, the first for itself)."""
    since_first = np.arange(n, dtype=np.int64) * 160 + np.arange(n) % 7
    ticks_per_ms = np.full(n, 8, dtype=np.int64)
    everywhere = np.ones(n, dtype=bool)
    nominal_ms, ref, ref_clocked = _references(since_first, ticks_per_ms, everywhere, everywhere)
    assert nominal_ms.tolist() == np.where(everywhere, since_first / ticks_per_ms, 0.0).tolist()
    assert ref.tolist() == ref_clocked.tolist() == _last_before(everywhere).tolist()
    assert ref.tolist() == [0] + list(range(n - 1))
    one_unclocked = everywhere.copy()
    one_unclocked[n // 2] = False
    nominal_ms, ref, ref_clocked = _references(since_first, ticks_per_ms, everywhere, one_unclocked)
    assert nominal_ms[n // 2] == 0.0 and ref.tolist() == _last_before(everywhere).tolist()
    assert ref_clocked.tolist() == _last_before(one_unclocked).tolist()

"""CallMedia: sequence tracking, reorder window, loss/dup/late stats, jitter, the media log."""

import struct
from collections import Counter

import pytest

from agent.media.medialog import read_media_log
from agent.media.sequencer import CallMedia

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def rtp(seq, ts, ssrc=0xA1, pt=0, payload=None, marker=False):
    if payload is None:
        payload = bytes([seq & 0xFF]) * 160
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def feed(cm, seqs, *, side=0, ssrc=0xA1, base_seq=1000, base_ts=8000, spacing_ms=20,
         arrivals=None):
    """Send packets numbered by their index i (seq = base_seq + i) in the given order."""
    for k, i in enumerate(seqs):
        arr = T0 + (arrivals[k] if arrivals is not None else k * spacing_ms * MS)
        ok = cm.on_rtp(side, arr, "10.0.0.1:4000", "10.0.0.2:5000",
                       rtp(base_seq + i, base_ts + 160 * i, ssrc))
        assert ok


def logged(path):
    return [(r[0], r[1]) for r in read_media_log(path)]


@pytest.fixture
def cm(tmp_path):
    return CallMedia(tmp_path / "call.media")


def stats(cm, i=0):
    return cm.streams[i].stats


def test_in_order_fast_path(cm):
    feed(cm, range(50))
    cm.close()
    s = stats(cm)
    assert (s.packets, s.bytes, s.lost, s.duplicated, s.reordered, s.late) == (50, 8000, 0, 0, 0, 0)
    assert s.payload_types == {0: 50}
    assert (s.src, s.dst, s.ssrc) == ("10.0.0.1:4000", "10.0.0.2:5000", 0xA1)
    assert s.first_arrival_ns == T0 and s.last_arrival_ns == T0 + 49 * 20 * MS
    assert s.jitter_ms == 0.0
    assert logged(cm.log_path) == [(0, 1000 + i) for i in range(50)]
    assert cm.first_arrival_ns == T0


def test_loss(cm):
    order = [i for i in range(40) if i not in (5, 6, 20)]
    feed(cm, order)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.late, s.duplicated, s.reordered) == (37, 3, 0, 0, 0)
    assert [seq for _, seq in logged(cm.log_path)] == [1000 + i for i in order]


def test_reorder_is_absorbed(cm):
    order = list(range(30))
    order[10], order[11] = 11, 10          # swap
    order[20:24] = [23, 20, 22, 21]        # deeper shuffle
    feed(cm, order)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.reordered, s.duplicated, s.late) == (30, 0, 4, 0, 0)
    assert [seq for _, seq in logged(cm.log_path)] == [1000 + i for i in range(30)]


def test_duplicates_dropped(cm):
    order = [0, 1, 2, 2, 3, 4, 3, 5, 7, 7, 6, 8]   # dup already released, dup in window
    feed(cm, order)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.duplicated, s.reordered, s.lost, s.late) == (9, 3, 1, 0, 0)
    assert [seq for _, seq in logged(cm.log_path)] == [1000 + i for i in range(9)]


def test_late_by_count(cm):
    # packet 5 arrives after 40 later packets: the 32-packet window gave its slot up
    order = [i for i in range(46) if i != 5]
    order.insert(41, 5)
    feed(cm, order)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.late, s.reordered) == (45, 0, 1, 0)
    assert 1005 not in [seq for _, seq in logged(cm.log_path)]


def test_late_by_time(tmp_path):
    cm = CallMedia(tmp_path / "c.media", reorder_window_ns=90 * MS)
    order = [0, 1, 3, 4, 5, 6, 7, 8, 2, 9]   # slot 2 waited 5 packets × 20 ms > 90 ms
    feed(cm, order)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.late, s.reordered) == (9, 0, 1, 0)
    # slot 2 was given up when packet 8 arrived (100 ms after packet 3), not at close
    assert [seq - 1000 for _, seq in logged(cm.log_path)] == [0, 1, 3, 4, 5, 6, 7, 8, 9]


def test_within_time_window_is_reordered(tmp_path):
    cm = CallMedia(tmp_path / "c.media", reorder_window_ns=100 * MS)
    feed(cm, [0, 1, 3, 4, 2, 5])
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.late, s.reordered) == (6, 0, 0, 1)


def test_sequence_wrap(cm):
    feed(cm, [i for i in range(20) if i != 8], base_seq=65530)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.reordered, s.duplicated) == (19, 1, 0, 0)
    seqs = [seq for _, seq in logged(cm.log_path)]
    assert seqs[:6] == [65530, 65531, 65532, 65533, 65534, 65535]
    assert seqs[6:9] == [0, 1, 3]


def test_reorder_across_wrap(cm):
    order = list(range(12))
    order[5], order[6] = 6, 5      # seq 65535 and 0 swapped
    feed(cm, order, base_seq=65530)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.reordered) == (12, 0, 1)
    assert [seq for _, seq in logged(cm.log_path)][4:8] == [65534, 65535, 0, 1]


def test_ssrc_change_and_two_directions(cm):
    feed(cm, range(10), side=0, ssrc=1)
    feed(cm, range(10), side=1, ssrc=2, base_seq=7)
    feed(cm, range(5), side=0, ssrc=3, base_seq=40000)
    cm.close()
    infos = cm.streams
    assert [(i.index, i.side, i.ssrc, i.stats.packets) for i in infos] == [
        (0, 0, 1, 10), (1, 1, 2, 10), (2, 0, 3, 5)]
    assert Counter(idx for idx, _ in logged(cm.log_path)) == {0: 10, 1: 10, 2: 5}


def test_new_ssrc_releases_older_window(cm):
    feed(cm, [0, 1, 3], ssrc=1)             # 3 waits for 2 in the window
    assert [s for _, s in logged(cm.log_path)] == []   # still buffered in the writer
    feed(cm, [0], ssrc=2)                   # transfer: the old stream is flushed
    cm.log.flush()
    assert [s - 1000 for i, s in logged(cm.log_path) if i == 0] == [0, 1, 3]
    assert stats(cm, 0).lost == 1


def test_sequence_restart_confirmed(cm):
    feed(cm, range(10))
    feed(cm, range(10), base_seq=30000, base_ts=999_000)
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost, s.late, s.duplicated) == (20, 0, 0, 0)
    assert cm.bad_seq == 0
    assert [seq for _, seq in logged(cm.log_path)] == [1000 + i for i in range(20)]


def test_single_wild_sequence_dropped(cm):
    seqs = [1000, 1001, 1002, 40000, 1003, 1004]
    for k, q in enumerate(seqs):
        cm.on_rtp(0, T0 + k * 20 * MS, "a:1", "b:2", rtp(q, 160 * k))
    cm.close()
    s = stats(cm)
    assert (s.packets, s.lost) == (5, 0)
    assert cm.bad_seq == 1


def test_packets_before_first_are_late_not_lost(cm):
    feed(cm, [2, 3, 0, 1, 4])
    cm.close()
    s = stats(cm)
    assert (s.packets, s.late, s.lost, s.duplicated) == (3, 2, 0, 0)


def test_not_rtp_rtcp_zrtp(tmp_path):
    counters = Counter()
    cm = CallMedia(tmp_path / "c.media", counters=counters)
    assert cm.on_rtp(0, T0, "a:1", "b:2", b"\x81\xc9\x00\x07" + b"\x00" * 28) is False
    assert cm.on_rtp(0, T0, "a:1", "b:2", b"hello world!") is False
    assert cm.on_rtp(0, T0, "a:1", "b:2", b"\x10\x00\x00\x01ZRTP" + b"\x00" * 20) is True
    cm.close()
    assert (cm.rtcp, cm.not_rtp, cm.zrtp_packets, cm.zrtp_seen) == (1, 1, 1, True)
    assert cm.streams == [] and cm.first_arrival_ns is None
    assert counters == {"media.skip.rtcp_mux": 1, "media.skip.not_rtp": 1, "media.zrtp": 1}
    assert not (tmp_path / "c.media").exists()


def test_jitter_rfc3550(tmp_path):
    cm = CallMedia(tmp_path / "c.media", clock_rate_for_pt=lambda d, pt: 8000)
    # arrivals alternate on/10 ms late around the 20 ms grid: |D| = 10 ms = 80 ticks
    arrivals = [k * 20 * MS + (10 * MS if k % 2 else 0) for k in range(200)]
    feed(cm, range(200), arrivals=arrivals)
    cm.close()
    j = 0.0
    for k in range(1, 200):
        j += (80 - j) / 16
    assert stats(cm).jitter_ms == pytest.approx(j / 8, abs=1e-3)
    assert 9.99 < j / 8 <= 10.0   # ticks → ms at 8 kHz


def test_jitter_uses_stream_clock(tmp_path):
    cm = CallMedia(tmp_path / "c.media", clock_rate_for_pt=lambda d, pt: 16000)
    arrivals = [k * 20 * MS + (10 * MS if k % 2 else 0) for k in range(200)]
    for k in range(200):   # 16 kHz clock: 320 ticks per 20 ms
        cm.on_rtp(0, T0 + arrivals[k], "a:1", "b:2", rtp(k, 320 * k, pt=9))
    cm.close()
    assert stats(cm).jitter_ms == pytest.approx(10.0, abs=0.05)


def test_log_failure_does_not_break_capture(tmp_path):
    cm = CallMedia(tmp_path / "missing" / "c.media")
    feed(cm, range(1000))
    cm.close()
    assert cm.log.failed is not None
    assert stats(cm).packets == 1000


def test_memory_window_bounded(cm):
    # a permanent gap: the window never holds more than 32 packets
    feed(cm, [i for i in range(1000) if i != 3], arrivals=[0] * 999)
    st = cm._streams[0]
    assert len(st.window) == 0 or len(st.window) <= 32
    cm.close()
    assert stats(cm).lost == 1

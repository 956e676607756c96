"""sequence_capture takes in-order stretches of a raw media log at once (CallMedia.feed_run):
the ordered log, the counters and the key presses are exactly those of feeding the packets
one by one, for every project capture and for traffic with loss, reordering, duplicates, a
sequence restart and an SSRC change."""

from __future__ import annotations

import shutil
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.capture.batches import read_batches
from agent.config import load_config
from agent.pipeline.engine import Engine, MediaMode
from agent.media.runs import RtpRun, RunGroups
from agent.media.stream import sequence_capture

REPO = Path(__file__).resolve().parents[2]
CAPTURES = sorted(p for p in (REPO / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng"))


def _raw_logs(path: Path, workdir: Path):
    finished = []
    eng = Engine(load_config(None, env={}), finished.append, counters=Counter(), workdir=workdir,
                 media=MediaMode.DEFERRED)
    for batch in read_batches([path], eng.counters):
        eng.feed_batch(batch)
    eng.finish()
    return [f for f in finished if f.media_log is not None]


def _outcome(media, ordered: Path):
    streams = [(s.index, s.side, s.ssrc, s.stats) for s in media.streams]
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


# ------------------------------------------------------------ whole-call sequencing

def _impaired_raw_log(path: Path, seed: int, *, events: bool) -> "MediaPlan":
    """A two-way call's raw log (whole RTP packets, arrival order) with loss, duplicates,
    reordering by one to forty packets, late copies of lost packets, silences longer than the
    reorder window, a sequence wrap, and (``events``) RFC 4733 key presses."""
    import random
    import struct

    from agent.media.medialog import MediaLogWriter
    from agent.media.stream import MediaPlan
    from agent.media.timeline import CodecInfo

    rnd = random.Random(seed)
    packets = []                                       # (arrival_ns, direction, bytes)
    for side in (0, 1):
        seq0 = 65000 if side == 0 else rnd.randrange(1 << 16)
        ts0 = rnd.getrandbits(32)
        t = 1_000_000_000 + side * 300_000
        for k in range(3000):
            t += 20_000_000
            if rnd.random() < 0.002:
                t += rnd.choice([250_000_000, 900_000_000])          # a silence beyond the window
            pt = 0
            payload = bytes([(k * 7 + side) & 0xFF]) * 160
            if events and 1000 <= k % 1500 < 1010:
                pt = 101
                payload = struct.pack("!BBH", 5, 0x0A | (0x80 if k % 1500 == 1009 else 0), 160 * (k % 1500 - 999))
            head = struct.pack("!BBHII", 0x80, pt | (0x80 if k == 0 else 0), (seq0 + k) & 0xFFFF,
                               (ts0 + 160 * k) & 0xFFFFFFFF, 0x1000 + side)
            r = rnd.random()
            at = t
            if r < 0.01:
                continue                                                     # lost
            if r < 0.02:
                at += rnd.choice([21_000_000, 45_000_000, 150_000_000, 800_000_000])   # reordered / very late
            packets.append((at, side, head + payload))
            if r > 0.99:
                packets.append((at + rnd.randrange(1, 300_000_000), side, head + payload))   # a copy
    packets.sort(key=lambda p: p[0])
    writer = MediaLogWriter(path)
    labels, seen = [], set()
    for n, (at, side, data) in enumerate(packets):
        if side not in seen:
            seen.add(side)
            labels.append((n, side, f"10.0.0.{side + 1}:4000", f"10.0.0.{2 - side}:4000"))
        writer.append(side, 0, 0, at, 0, False, data)
    writer.close()
    codecs = {0: CodecInfo("PCMU", 8000), 101: CodecInfo("telephone-event", 8000)}
    return MediaPlan(codecs={0: codecs, 1: codecs}, labels=labels)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("redact", [False, True])
def test_whole_call_sequencing_equals_packet_by_packet(seed, redact, tmp_path, monkeypatch):
    """CallMedia.take_whole (the whole call at once) leaves the same ordered log, counters,
    jitter and key presses as feeding the packets one by one, on traffic with loss,
    duplicates, reordering, late packets, long silences and a sequence wrap."""
    from dataclasses import replace

    from agent.media.sequencer import CallMedia

    raw = tmp_path / "raw"
    plan = replace(_impaired_raw_log(raw, seed, events=seed % 2 == 0), redact_dtmf=redact)
    taken = []
    take_whole = CallMedia.take_whole
    monkeypatch.setattr(CallMedia, "take_whole", lambda self, run: taken.append(take_whole(self, run)) or taken[-1])
    one = sequence_capture(raw, tmp_path / "one", plan, bulk=False)
    whole = sequence_capture(raw, tmp_path / "whole", plan, bulk=True)
    assert taken == [True]
    assert _outcome(whole, tmp_path / "whole") == _outcome(one, tmp_path / "one")
    stats = [s.stats for s in one.streams]
    assert all(s.lost and s.duplicated and s.reordered and s.late for s in stats)
    assert (len(one.dtmf_events) > 0) == (seed % 2 == 0)


# ------------------------------------------------------------ ordered log kept in memory

def _block_records(blocks):
    for block in blocks:
        for i in range(len(block)):
            a, n = int(block.payload_at[i]), int(block.payload_len[i])
            yield (int(block.stream[i]), int(block.seq[i]), int(block.ts[i]), int(block.arrival_ns[i]),
                   int(block.pt[i]), bool(block.marker[i]), block.data[a:a + n].tobytes())


def _memory_equals_file(raw: Path, plan, tmp_path: Path, name: str) -> int:
    """sequence_capture(in_memory=True) hands render the very records the file holds, and the
    render of both is the same WAV, byte for byte."""
    from agent.media.medialog import read_media_log
    from agent.media.render import render_recording
    from agent.media.timeline import StreamSpec

    on_disk = sequence_capture(raw, tmp_path / f"{name}.ordered", plan)
    kept = sequence_capture(raw, tmp_path / f"{name}.unused", plan, in_memory=True)
    assert isinstance(kept.ordered_media, list) and not (tmp_path / f"{name}.unused").exists()
    assert list(_block_records(kept.ordered_media)) == list(read_media_log(tmp_path / f"{name}.ordered"))
    assert [s.stats for s in kept.streams] == [s.stats for s in on_disk.streams]
    specs = [StreamSpec(s.index, s.side, plan.codecs.get(s.side, {})) for s in on_disk.streams]
    kw = dict(fmt="wav", channels=2, sample_rate_hz=0)
    a = render_recording(on_disk.ordered_media, specs, tmp_path / f"{name}-file.wav", **kw)
    b = render_recording(kept.ordered_media, specs, tmp_path / f"{name}-memory.wav", **kw)
    if a.path is None:
        assert b.path is None
        return 0
    assert b.path.read_bytes() == a.path.read_bytes()
    assert (b.per_side_ms, b.audio_packets) == (a.per_side_ms, a.audio_packets)
    return a.audio_packets


@pytest.mark.parametrize("seed", range(3))
def test_in_memory_ordered_log_equals_file_whole_call(seed, tmp_path):
    raw = tmp_path / "raw"
    plan = _impaired_raw_log(raw, seed, events=True)
    assert _memory_equals_file(raw, plan, tmp_path, "whole") > 5000


@pytest.mark.parametrize("seed", [1, 2])
def test_in_memory_ordered_log_equals_file_run_by_run(seed, tmp_path):
    """Calls that take_whole refuses (SSRC changes, restarts, several sources) go through
    feed_run and the per-packet path: records appended one by one and many at once, mixed."""
    sys.path.insert(0, str(REPO / "tests" / "engine"))
    from test_engine_batch import _mangled_capture

    path = tmp_path / "mangled.pcap"
    _mangled_capture(path, seed)
    packets = 0
    for n, fin in enumerate(_raw_logs(path, tmp_path / "work")):
        packets += _memory_equals_file(fin.media_log, fin.media_plan, tmp_path, f"c{n}")
    assert packets > 2000



# ------------------------------------------------------------ inspect's batches, impaired

def _impaired_packets(seed: int) -> list[tuple[int, int, int, bytes]]:
    """Two directions of 20 ms G.711 packets, as (arrival_ns, side, source, packet), in
    arrival order: 2 % lost, 2 % duplicated a few packets later, 2 % swapped with the next,
    0.5 % arriving 40 packets (800 ms: past the reorder window) late, sequence numbers that
    wrap, and direction 1 changing SSRC (and sequence) two thirds of the way through."""
    rng = np.random.default_rng(seed)
    out = []
    for side in (0, 1):
        seq, ssrc = 65000 + 100 * side, 0x1000 + side
        slots = []
        for k in range(1500):
            if side == 1 and k == 1000:
                seq, ssrc = 7, 0x2000
            payload = rng.integers(0, 256, 160, dtype=np.uint8).tobytes()
            packet = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (160 * k) & 0xFFFFFFFF, ssrc) + payload
            seq += 1
            arrival = 10**9 + k * 20_000_000 + side * 7_000_000 + int(rng.integers(0, 3_000_000))
            roll = rng.random()
            if roll < 0.02:
                continue                                            # lost
            if roll < 0.04:
                slots.append((arrival + int(rng.integers(1, 5)) * 20_000_000, packet))   # and a copy
            elif roll < 0.06:
                arrival += 21_000_000                               # after the next one
            elif roll < 0.065:
                arrival += 800_000_000                              # late
            slots.append((arrival, packet))
        out += [(arrival, side, 1 + side, packet) for arrival, packet in slots]
    return sorted(out)


def _rtp_run(packets: list[tuple[int, int, int, bytes]]) -> RunGroups:
    """One call's packets of a batch as the batch path hands them over: grouped by direction,
    arrival order inside each."""
    by_side = sorted(range(len(packets)), key=lambda i: (packets[i][1], i))
    buf = b"".join(packets[i][3] for i in by_side)
    sizes = np.array([len(packets[i][3]) for i in by_side], dtype=np.int64)
    head = np.frombuffer(b"".join(packets[i][3][:12] for i in by_side), dtype=">u2").reshape(-1, 6)
    side = np.array([packets[i][1] for i in by_side], dtype=np.int64)
    run = RtpRun(order=np.array(by_side, dtype=np.int64), side=side,
                 arrival_ns=np.array([packets[i][0] for i in by_side], dtype=np.int64),
                 src_key=np.array([packets[i][2] for i in by_side], dtype=np.int64),
                 dst_key=np.zeros(len(by_side), dtype=np.int64), b0=(head[:, 0] >> 8).astype(np.uint8),
                 b1=(head[:, 0] & 0xFF).astype(np.uint8), seq=head[:, 1].astype(np.int64),
                 rtp_ts=(head[:, 2].astype(np.int64) << 16) | head[:, 3], ssrc=(head[:, 4].astype(np.int64) << 16) | head[:, 5],
                 size=sizes, buf=buf, data_start=np.concatenate(([0], np.cumsum(sizes)[:-1])),
                 dst_known=np.zeros(len(by_side), dtype=bool), label=lambda key: f"10.0.0.{key}:4000")
    return RunGroups(run, np.flatnonzero(np.diff(side, prepend=-1)))


def _state(media) -> list:
    """Everything of a CallMedia that later packets or the record can see."""
    hops = []
    for side, hop in sorted(media._hops.items()):
        tail = [] if hop.tail is None else [row.tobytes() for row in hop.tail]
        hops.append((side, hop.src, hop.last_ns, (list(hop.recent) + tail)[-hop.KEEP:]))
    streams = [(st.index, st.side, st.ssrc, st.stats, st.next_ext, st.max_ext, st.window, st.window_since_ns,
                st.skipped, st.jitter_ticks, st.prev_arrival_ns, st.prev_ts) for st in media._streams]
    return [media.log.records, media.last_arrival_ns, hops, streams]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_inspect_batches_sequence_impaired_streams_as_arrays(seed, monkeypatch):
    """inspect (counters only) takes a call's packets of a batch with loss, duplicates,
    reordering, late packets or a window still held from the batch before as arrays from
    each stream's state (``_take_resumed``), leaving after every batch exactly the state
    ``on_rtp`` leaves packet by packet; only a batch with a new SSRC goes one by one."""
    from agent.media.sequencer import CallMedia

    packets = _impaired_packets(seed)
    one = CallMedia(None)
    many = CallMedia(None)
    resumed = Counter()
    take_resumed = CallMedia._take_resumed

    def counted(self, *args):
        resumed[args[1].run.ssrc[args[1].start[args[2]]] > 0x1FFF] += 1
        return take_resumed(self, *args)
    monkeypatch.setattr(CallMedia, "_take_resumed", counted)
    for lo in range(0, len(packets), 100):
        batch = packets[lo:lo + 100]
        for arrival, side, src, packet in batch:
            one.on_rtp(side, arrival, f"10.0.0.{src}:4000", "", packet)
        groups = _rtp_run(batch)
        later: list = []
        assert many.take_groups(groups, 0, len(groups), later) == 0
        if later:
            CallMedia.accept_later(groups, later)
        assert _state(many) == _state(one)
    stats = [st.stats for st in one._streams]
    assert [s.ssrc for s in stats] == [0x1000, 0x1001, 0x2000]
    assert all(s.lost and s.duplicated and s.reordered for s in stats), stats
    assert sum(s.late for s in stats) > 0, stats
    # Every batch but the first and the one with the new SSRC; the new stream's too.
    assert resumed[False] > 40 and resumed[True] > 5, resumed


@pytest.mark.parametrize("mixed", [False, True], ids=["one-source-a-group", "mixed-sources"])
def test_quality_add_groups_equals_add_run(mixed):
    """QualityCollector.add_groups (the source ids from each group's first key) keeps the same
    columns and source ids as add_run (a sort of every packet's key), also when a group mixes
    sources (a relay's copy), where it falls back to add_run."""
    from agent.media.quality import QualityCollector

    packets = _impaired_packets(1)[:300]
    if mixed:
        packets = [(a, side, 7 if i % 5 == 0 and side else src, p)
                   for i, (a, side, src, p) in enumerate(packets)]
    groups = _rtp_run(packets)
    assert all(groups.one_src) != mixed
    by_run, by_groups = QualityCollector(), QualityCollector()
    by_run.src_id("10.0.0.9:4000")                      # ids already given keep theirs
    by_groups.src_id("10.0.0.9:4000")
    positions = groups.positions(0, len(groups))
    by_run.add_run(groups.run, positions)
    by_groups.add_groups(groups, 0, len(groups), positions)
    assert by_groups._src_ids == by_run._src_ids
    assert len(by_run._src_ids) == (4 if mixed else 3)
    for got, want in zip(by_groups._blocks[0], by_run._blocks[0]):
        assert got.dtype == want.dtype and got.tolist() == want.tolist()
    assert sorted(set(by_run._blocks[0][1].tolist())) == ([1, 2, 3] if mixed else [1, 2])

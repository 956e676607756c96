"""The batch reader (replay's front end) yields exactly the frames, times and damage counters
of the record readers, for pcap and pcapng, clean and damaged, plain and gzip'd."""

from __future__ import annotations

import gzip
import random
import struct
from collections import Counter
from pathlib import Path

import pytest

from agent.capture.batches import read_batches
from agent.capture.files import open_captures

REPO = Path(__file__).resolve().parents[2]


def _frames(n: int, seed: int = 1) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    t0 = 1_768_471_200_000_000_000
    out = []
    for i in range(n):
        size = rng.choice([214, 214, 214, 60, 700])        # mostly equal lengths, as RTP is
        out.append((t0 + i * 1_000_000, bytes(rng.randrange(256) for _ in range(size))))
    return out


def _pcapng(frames: list[tuple[int, bytes]], *, trailing_isb: bool = False, second_section: bool = False,
            late_idb: bool = False) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 1, 0, 65535))

    def epbs(items, if_id=0):
        return b"".join(block(6, struct.pack("<IIIII", if_id, ts_us >> 32, ts_us & 0xFFFFFFFF, len(f), len(f)) + f)
                        for ts_us, f in ((ts // 1000, f) for ts, f in items))

    half = len(frames) // 2
    out = shb + idb + epbs(frames[:half])
    if late_idb:
        out += idb + epbs(frames[half:], if_id=1)
    elif second_section:
        out += shb + idb + epbs(frames[half:])
    else:
        out += epbs(frames[half:])
    if trailing_isb:
        out += block(5, struct.pack("<III", 0, 0, 0))
    return out


def _pcap(frames: list[tuple[int, bytes]]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for ts, f in frames:
        out += struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, len(f), len(f)) + f
    return out


def _damaged(data: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "truncated":
        return data[: len(data) * 2 // 3 + 7]
    if kind == "flipped":
        b = bytearray(data)
        for _ in range(20):
            b[rng.randrange(200, len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == "zeroed":
        b = bytearray(data)
        at = len(b) // 2
        b[at:at + 300] = bytes(300)
        return bytes(b)
    if kind == "gzip_cut":
        return gzip.compress(data)[: len(gzip.compress(data)) * 3 // 4]
    return data


def _both(path: Path) -> tuple[list, Counter, list, Counter]:
    want_counters: Counter = Counter()
    want = [(ts, lt, bytes(f)) for ts, lt, f in open_captures([path], want_counters)]
    got_counters: Counter = Counter()
    got = [(int(b.ts_ns[i]), b.linktype, b.frame(i)) for b in read_batches([path], got_counters)
           for i in range(len(b))]
    return want, want_counters, got, got_counters


@pytest.mark.parametrize("fmt", ["pcap", "pcapng", "pcapng_isb", "pcapng_sections", "pcapng_late_idb"])
@pytest.mark.parametrize("kind", ["clean", "truncated", "flipped", "zeroed", "gzip_cut"])
def test_batches_equal_records(fmt, kind, tmp_path):
    frames = _frames(3000)
    data = _pcap(frames) if fmt == "pcap" else _pcapng(
        frames, trailing_isb=fmt == "pcapng_isb", second_section=fmt == "pcapng_sections",
        late_idb=fmt == "pcapng_late_idb")
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(_damaged(data, kind, random.Random(kind)))
    want, want_counters, got, got_counters = _both(path)
    assert got == want and got_counters == want_counters
    if kind == "clean":
        assert len(got) == 3000 and not want_counters
    elif kind == "truncated":
        assert 0 < len(got) < 3000 and want_counters["capture.truncated"] == 1


def test_batch_walker_takes_pcapng_itself(tmp_path, monkeypatch):
    """Not a vacuous equality: a clean pcapng is walked in batches, not record by record."""
    import agent.capture.batches as batches

    path = tmp_path / "x.pcapng"
    path.write_bytes(_pcapng(_frames(3000)))
    monkeypatch.setattr(batches, "resume_pcapng", lambda *a, **k: pytest.fail("handed over"))
    assert sum(len(b) for b in read_batches([path], Counter())) == 3000


@pytest.mark.parametrize("idb_body", [b"", b"\x01", struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 14, 8) + b"\x01\x02"])
def test_malformed_interface_block_is_not_a_crash(idb_body, tmp_path):
    """An interface block too short for its link type, or with a cut option, used to raise out
    of the reader (struct.error): now the interface is kept (link type 0xFFFF when unknown)."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    data = (block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)) + block(1, idb_body)
            + block(6, struct.pack("<IIIII", 0, 0, 1, 4, 4) + b"abcd"))
    path = tmp_path / "idb.pcapng"
    path.write_bytes(data)
    want, want_counters, got, got_counters = _both(path)
    assert got == want and got_counters == want_counters and len(got) == 1


def _both_paths(paths: list[Path]) -> tuple[list, Counter, list, Counter, int]:
    want_counters: Counter = Counter()
    want = [(ts, lt, bytes(f)) for ts, lt, f in open_captures(paths, want_counters)]
    got_counters: Counter = Counter()
    batches = list(read_batches(paths, got_counters))
    got = [(int(b.ts_ns[i]), b.linktype, b.frame(i)) for b in batches for i in range(len(b))]
    return want, want_counters, got, got_counters, len(batches)


def _shifted(frames: list[tuple[int, bytes]], by_ns: int) -> list[tuple[int, bytes]]:
    return [(ts + by_ns, f) for ts, f in frames]


@pytest.mark.parametrize("layout", ["rotated", "rotated_mixed_formats", "overlapping_taps", "touching",
                                    "partly_overlapping", "damaged_member", "clock_jump_member",
                                    "overlapping_out_of_order", "three_taps_ties", "overlapping_linktypes"])
def test_several_files_merge_in_batches_as_records(layout, tmp_path):
    """Several files (a directory of rotated files, two taps overlapping in time, files whose
    first and last times meet): the batch reader yields the records, in the order and with
    the counters of the record merge; rotated files pass through whole batches."""
    frames = _frames(6000, seed=7)
    d = tmp_path / "caps"
    d.mkdir()
    if layout in ("rotated", "rotated_mixed_formats", "damaged_member", "clock_jump_member"):
        parts = [frames[i:i + 1500] for i in range(0, 6000, 1500)]
        if layout == "clock_jump_member":
            parts[2] = parts[2][:700] + _shifted(parts[2][700:], -3 * 86400 * 10**9)
        for n, part in enumerate(parts):
            data = _pcapng(part) if layout == "rotated_mixed_formats" and n % 2 else _pcap(part)
            if layout == "damaged_member" and n == 1:
                data = _damaged(data, "flipped", random.Random(5))
            name = f"cap_{n:03d}.pcap"
            (d / name).write_bytes(gzip.compress(data) if layout == "rotated_mixed_formats" and n == 3 else data)
    elif layout == "overlapping_taps":
        (d / "tap_a.pcap").write_bytes(_pcap(frames[0::2]))
        (d / "tap_b.pcap").write_bytes(_pcap(_shifted(frames[1::2], 0)))
    elif layout == "touching":
        # The next file starts at the very time the previous one ends (ties: path order).
        a, b = frames[:3000], frames[3000:]
        (d / "a.pcap").write_bytes(_pcap(a))
        (d / "b.pcap").write_bytes(_pcap(_shifted(b, a[-1][0] - b[0][0])))
    elif layout == "overlapping_out_of_order":
        # Taps whose records step back in time now and then (interfaces interleaving).
        rng = random.Random(3)
        a, b = frames[0::2], frames[1::2]
        for part in (a, b):
            for _ in range(60):
                i = rng.randrange(len(part) - 3)
                part[i], part[i + 2] = part[i + 2], part[i]
        (d / "tap_a.pcap").write_bytes(_pcap(a))
        (d / "tap_b.pcap").write_bytes(_pcap(b))
    elif layout == "three_taps_ties":
        # Three taps with the very same timestamps (ties go in path order).
        for n in range(3):
            (d / f"tap_{n}.pcap").write_bytes(_pcap([(ts - ts % 10_000_000, f) for ts, f in frames[n::3]]))
    elif layout == "overlapping_linktypes":
        (d / "tap_a.pcap").write_bytes(_pcap(frames[0::2]))
        cooked = _pcap(frames[1::2])
        (d / "tap_b.pcap").write_bytes(cooked[:20] + struct.pack("<I", 113) + cooked[24:])
    else:                                               # partly_overlapping
        (d / "a.pcap").write_bytes(_pcap(frames[:4000]))
        (d / "b.pcap").write_bytes(_pcap(frames[3500:]))
    want, want_counters, got, got_counters, batches = _both_paths([d])
    assert got == want and got_counters == want_counters
    assert len(want) >= 3000
    if layout == "rotated":
        assert batches == 4                             # each file's batch passes through
    if layout in ("overlapping_taps", "three_taps_ties"):
        assert batches < 20                             # merged in batches, not frame by frame
    if layout == "clock_jump_member":
        assert want_counters["capture.clock_jumps"] == 1


def test_overlapping_files_tie_at_a_step_back(tmp_path):
    """Tap A steps back in time right after a frame whose time tap B also has: the record
    merge takes A's 5 s, then A's 2 s (now A's head), and only then B's 5 s."""
    base = 1_768_471_200_000_000_000
    a = [(base + s * 10**9, bytes([0xA0 + n]) * 60) for n, s in enumerate([1, 5, 2, 6])]
    b = [(base + s * 10**9, bytes([0xB0 + n]) * 60) for n, s in enumerate([3, 5, 7])]
    (tmp_path / "a.pcap").write_bytes(_pcap(a))
    (tmp_path / "b.pcap").write_bytes(_pcap(b))
    want, want_counters, got, got_counters, _ = _both_paths([tmp_path / "a.pcap", tmp_path / "b.pcap"])
    assert [f[0] for _, _, f in want] == [0xA0, 0xB0, 0xA1, 0xA2, 0xB1, 0xA3, 0xB2]
    assert got == want and got_counters == want_counters


def test_many_overlapping_taps_read_less_at_a_time(tmp_path, monkeypatch):
    """Each file active in a merge holds a batch: with many taps overlapping in time each reads
    less (memory stays about MERGE_BYTES), with the same records as the record merge."""
    import agent.capture.batches as batches

    monkeypatch.setattr(batches, "MERGE_BYTES", 64 * 1024)
    monkeypatch.setattr(batches, "READ_BYTES", 32 * 1024)
    monkeypatch.setattr(batches, "MERGE_MIN_READ", 4 * 1024)
    sizes = []
    original = batches.file_batches
    monkeypatch.setattr(batches, "file_batches",
                        lambda path, counters, read_bytes=batches.READ_BYTES:
                        (sizes.append(read_bytes), original(path, counters, read_bytes))[1])
    frames = _frames(4000, seed=9)
    for n in range(8):
        (tmp_path / f"tap_{n}.pcap").write_bytes(_pcap(frames[n::8]))
    want, want_counters, got, got_counters, _ = _both_paths([tmp_path])
    assert got == want and got_counters == want_counters and len(got) == 4000
    assert sizes[0] == 32 * 1024 and min(sizes) < sizes[0]


def test_overlapping_taps_with_jittery_clocks(tmp_path, monkeypatch):
    """Taps whose clocks step back every few frames, with a short look ahead: still exactly
    the record merge."""
    import agent.capture.batches as batches

    monkeypatch.setattr(batches, "INTERLEAVE_AHEAD", 7)
    rng = random.Random(11)
    frames = [(ts + rng.randrange(-3_000_000, 3_000_000), f) for ts, f in _frames(3000, seed=4)]
    (tmp_path / "a.pcap").write_bytes(_pcap(frames[0::2]))
    (tmp_path / "b.pcap").write_bytes(_pcap(frames[1::2]))
    want, want_counters, got, got_counters, _ = _both_paths([tmp_path])
    assert got == want and got_counters == want_counters and len(got) == 3000

"""Capture records in batches: many frames in one buffer, described by numpy arrays.

Owns: ``FrameBatch`` (a buffer plus the start, length and capture time of every frame in
it) and ``read_batches``, the replay front end. A single pcap or pcapng file (the common
replay case: tcpdump, tshark, Wireshark, SPAN recorders) is read by a fast walker that
reads 8 MiB at a time and finds record (block) boundaries with one ``unpack_from`` each,
or, where consecutive records have the same length (a SPAN port full of 20 ms G.711
frames), with one vectorised check for a whole run of them. Several files are merged by
time as ``files.open_captures`` merges them, but in batches (``_merge_batches``): a file
alone in its stretch of time passes its walker's batches through. What the walker cannot
read (pcapng whose interfaces come late) comes from the record readers
(``agent.capture.files``) grouped into batches, so the engine has one entry point.

Damage: the fast walker trusts nothing it has not checked. At the first record whose
header a writer would not produce (for pcapng also: any block but an enhanced packet block,
a timestamp the reader would have to clamp), or a file that ends inside a record, it hands
over to the record reader at that byte offset (``resume_pcap`` / ``resume_pcapng``), which
counts, warns and resynchronises exactly as it does on its own.

Clock steps: backward jumps inside one file are re-based as ``files.steady_records`` does
(vectorised check per batch, a per-record loop only for a batch that has one).
"""

from __future__ import annotations

import heapq
import io
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.byterows import byte_rows
from agent.capture.files import MAX_BACKWARD_JUMP_NS, first_timestamp, iter_capture_paths, steady_records
from agent.capture.pcapfile import (_BT_EPB, _BT_IDB, MAX_RECORD_BYTES, MAX_TS_NS, PCAP_MAGIC_NS,
                                    PCAP_MAGIC_US, PCAPNG_SHB, Record, _open, _parse_idb, read_capture,
                                    resume_pcap, resume_pcapng)

log = logging.getLogger(__name__)

__all__ = ["FrameBatch", "read_batches", "group_records"]

READ_BYTES = 8 << 20              # one read of the fast walker, about 36,000 G.711 frames
GROUP_FRAMES = 32_768             # frames per batch made from a record reader
_SPEC_MIN = 8                     # a run of equal-length records worth a vectorised check
_SPEC_MAX = 8192
_SPEC_COOLDOWN = 64               # records walked one by one after a speculation that failed


@dataclass(slots=True)
class FrameBatch:
    """Frames ``buf[starts[i]:starts[i] + lens[i]]`` captured at ``ts_ns[i]``, one link type."""
    buf: bytes
    starts: np.ndarray            # int64 offsets into buf
    lens: np.ndarray              # int64 captured lengths
    ts_ns: np.ndarray             # int64 capture times (re-based across backward clock steps)
    linktype: int

    def __len__(self) -> int:
        return len(self.starts)

    def frame(self, i: int) -> bytes:
        start = int(self.starts[i])
        return self.buf[start:start + int(self.lens[i])]


class _Steady:
    """``files.steady_records`` for arrays: re-base one file's timestamps across backward jumps."""

    __slots__ = ("path", "counters", "offset", "last")

    def __init__(self, path: Path | None, counters) -> None:
        self.path = path
        self.counters = counters
        self.offset = 0
        self.last: int | None = None

    def apply(self, ts_ns: np.ndarray) -> np.ndarray:
        if not len(ts_ns):
            return ts_ns
        if self.offset and int(ts_ns.max()) > MAX_TS_NS - self.offset:
            return self._each(ts_ns)                 # would leave 64 bits: clamp one by one
        ts = ts_ns + self.offset if self.offset else ts_ns
        first_last = self.last if self.last is not None else int(ts[0])
        running = np.maximum.accumulate(ts)
        np.maximum(running, first_last, out=running)
        before = np.empty_like(running)
        before[0] = first_last
        before[1:] = running[:-1]
        if not np.any(before - ts > MAX_BACKWARD_JUMP_NS):
            self.last = int(running[-1])
            return ts
        return self._each(ts_ns)        # rare: a clock step inside this batch

    def _each(self, ts_ns: np.ndarray) -> np.ndarray:
        out = ts_ns.tolist()
        offset, last = self.offset, self.last
        for i, t in enumerate(out):
            t = min(t + offset, MAX_TS_NS)
            if last is not None and last - t > MAX_BACKWARD_JUMP_NS:
                self.counters["capture.clock_jumps"] += 1
                log.warning("%s: capture clock jumps by %+.0f s; continuing from the previous record",
                            self.path, (t - last) / 1e9)
                offset += last + 1_000_000 - t
                t = min(last + 1_000_000, MAX_TS_NS)
            if last is None or t > last:
                last = t
            out[i] = t
        self.offset, self.last = offset, last
        return np.array(out, dtype=np.int64)


def read_batches(paths: Iterable[str | Path], counters, read_bytes: int | None = None) -> Iterator[FrameBatch]:
    """Every frame of the given captures (merged by time, as ``open_captures``), in batches of
    up to ``read_bytes`` (default READ_BYTES) of one file. Raises CaptureFormatError before
    the first batch for a file that is not a capture."""
    files = iter_capture_paths(paths)
    read_bytes = read_bytes or READ_BYTES
    if len(files) == 1:
        return file_batches(files[0], counters, read_bytes)
    return _merge_batches(files, counters, read_bytes)


def file_batches(path: Path, counters, read_bytes: int = READ_BYTES) -> Iterator[FrameBatch]:
    """One file's batches: the fast walker's, or the record reader's grouped."""
    fast = _pcap_batches(path, counters, read_bytes)
    if fast is not None:
        return fast
    return group_records(steady_records(read_capture(path, counters), counters, path))


class _Cursor:
    """Where the merge stands in one file: its batches, the current one and a position."""

    __slots__ = ("batches", "batch", "pos")

    def __init__(self, batches: Iterator[FrameBatch]) -> None:
        self.batches = batches
        self.batch: FrameBatch | None = None
        self.pos = 0
        self._next_batch()

    def _next_batch(self) -> None:
        self.pos = 0
        self.batch = next(self.batches, None)
        while self.batch is not None and not len(self.batch):
            self.batch = next(self.batches, None)

    @property
    def ts(self) -> int:
        return int(self.batch.ts_ns[self.pos])

    def take(self, limit: int | None, first: bool) -> tuple[FrameBatch, bool]:
        """Frames from here up to (not including) the first one after the first (``first``:
        the one here is taken whatever its time) stamped later than ``limit``; and whether
        such a frame stopped it (it is then the cursor's frame)."""
        b = self.batch
        lo = self.pos + 1 if first else self.pos
        end = len(b)
        if limit is not None:
            later = np.flatnonzero(b.ts_ns[lo:] > limit)
            if len(later):
                end = lo + int(later[0])
        part = b if (self.pos == 0 and end == len(b)) else _slice(b, self.pos, end)
        if end < len(b):
            self.pos = end
            return part, True
        self._next_batch()
        return part, False

    def advance(self, n: int) -> None:
        self.pos += n
        if self.pos == len(self.batch):
            self._next_batch()

    def record(self) -> tuple[int, int, bytes]:
        b = self.batch
        rec = (int(b.ts_ns[self.pos]), b.linktype, b.frame(self.pos))
        self.pos += 1
        if self.pos == len(b):
            self._next_batch()
        return rec


def _slice(b: FrameBatch, lo: int, hi: int) -> FrameBatch:
    return FrameBatch(b.buf, b.starts[lo:hi], b.lens[lo:hi], b.ts_ns[lo:hi], b.linktype)


INTERLEAVE_AHEAD = 16_384         # frames of each tap looked at per merge step (see _interleave)


def _interleave(heap: list[tuple[int, int, _Cursor]], limit: int | None) -> FrameBatch | None:
    """The frames that the record merge takes next from the active files, merged in one batch,
    or None when there are none to take at once (or the files differ in link type).

    Each file's frames from its position up to its first step back in time are in order;
    ``bound`` is the least of those runs' last times. Every frame stamped before ``bound``
    (and before ``limit``, where a pending file joins) comes out of the record merge before
    any other frame (each other one has a frame at or after ``bound`` before or at it in its
    file), and among themselves by (time, file): a stable sort of them in file order."""
    active = sorted(heap, key=lambda entry: entry[1])
    cursors = [c for _, _, c in active]
    linktype = cursors[0].batch.linktype
    if any(c.batch.linktype != linktype for c in cursors):
        return None
    runs = []
    for c in cursors:
        # A bounded look ahead: taps whose clocks step back every few frames would otherwise
        # rescan the rest of their batches at every step.
        ts = c.batch.ts_ns[c.pos:c.pos + INTERLEAVE_AHEAD]
        back = np.flatnonzero(ts[1:] < ts[:-1])
        runs.append(ts[:int(back[0]) + 1] if len(back) else ts)
    bound = min(int(run[-1]) for run in runs)
    if limit is not None:
        bound = min(bound, limit)
    counts = [int(np.searchsorted(run, bound, side="left")) for run in runs]
    if sum(counts) < 2:
        return None                          # one frame or none: the record step does it
    regions, starts, lens, stamps = [], [], [], []
    at = 0
    for c, n in zip(cursors, counts):
        if not n:
            continue
        b, lo, hi = c.batch, c.pos, c.pos + n
        first, last = int(b.starts[lo]), int(b.starts[hi - 1] + b.lens[hi - 1])
        regions.append(b.buf[first:last])
        starts.append(b.starts[lo:hi] - first + at)
        lens.append(b.lens[lo:hi])
        stamps.append(b.ts_ns[lo:hi])
        at += last - first
        c.advance(n)
    ts = np.concatenate(stamps)
    order = np.argsort(ts, kind="stable")    # ties: file order, as the record merge's heap
    return FrameBatch(b"".join(regions), np.concatenate(starts)[order], np.concatenate(lens)[order],
                      ts[order], linktype)


MERGE_BYTES = 64 << 20            # the batches of all files active at once in a merge, at most about
MERGE_MIN_READ = 1 << 20          # ... but no file reads less at a time than the record reader


def _merge_read_bytes(active: int, read_bytes: int) -> int:
    """The read size for a file joining ``active - 1`` others in a merge: each active file holds
    a batch, so many taps overlapping in time read less at a time; rotated files, one or two
    active, read as a single file does."""
    return max(MERGE_MIN_READ, min(read_bytes, MERGE_BYTES // active))


def _merge_batches(files: list[Path], counters, read_bytes: int) -> Iterator[FrameBatch]:
    """``open_captures``' merge of several files, in batches: the same records in the same
    order (``files._merge``: a file joins when the merge reaches its first timestamp, ties
    go in path order). While one file is active (rotated files: the usual case) its own
    batches pass through, cut where the next file starts; where files overlap in time,
    ``_interleave`` merges what it can at once, and the rest (around a step back in time, or
    files of different link types) is interleaved record by record and grouped again."""
    pending: list[tuple[int, int, Path]] = []
    for idx, path in enumerate(files):
        ts = first_timestamp(path, counters)   # format errors surface before the first batch
        if ts is not None:
            pending.append((ts, idx, path))
    pending.sort(reverse=True)                 # pop() gives the earliest
    heap: list[tuple[int, int, _Cursor]] = []
    mixed: list[tuple[int, int, bytes]] = []   # interleaved records not yet grouped
    while pending or heap:
        while pending and (not heap or pending[-1][0] <= heap[0][0]):
            _, idx, path = pending.pop()
            cursor = _Cursor(file_batches(path, counters, _merge_read_bytes(len(heap) + 1, read_bytes)))
            if cursor.batch is not None:
                heapq.heappush(heap, (cursor.ts, idx, cursor))
        if not heap:
            continue
        if len(heap) == 1:
            if mixed:
                yield from group_records(iter(mixed))
                mixed = []
            _, idx, cursor = heap.pop()
            limit = pending[-1][0] if pending else None
            first = True
            while cursor.batch is not None:
                part, stopped = cursor.take(limit, first)
                first = False
                if len(part):
                    yield part
                if stopped:
                    heapq.heappush(heap, (cursor.ts, idx, cursor))
                    break
            continue
        # Several files active (taps overlapping in time): what all of them hold below a bound
        # is merged at once; where that is nothing, one record goes (the record merge's step).
        merged = _interleave(heap, pending[-1][0] if pending else None)
        if merged is not None:
            if mixed:
                yield from group_records(iter(mixed))
                mixed = []
            yield merged
            heap = [(c.ts, idx, c) for _, idx, c in heap if c.batch is not None]
            heapq.heapify(heap)
            continue
        _, idx, cursor = heap[0]
        mixed.append(cursor.record())
        if len(mixed) >= GROUP_FRAMES:
            yield from group_records(iter(mixed))
            mixed = []
        if cursor.batch is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (cursor.ts, idx, cursor))
    if mixed:
        yield from group_records(iter(mixed))


def group_records(records: Iterator[Record], steady: _Steady | None = None) -> Iterator[FrameBatch]:
    """Batches of consecutive records (a new batch where the link type changes)."""
    frames: list[bytes] = []
    stamps: list[int] = []
    linktype = None
    for ts_ns, lt, frame in records:
        if lt != linktype or len(frames) >= GROUP_FRAMES:
            if frames:
                yield _joined(frames, stamps, linktype, steady)
                frames, stamps = [], []
            linktype = lt
        frames.append(frame)
        stamps.append(ts_ns)
    if frames:
        yield _joined(frames, stamps, linktype, steady)


def _joined(frames: list[bytes], stamps: list[int], linktype: int, steady: _Steady | None) -> FrameBatch:
    lens = np.fromiter(map(len, frames), dtype=np.int64, count=len(frames))
    starts = np.zeros(len(frames), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    ts = np.array(stamps, dtype=np.int64)
    if steady is not None:
        ts = steady.apply(ts)
    return FrameBatch(b"".join(frames), starts, lens, ts, linktype)


def _next_chunk(f, at: int, left: bytes, read_bytes: int) -> bytes | None:
    """The unconsumed ``left`` (it starts at file offset ``at``) followed by the next read, or
    None when the file has nothing more. A plain file is read again from ``at`` (a seek and
    one read: the partial record at the end of a chunk crosses the kernel twice) instead of
    joining ``left`` to a new read, which copies the whole 8 MiB chunk once more into freshly
    faulted memory; a gzip stream cannot seek back cheaply, so there they are joined."""
    if isinstance(f, io.BufferedReader):
        f.seek(at)
        buf = f.read(read_bytes + len(left))
        return buf if len(buf) > len(left) else None
    data = f.read(read_bytes)
    return left + data if data else None


def _pcap_batches(path: Path, counters, read_bytes: int = READ_BYTES) -> Iterator[FrameBatch] | None:
    """The fast walker for a classic pcap or a pcapng file, or None for anything else."""
    try:
        f = _open(path)
    except OSError:
        return None                  # the record reader raises the proper error
    try:
        head = f.read(24)
    except (OSError, EOFError, zlib.error):
        f.close()
        return None
    if len(head) < 24:
        f.close()
        return None
    if struct.unpack("<I", head[:4])[0] == PCAPNG_SHB:
        f.close()
        return _pcapng_batches(path, counters, read_bytes)
    for endian in ("<", ">"):
        magic, = struct.unpack(endian + "I", head[:4])
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            snaplen, network = struct.unpack_from(endian + "II", head, 16)
            header = (endian, magic, network & 0xFFFF, snaplen)
            return _walk_file(path, f, counters, header, read_bytes)
    f.close()
    return None


def _walk_file(path: Path, f, counters, header: tuple[str, int, int, int],
               read_bytes: int = READ_BYTES) -> Iterator[FrameBatch]:
    endian, magic, linktype, snaplen = header
    u32 = np.dtype(endian + "u4")
    caplen_at = struct.Struct(endian + "I").unpack_from
    frac_mult = 1 if magic == PCAP_MAGIC_NS else 1000
    frac_max = 1_000_000_000 if magic == PCAP_MAGIC_NS else 1_000_000
    steady = _Steady(path, counters)
    left = b""
    at = 24                          # file offset of the first byte not yet handed out
    handover = False
    with f:
        while True:
            try:
                buf = _next_chunk(f, at, left, read_bytes)
            except (EOFError, OSError, zlib.error):   # a damaged gzip stream: let the reader report it
                handover = True
                break
            if buf is None:
                handover = bool(left)          # a partial record at the end: the reader warns
                break
            starts, pos, bad = _walk(buf, caplen_at, u32)
            if len(starts):
                hdr = byte_rows(buf, starts, 16)
                fields = hdr.view(u32)            # (n, 4): sec, frac, caplen, origlen
                sec = fields[:, 0].astype(np.int64)
                frac = fields[:, 1].astype(np.int64)
                caplen = fields[:, 2].astype(np.int64)
                origlen = fields[:, 3].astype(np.int64)
                wrong = (caplen > origlen) | (origlen == 0) | (frac >= frac_max)
                if wrong.any():
                    cut = int(np.argmax(wrong))
                    pos = int(starts[cut])          # the reader takes over at this header
                    starts, sec, frac, caplen = starts[:cut], sec[:cut], frac[:cut], caplen[:cut]
                    bad = True
                if len(starts):
                    ts = steady.apply(sec * 1_000_000_000 + frac * frac_mult)
                    yield FrameBatch(buf, starts + 16, caplen, ts, linktype)
            if bad:
                at += pos
                handover = True
                break
            at += pos
            left = buf[pos:]
    if handover:
        # The record reader goes on from the first record not handed out: it counts, warns
        # and resynchronises as it does on its own.
        yield from group_records(resume_pcap(path, at, counters, endian, magic, linktype, snaplen), steady)


def _pcapng_batches(path: Path, counters, read_bytes: int = READ_BYTES) -> Iterator[FrameBatch] | None:
    """The fast walker for a pcapng file whose section header and interfaces come first (as
    every writer puts them), or None (the record reader then reads it all)."""
    try:
        f = _open(path)
        prefix = f.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return None
    # The section header: byte order from its magic, then interface blocks up to the first packet.
    bom = prefix[8:12]
    endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else ""
    if not endian:
        f.close()
        return None
    unpack = struct.Struct(endian + "II").unpack_from
    trailer = struct.Struct(endian + "I").unpack_from
    ifaces: list[tuple[int, int, int, int]] = []
    pos = 0
    while pos + 12 <= len(prefix):
        btype, blen = unpack(prefix, pos)
        if blen < 12 or blen & 3 or pos + blen > len(prefix) or trailer(prefix, pos + blen - 4)[0] != blen:
            f.close()
            return None
        if btype == _BT_IDB:
            ifaces.append(_parse_idb(prefix[pos + 8:pos + blen - 4], endian))
        elif btype != PCAPNG_SHB or pos:
            break
        pos += blen
    if not ifaces or pos + 12 > len(prefix) or any(not -MAX_TS_NS <= i[3] <= MAX_TS_NS for i in ifaces):
        f.close()
        return None                   # (an interface time offset beyond 64 bits: the reader clamps)
    f.close()
    return _walk_pcapng(path, counters, pos, ifaces, endian, read_bytes)


def _walk_pcapng(path: Path, counters, start: int, ifaces: list[tuple[int, int, int, int]],
                 endian: str, read_bytes: int = READ_BYTES) -> Iterator[FrameBatch]:
    """Enhanced packet blocks from ``start`` on, one interface table; any other block, a block
    no writer produces, or a timestamp that needs the reader's care, and the record reader
    takes over at that block (``resume_pcapng``) with the same section state."""
    u32 = np.dtype(endian + "u4")
    blen_at = struct.Struct(endian + "I").unpack_from
    linktypes = np.array([i[0] for i in ifaces], dtype=np.int64)
    mults = np.array([i[1] for i in ifaces], dtype=np.int64)
    exact = np.array([i[2] == 1 for i in ifaces], dtype=bool)    # ns = units * mult + offset
    offsets = np.array([i[3] for i in ifaces], dtype=np.int64)
    steady = _Steady(path, counters)
    last_ts = 0
    at = start
    handover = True
    f = _open(path)
    with f:
        f.seek(start)
        left = b""
        while True:
            try:
                buf = _next_chunk(f, at, left, read_bytes)
            except (EOFError, OSError, zlib.error):   # a damaged gzip stream: the reader reports it
                break
            if buf is None:
                handover = bool(left)                 # a block cut by the end: the reader warns
                break
            starts, pos, stop = _walk_blocks(buf, blen_at, u32)
            if len(starts):
                raw = np.frombuffer(buf, dtype=np.uint8)
                if int(starts[-1]) + 28 > len(raw):        # a short block (not a packet) at the end
                    raw = np.concatenate((raw, np.zeros(28, dtype=np.uint8)))
                words = byte_rows(raw, starts, 28).view(u32)
                btype, blen, if_id = words[:, 0], words[:, 1].astype(np.int64), words[:, 2].astype(np.int64)
                caplen = words[:, 5].astype(np.int64)
                trailer = byte_rows(raw, starts + blen - 4, 4).view(u32)[:, 0]
                iface = np.minimum(if_id, len(ifaces) - 1)
                units = (words[:, 3].astype(np.uint64) << np.uint64(32)) | words[:, 4].astype(np.uint64)
                limit = ((MAX_TS_NS - np.maximum(offsets[iface], 0)) // mults[iface]).astype(np.uint64)
                fine = ((btype == _BT_EPB) & (blen >= 32) & (trailer == blen) & (if_id < len(ifaces))
                        & (28 + caplen <= blen - 4) & exact[iface] & (units <= limit))
                ts = units.astype(np.int64) * mults[iface] + offsets[iface]
                fine &= ts >= 0
                if not fine.all():
                    cut = int(np.argmax(~fine))
                    pos = int(starts[cut])
                    stop = True
                    starts, ts, caplen, iface = starts[:cut], ts[:cut], caplen[:cut], iface[:cut]
                if len(starts):
                    last_ts = int(ts[-1])
                    ts = steady.apply(ts)
                    lts = linktypes[iface]
                    # One batch per stretch of one link type (interfaces may differ).
                    cuts = np.flatnonzero(lts[1:] != lts[:-1]) + 1
                    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(starts)]):
                        yield FrameBatch(buf, starts[lo:hi] + 28, caplen[lo:hi], ts[lo:hi], int(lts[lo]))
            at += pos
            if stop:
                break
            left = buf[pos:]
    if handover:
        yield from group_records(resume_pcapng(path, at, counters, ifaces, endian, last_ts), steady)


def _walk_blocks(buf: bytes, blen_at, u32: np.dtype) -> tuple[np.ndarray, int, bool]:
    """Offsets of the whole pcapng blocks in ``buf``, where the first incomplete one starts,
    and whether a length no writer produces stopped the walk (then ``pos`` is that block)."""
    return _walk(buf, blen_at, u32, header_len=0, length_at=4, max_len=MAX_RECORD_BYTES, min_len=12)


def _walk(buf: bytes, length_of, u32: np.dtype, *, header_len: int = 16, length_at: int = 8,
          max_len: int = MAX_RECORD_BYTES, min_len: int = 0) -> tuple[np.ndarray, int, bool]:
    """Offsets of the whole records in ``buf`` (a pcap record: a 16-byte header whose length
    field at 8 counts what follows; a pcapng block: its length at 4 counts it all); returns
    (offsets, where the first incomplete record starts, whether a length no writer produces
    stopped the walk, at that offset)."""
    pieces: list[np.ndarray] = []
    singles: list[int] = []
    blen = len(buf)
    pos = 0
    prev = -1
    cooldown = 0
    spec_n = _SPEC_MIN * 4
    bad = False
    while pos + max(header_len, length_at + 4) <= blen:
        cl = length_of(buf, pos + length_at)[0]
        if cl > max_len or cl < min_len or (not header_len and cl & 3):
            bad = True
            break
        step = header_len + cl
        if pos + step > blen:
            break
        if cl == prev and not cooldown:
            k = min((blen - pos) // step, spec_n)
            if k >= _SPEC_MIN:
                # A run of equal lengths: check the next k headers at once, read in place
                # through a view strided by the record length (no copy).
                lens = np.ndarray((k,), dtype=u32, buffer=buf, offset=pos + length_at, strides=(step,))
                miss = np.flatnonzero(lens != cl)
                run = int(miss[0]) if miss.size else k
                if singles:
                    pieces.append(np.array(singles, dtype=np.int64))
                    singles = []
                pieces.append(pos + step * np.arange(run, dtype=np.int64))
                pos += run * step
                if run == k:
                    spec_n = min(spec_n * 2, _SPEC_MAX)
                else:
                    prev = -1
                    if run < _SPEC_MIN:
                        cooldown = _SPEC_COOLDOWN
                        spec_n = _SPEC_MIN * 4
                    else:
                        # Runs end where other traffic (signalling) cuts in: the next is likely
                        # about as long, so look about that far ahead, not the whole maximum.
                        spec_n = max(_SPEC_MIN * 4, min(_SPEC_MAX, 2 * run))
                continue
        if cooldown:
            cooldown -= 1
        singles.append(pos)
        prev = cl
        pos += step
    if singles:
        pieces.append(np.array(singles, dtype=np.int64))
    starts = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return starts, pos, bad

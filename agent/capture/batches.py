"""Capture records in batches: many frames in one buffer, described by numpy arrays.

Owns: ``FrameBatch`` (a buffer plus the start, length and capture time of every frame in
it) and ``read_batches``, the replay front end. A single classic pcap file (the common
replay case: tcpdump, tshark, SPAN recorders) is read by a fast walker that reads 8 MiB at
a time and finds record boundaries with one ``unpack_from`` per record, or, where
consecutive records have the same length (a SPAN port full of 20 ms G.711 frames), with
one vectorised check for a whole run of them. Everything else (pcapng, several files
merged by time, damaged files) comes from the record readers (``agent.capture.files``)
and is grouped into batches, so the engine has one entry point.

Damage: the fast walker trusts nothing it has not checked. At the first record whose
header a writer would not produce, or a file that ends inside a record, it hands over
to the record reader (``read_capture``) at that record, which counts, warns and
resynchronises exactly as it does on its own.

Clock steps: backward jumps inside one file are re-based as ``files._steady`` does
(vectorised check per batch, a per-record loop only for a batch that has one).
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.capture.files import MAX_BACKWARD_JUMP_NS, iter_capture_paths, open_captures
from agent.capture.pcapfile import (MAX_RECORD_BYTES, MAX_TS_NS, PCAP_MAGIC_NS, PCAP_MAGIC_US, Record,
                                    _open, read_capture)

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
    """``files._steady`` for arrays: re-base one file's timestamps across backward jumps."""

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


def read_batches(paths: Iterable[str | Path], counters) -> Iterator[FrameBatch]:
    """Every frame of the given captures (merged by time, as ``open_captures``), in batches.
    Raises CaptureFormatError before the first batch for a file that is not a capture."""
    files = iter_capture_paths(paths)
    if len(files) == 1:
        fast = _pcap_batches(files[0], counters)
        if fast is not None:
            return fast
    return group_records(open_captures(files, counters))


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


def _pcap_batches(path: Path, counters) -> Iterator[FrameBatch] | None:
    """The fast walker for a classic pcap file, or None when the file is something else."""
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
    for endian in ("<", ">"):
        magic, = struct.unpack(endian + "I", head[:4])
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            linktype = struct.unpack_from(endian + "I", head, 20)[0] & 0xFFFF
            return _walk_file(path, f, counters, endian, magic == PCAP_MAGIC_NS, linktype)
    f.close()
    return None


def _walk_file(path: Path, f, counters, endian: str, nanos: bool, linktype: int) -> Iterator[FrameBatch]:
    u32 = np.dtype(endian + "u4")
    caplen_at = struct.Struct(endian + "I").unpack_from
    frac_mult = 1 if nanos else 1000
    frac_max = 1_000_000_000 if nanos else 1_000_000
    steady = _Steady(path, counters)
    done = 0                         # records handed out
    left = b""
    handover = False
    with f:
        while True:
            try:
                data = f.read(READ_BYTES)
            except (EOFError, OSError, zlib.error):   # a damaged gzip stream: let the reader report it
                handover = True
                break
            if not data:
                handover = bool(left)          # a partial record at the end: the reader warns
                break
            buf = left + data
            starts, pos, bad = _walk(buf, caplen_at, u32)
            if len(starts):
                hdr = sliding_window_view(np.frombuffer(buf, dtype=np.uint8), 16)[starts]
                fields = hdr.view(u32)            # (n, 4): sec, frac, caplen, origlen
                sec = fields[:, 0].astype(np.int64)
                frac = fields[:, 1].astype(np.int64)
                caplen = fields[:, 2].astype(np.int64)
                origlen = fields[:, 3].astype(np.int64)
                wrong = (caplen > origlen) | (origlen == 0) | (frac >= frac_max)
                if wrong.any():
                    cut = int(np.argmax(wrong))
                    starts, sec, frac, caplen = starts[:cut], sec[:cut], frac[:cut], caplen[:cut]
                    bad = True
                if len(starts):
                    ts = steady.apply(sec * 1_000_000_000 + frac * frac_mult)
                    yield FrameBatch(buf, starts + 16, caplen, ts, linktype)
                    done += len(starts)
            if bad:
                handover = True
                break
            left = buf[pos:]
    if handover:
        records = read_capture(path, counters)
        for _ in range(done):                      # already handed out by the walker
            if next(records, None) is None:
                return
        yield from group_records(records, steady)


def _walk(buf: bytes, caplen_at, u32: np.dtype) -> tuple[np.ndarray, int, bool]:
    """Record header offsets of the whole records in ``buf``; returns (offsets, where the
    first incomplete record starts, whether a length no writer produces stopped the walk)."""
    pieces: list[np.ndarray] = []
    singles: list[int] = []
    blen = len(buf)
    pos = 0
    prev = -1
    cooldown = 0
    spec_n = _SPEC_MIN * 4
    view4 = None
    bad = False
    while pos + 16 <= blen:
        cl = caplen_at(buf, pos + 8)[0]
        if cl > MAX_RECORD_BYTES:
            bad = True
            break
        step = 16 + cl
        if pos + step > blen:
            break
        if cl == prev and not cooldown:
            k = min((blen - pos) // step, spec_n)
            if k >= _SPEC_MIN:
                # A run of equal lengths: check the next k headers at once.
                if view4 is None:
                    view4 = sliding_window_view(np.frombuffer(buf, dtype=np.uint8), 4)
                offs = pos + step * np.arange(k, dtype=np.int64)
                lens = view4[offs + 8].view(u32)[:, 0]
                miss = np.flatnonzero(lens != cl)
                run = int(miss[0]) if miss.size else k
                if singles:
                    pieces.append(np.array(singles, dtype=np.int64))
                    singles = []
                pieces.append(offs[:run])
                pos += run * step
                if run == k:
                    spec_n = min(spec_n * 2, _SPEC_MAX)
                else:
                    prev = -1
                    if run < _SPEC_MIN:
                        cooldown = _SPEC_COOLDOWN
                        spec_n = _SPEC_MIN * 4
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

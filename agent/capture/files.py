"""Many capture files as one time-ordered record stream.

Owns: expanding paths (a directory means every capture file in it, sorted by
name, i.e. rotated files) and merging the records of all files by timestamp
(a lazy heap merge: two taps that overlap in time interleave; they are not
concatenated). Does not own: parsing a file (agent.capture.pcapfile).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.capture.pcapfile import MAX_TS_NS, Record, read_capture
from agent.errors import CaptureFormatError

log = logging.getLogger(__name__)

# Inside ONE file, a timestamp more than this far behind the newest one is a clock error (a
# capture host whose clock was stepped back), not interleaving slack between interfaces: the
# rest of the file is re-based to continue 1 ms after the newest record. Forward jumps cannot be
# told from a quiet spell here; the engine decides those (see Engine._after_gap).
MAX_BACKWARD_JUMP_NS = 10 * 10**9

# Names we treat as captures when a directory is given.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".gz")


def _looks_like_capture(p: Path) -> bool:
    name = p.name.lower()
    if name.startswith("."):
        return False
    if name.endswith(CAPTURE_SUFFIXES):
        return True
    # Rotated files from tcpdump -C / -G often end in a counter: trace.pcap1, trace.pcap.3
    return ".pcap" in name or ".cap" in name


def iter_capture_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories into the list of capture files to read.

    Raises CaptureFormatError for a path that does not exist.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted((c for c in p.iterdir() if c.is_file() and _looks_like_capture(c)),
                              key=lambda c: c.name))
        elif p.exists():
            out.append(p)
        else:
            raise CaptureFormatError(f"{p}: no such capture file or directory")
    return out


def open_captures(paths: Iterable[str | Path], counters) -> Iterator[Record]:
    """Yield ``(ts_ns, linktype, frame)`` from all given captures, merged by time.

    Every file (given directly or found in a directory) is one source; sources are
    interleaved by timestamp (two taps that overlap in time), ties kept in path
    order. A file is only opened once the merge reaches its first timestamp, so a
    directory of a thousand rotated files holds one or two files open, not all.
    Raises CaptureFormatError (before the first record) for a non-capture file.
    """
    files = iter_capture_paths(paths)
    if len(files) == 1:
        return steady_records(read_capture(files[0], counters), counters, files[0])
    return _merge(files, counters)


def steady_records(records: Iterator[Record], counters, path: Path) -> Iterator[Record]:
    """Re-base the timestamps of one file across backward clock jumps (MAX_BACKWARD_JUMP_NS)."""
    offset = 0
    last = None
    for ts_ns, linktype, frame in records:
        ts_ns = min(ts_ns + offset, MAX_TS_NS)
        if last is not None and last - ts_ns > MAX_BACKWARD_JUMP_NS:
            counters["capture.clock_jumps"] += 1
            log.warning("%s: capture clock jumps by %+.0f s; continuing from the previous record",
                        path, (ts_ns - last) / 1e9)
            offset += last + 1_000_000 - ts_ns
            ts_ns = min(last + 1_000_000, MAX_TS_NS)
        if last is None or ts_ns > last:
            last = ts_ns
        yield ts_ns, linktype, frame


def first_timestamp(path: Path, counters) -> int | None:
    gen = read_capture(path, counters)
    try:
        first = next(gen, None)
    finally:
        gen.close()
    return None if first is None else first[0]


def _merge(files: list[Path], counters) -> Iterator[Record]:
    # Peek every file's first timestamp now so format errors surface up front.
    pending: list[tuple[int, int, Path]] = []
    for idx, path in enumerate(files):
        ts = first_timestamp(path, counters)
        if ts is not None:
            pending.append((ts, idx, path))
    pending.sort(reverse=True)   # pop() gives the earliest
    heap: list[tuple[int, int, Record, Iterator[Record]]] = []
    while pending or heap:
        while pending and (not heap or pending[-1][0] <= heap[0][0]):
            _, idx, path = pending.pop()
            it = steady_records(read_capture(path, counters), counters, path)
            rec = next(it, None)
            if rec is not None:
                heapq.heappush(heap, (rec[0], idx, rec, it))
        if not heap:
            continue
        if len(heap) == 1:
            # Only one file active (the rotated-files case): stream it directly
            # until the next pending file starts.
            _, idx, rec, it = heap.pop()
            limit = pending[-1][0] if pending else None
            yield rec
            for rec in it:
                if limit is not None and rec[0] > limit:
                    heapq.heappush(heap, (rec[0], idx, rec, it))
                    break
                yield rec
            continue
        _, idx, rec, it = heap[0]
        yield rec
        nxt = next(it, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt[0], idx, nxt, it))

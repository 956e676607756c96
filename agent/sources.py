"""Which capture file a call came from, for ``inspect --json`` (``capture_files``).

Several files are merged by time before the engine sees a frame, so a call does not carry
its file. A call is attributed to every file whose time span holds the call's first
message: exactly one for a directory of rotated files, both for two taps that overlap in
time (the call may well be in both). The spans cost one extra pass over the files' frame
times (the batch walker, no decoding), made only when there are several files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from agent.capture.batches import read_batches
from agent.capture.files import iter_capture_paths


@dataclass(frozen=True)
class FileSpan:
    name: str            # as the user named it (a file inside a named directory: its path)
    first_ns: int
    last_ns: int


def file_spans(captures: list[str], names: dict[str, str] | None = None) -> list[FileSpan]:
    """The time span of each capture file behind ``captures``; ``names`` renames files
    (the temporary file of stdin is ``-``)."""
    names = names or {}
    spans = []
    files = iter_capture_paths(captures)
    for path in files:
        first = last = None
        if len(files) > 1:
            for batch in read_batches([path], Counter()):
                if len(batch):
                    lo, hi = int(batch.ts_ns.min()), int(batch.ts_ns.max())
                    first = lo if first is None else min(first, lo)
                    last = hi if last is None else max(last, hi)
        if first is None:          # one file (it holds every call), or a file without frames
            first, last = (-1 << 62, 1 << 62) if len(files) == 1 else (0, -1)
        spans.append(FileSpan(names.get(str(path), str(path)), first, last))
    return spans


def capture_files(start_ts_ns: int, spans: list[FileSpan]) -> list[str]:
    """Names of the files whose span holds ``start_ts_ns``."""
    return [s.name for s in spans if s.first_ns <= start_ts_ns <= s.last_ns]

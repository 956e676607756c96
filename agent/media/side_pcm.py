"""One direction of a call's audio at the working rate, written at sample offsets while the
call is rendered (``render.py``), read back chunk by chunk for the DTMF scan and the mix.

In memory while it fits ``MEMORY_SAMPLES`` (no file at all for an ordinary call), then in a
sparse temp file (a long call, or a timeline that jumps far ahead): gaps, loss, CN and DTMF
read back as zeros either way. ``WriteQueue`` keeps the order of overlapping writes when a
block of records is rendered one stream at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["SidePcm", "WriteQueue", "MEMORY_SAMPLES"]

MEMORY_SAMPLES = 8 << 20       # a direction's PCM stays in memory up to this (16 MiB; 17 min at 8 kHz)


class WriteQueue:
    """Holds direction-file writes made while a block is processed stream by stream, and
    replays them in the order of the records that caused them.

    Two streams of one direction that overlap in time write the same samples; the last
    write wins. Packet by packet, that is the stream whose record came later in the log;
    ``row`` (the record that triggers the writes being made) keeps that order although
    the block is processed one stream at a time."""

    __slots__ = ("row", "items")

    def __init__(self) -> None:
        self.row = 0
        self.items: list[tuple[int, int, "SidePcm", int, np.ndarray]] = []

    def flush(self) -> None:
        items = self.items
        self.items = []
        items.sort(key=lambda item: (item[0], item[1]))
        for _row, _n, dirfile, at_sample, pcm in items:
            dirfile.write_now(at_sample, pcm)


class SidePcm:
    """One direction's PCM at the working rate, written at sample offsets: in memory while
    it fits ``MEMORY_SAMPLES`` (no file at all for an ordinary call), then in a sparse
    temp file at ``path`` (a long call, or a timeline that jumps far ahead)."""

    __slots__ = ("path", "fh", "pcm", "rate", "first_sample", "end_sample", "audio_native_s", "queue",
                 "capacity")

    def __init__(self, path: Path, rate: int, queue: WriteQueue | None = None) -> None:
        self.path = path
        self.fh: BinaryIO | None = None
        self.pcm: np.ndarray | None = None      # the samples while in memory
        self.rate = rate
        self.first_sample: int | None = None
        self.end_sample = 0
        self.audio_native_s = 0.0   # decoded audio, seconds
        self.queue = queue          # set: writes wait there (see WriteQueue)
        # Samples to hold in memory from the first write when the call's length is known
        # (its media in memory): one allocation, no copies as it grows. np.zeros maps fresh
        # zero pages lazily, so a generous figure costs nothing until written.
        self.capacity = 0

    def write(self, at_sample: int, pcm: np.ndarray) -> None:
        queue = self.queue
        if queue is not None:
            queue.items.append((queue.row, len(queue.items), self, at_sample, pcm))
        else:
            self.write_now(at_sample, pcm)

    def write_now(self, at_sample: int, pcm: np.ndarray) -> None:
        if at_sample < 0:           # before the margin: cannot be placed
            pcm = pcm[-at_sample:]
            at_sample = 0
        if pcm.size == 0:
            return
        end = at_sample + pcm.size
        if self.fh is None and end <= MEMORY_SAMPLES:
            held = self.pcm
            if held is None or held.size < end:
                grown = np.zeros(min(MEMORY_SAMPLES, max(end, self.capacity, 2 * (0 if held is None else held.size))),
                                 dtype="<i2")
                if held is not None:
                    grown[:self.end_sample] = held[:self.end_sample]
                held = self.pcm = grown
            held[at_sample:end] = pcm
        else:
            if self.fh is None:
                self._spill()
            self.fh.seek(at_sample * 2)
            self.fh.write(pcm.astype("<i2", copy=False).tobytes())
        if end > self.end_sample:
            self.end_sample = end

    def _spill(self) -> None:
        self.fh = open(self.path, "w+b")
        if self.pcm is not None:
            self.fh.write(self.pcm[:self.end_sample].tobytes())
            self.pcm = None

    def read(self, at_sample: int, n: int) -> np.ndarray:
        """Samples [at_sample, at_sample + n), zeros where nothing was written. Read-only: a
        view of the samples when they are all in memory."""
        if self.fh is None and self.pcm is not None and at_sample + n <= self.end_sample:
            return self.pcm[at_sample:at_sample + n]
        out = np.zeros(n, dtype=np.int16)
        if at_sample >= self.end_sample:
            return out
        if self.fh is None:
            if self.pcm is not None:
                got = self.pcm[at_sample:min(at_sample + n, self.end_sample)]
                out[:got.size] = got
            return out
        self.fh.seek(at_sample * 2)
        raw = self.fh.read(n * 2)
        got = np.frombuffer(raw, dtype="<i2")
        out[: got.size] = got
        return out

    def silence(self, lo: int, hi: int) -> bool:
        """Zero samples [lo, hi) of what was written; False when none were."""
        hi = min(hi, self.end_sample)
        if hi <= lo:
            return False
        if self.fh is None:
            if self.pcm is None:
                return False
            self.pcm[lo:hi] = 0
        else:
            self.fh.seek(lo * 2)
            self.fh.write(bytes(2 * (hi - lo)))
        return True

    def close(self) -> None:
        self.pcm = None
        if self.fh is not None:     # spilled: the temp file goes (never made otherwise)
            self.fh.close()
            self.fh = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

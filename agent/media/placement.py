"""Placing one stream's decoded audio into its direction's PCM (``side_pcm``): runs of
contiguous audio at the stream's native rate, brought to the working rate by
``resample.Resampler`` when they differ, written at their offset on the call timeline.

A run is kept open across small gaps (<= ``_MAX_FILL_S``, filled with zeros), because
each run has its own resampler (a filter's warm-up and tail) and lossy calls would otherwise
start one per lost packet. ``place_audio`` handles a stretch of packets that continue a run
back to back as one array slice; only a packet after a gap or jump is handled on its own, as
``add_audio`` (the per-packet definition) would. Runs are cut into resampler inputs and writes at the same
packets either way, so the result does not depend on the path.
"""

from __future__ import annotations

import numpy as np

from agent.media.resample import Resampler
from agent.media.side_pcm import SidePcm, WriteQueue

__all__ = ["Run", "StreamRuns", "add_audio", "close_run", "place_audio"]

_NS = 1_000_000_000
_MAX_FILL_S = 2                 # gaps up to this long stay inside one resampler run
_EMIT_S = 10                    # audio a run without resampling holds before writing it
_LOOKAHEAD_MIN = 256            # packets place_audio checks for a gap at once, at first
# A run longer than this many samples would overflow int64 ns arithmetic: place it packet by packet.
_MAX_VECTOR_SAMPLES = (2 ** 62) // _NS


class Run:
    """A contiguous stretch of one stream's decoded audio at its native rate."""

    __slots__ = ("rate", "start_ns", "in_samples", "buf", "buf_n", "resampler",
                 "out_start", "out_written", "emit_n")

    def __init__(self, rate: int, start_ns: int, work_rate: int) -> None:
        self.rate = rate
        self.start_ns = start_ns            # relative to the render base
        self.in_samples = 0                 # native samples in the run so far (incl. fill)
        self.buf: list[np.ndarray] = []
        self.buf_n = 0
        self.resampler = None
        # Pending audio is written out once it reaches emit_n samples: a second through a
        # resampler, else _EMIT_S seconds (fewer, larger writes; memory stays bounded).
        self.emit_n = rate * (1 if rate != work_rate else _EMIT_S)
        if rate != work_rate:
            self.resampler = Resampler(rate, work_rate)
        self.out_start = start_ns * work_rate // _NS
        self.out_written = 0


class StreamRuns:
    """A stream's open run and the direction PCM its audio goes to."""

    __slots__ = ("run", "dirfile")

    def __init__(self, dirfile: SidePcm) -> None:
        self.run: Run | None = None
        self.dirfile = dirfile


def _emit(run: Run, dirfile: SidePcm, final: bool) -> None:
    if run.buf_n:
        pcm = run.buf[0] if len(run.buf) == 1 else np.concatenate(run.buf)
        run.buf = []
        run.buf_n = 0
    else:
        pcm = None
    out = pcm if run.resampler is None else (
        run.resampler.push(pcm) if pcm is not None else np.zeros(0, dtype=np.int16))
    if final and run.resampler is not None:
        tail = run.resampler.finish()
        out = np.concatenate([out, tail]) if out.size else tail
    if out is None or out.size == 0:
        return
    dirfile.write(run.out_start + run.out_written, out)
    run.out_written += out.size


def close_run(sr: StreamRuns) -> None:
    if sr.run is not None:
        _emit(sr.run, sr.dirfile, final=True)
        sr.run = None


def add_audio(sr: StreamRuns, pos_ns: int, pcm: np.ndarray, rate: int, work_rate: int) -> None:
    run = sr.run
    if run is not None and run.rate == rate:
        expected_ns = run.start_ns + run.in_samples * _NS // rate
        gap = (pos_ns - expected_ns) * rate // _NS
        if -2 <= gap <= 2:
            gap = 0
        if 0 <= gap <= _MAX_FILL_S * rate:
            if gap:
                run.buf.append(np.zeros(gap, dtype=np.int16))
                run.buf_n += gap
                run.in_samples += gap
            run.buf.append(pcm)
            run.buf_n += pcm.size
            run.in_samples += pcm.size
            if run.buf_n >= run.emit_n:
                _emit(run, sr.dirfile, final=False)
            return
    _start_run(sr, pos_ns, pcm, rate, work_rate)


def _start_run(sr: StreamRuns, pos_ns: int, pcm: np.ndarray, rate: int, work_rate: int) -> None:
    """Close the stream's run and open a new one at ``pos_ns`` holding ``pcm``."""
    close_run(sr)
    run = sr.run = Run(rate, pos_ns, work_rate)
    first = run.out_start
    df = sr.dirfile
    if df.first_sample is None or first < df.first_sample:
        df.first_sample = first
    run.buf.append(pcm)
    run.buf_n = pcm.size
    run.in_samples = pcm.size


def _append(run: Run, pcm: np.ndarray) -> None:
    run.buf.append(pcm)
    run.buf_n += pcm.size
    run.in_samples += pcm.size


def _append_stretch(sr: StreamRuns, queue: WriteQueue, rows: np.ndarray, src: np.ndarray,
                    i: int, j: int, flat: np.ndarray, rate: int) -> None:
    """Append packets i..j-1 (back to back in ``flat``) to the open run, emitting where
    ``add_audio`` would: after the packet that brings the pending audio to ``emit_n``."""
    run = sr.run
    k = i
    while k < j:
        need = run.emit_n - run.buf_n
        e = max(k + 1, int(np.searchsorted(src, src[k] + need, side="left")))
        if e > j:
            _append(run, flat[src[k]:src[j]])
            return
        _append(run, flat[src[k]:src[e]])
        queue.row = int(rows[e - 1])
        _emit(run, sr.dirfile, final=False)
        k = e


def place_audio(sr: StreamRuns, queue: WriteQueue, rows: np.ndarray, pos_ns: np.ndarray,
                 sizes: np.ndarray, flat: np.ndarray, rate: int, work_rate: int) -> None:
    """``add_audio`` for many packets of one rate at once (``rows``: their records).

    Packet i's samples are ``flat[src_i : src_i + sizes[i]]`` (packets back to back). While
    each packet starts where the run's samples so far end (within the ±2-sample slack of
    ``add_audio``), a whole stretch of packets is handled with array arithmetic; only a
    packet after a gap or jump is handled on its own, exactly as ``add_audio`` would. The
    run is cut into resampler inputs and file writes at the same packets as there."""
    m = sizes.size
    src = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(sizes, out=src[1:])
    i = 0
    window = _LOOKAHEAD_MIN
    while i < m:
        run = sr.run
        queue.row = int(rows[i])
        if run is None or run.rate != rate:
            _start_run(sr, int(pos_ns[i]), flat[src[i]:src[i + 1]], rate, work_rate)
            i += 1
            continue
        if run.in_samples + int(src[m] - src[i]) > _MAX_VECTOR_SAMPLES:
            add_audio(sr, int(pos_ns[i]), flat[src[i]:src[i + 1]], rate, work_rate)
            i += 1
            continue
        # Samples of the run before each packet if no packet of the stretch opens a gap, over
        # a lookahead that grows while no packet does: a lossy stream breaks every hundred
        # packets or so, and looking at all the rest after each break would be quadratic.
        hi = min(m, i + window)
        before = run.in_samples + (src[i:hi] - src[i])
        expected_ns = run.start_ns + before * _NS // rate
        gap = (pos_ns[i:hi] - expected_ns) * rate // _NS
        breaks = np.flatnonzero(np.abs(gap) > 2)
        j = i + int(breaks[0]) if breaks.size else hi
        if j > i:
            _append_stretch(sr, queue, rows, src, i, j, flat, rate)
        if j == hi:
            i = hi
            window *= 4
            continue
        window = _LOOKAHEAD_MIN
        queue.row = int(rows[j])
        g = int(gap[j - i])
        pcm = flat[src[j]:src[j + 1]]
        if 0 <= g <= _MAX_FILL_S * rate:
            if g:
                _append(run, np.zeros(g, dtype=np.int16))
            _append(run, pcm)
            if run.buf_n >= run.emit_n:
                _emit(run, sr.dirfile, final=False)
        else:
            _start_run(sr, int(pos_ns[j]), pcm, rate, work_rate)
        i = j + 1

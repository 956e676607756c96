"""Replay: feed capture files through the engine, exactly as live capture does.

Owns the loop from ``read_batches`` to ``Engine.feed_batch`` plus a progress line on
stderr for long files. What happens to finished calls is the caller's sink.

SIGINT / SIGTERM stop it between batches (``Interrupted``, no traceback): calls already
finished were handed to the sink; calls still in progress are discarded with their media.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from agent.capture.batches import read_batches
from agent.config import Config
from agent.pipeline.engine import Engine, FinishedCall, MediaMode
from agent.killpoints import kill_point
from agent.lifecycle import Interrupted, stop_signals

PROGRESS_EVERY_PACKETS = 200_000
PROGRESS_AFTER_S = 3.0


def replay(paths: Iterable[str | Path], config: Config, on_finished: Callable[[FinishedCall], None] | None = None,
           *, counters=None, workdir: Path | None = None, progress: bool = True,
           media: MediaMode = MediaMode.INLINE, engine: Engine | None = None,
           read_bytes: int | None = None) -> Engine:
    """Replay every capture in ``paths`` (merged by time); returns the engine (counters, etc.).
    ``media``: what happens to each call's RTP (``MediaMode``; the recorder sequences it in its
    workers when DEFERRED). ``engine``: feed this one (``pipeline.build_pipeline``'s) instead.
    ``read_bytes``: how much of a file one batch holds at most (default ``capture.batches.READ_BYTES``)."""
    paths = list(paths)
    if engine is None:
        engine = Engine(config, on_finished, counters=counters, workdir=workdir, media=media)
    elif workdir is None:
        workdir = engine.workdir
    batches = read_batches(paths, engine.counters, read_bytes)
    feed_batch = engine.feed_batch
    started = time.monotonic()
    packets = 0
    next_report = PROGRESS_EVERY_PACKETS
    signals = stop_signals.install()
    try:
        for batch in batches:
            if stop_signals.requested:
                stop_signals.check()
            kill_point("replay_batch")
            feed_batch(batch)
            packets += len(batch)
            if packets >= next_report:
                next_report += PROGRESS_EVERY_PACKETS
                elapsed = time.monotonic() - started
                if progress and elapsed > PROGRESS_AFTER_S and sys.stderr.isatty():
                    sys.stderr.write(f"\r{packets:,} packets, {packets / elapsed:,.0f}/s, "
                                     f"{engine.counters['calls.started']:,} calls")
                    sys.stderr.flush()
        engine.finish()
    except Interrupted:
        engine.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)     # media of calls never finished
        raise
    finally:
        if signals:
            stop_signals.restore()
        if progress and packets >= PROGRESS_EVERY_PACKETS and sys.stderr.isatty():
            sys.stderr.write("\n")
        engine.counters["capture.frames"] += packets
    return engine

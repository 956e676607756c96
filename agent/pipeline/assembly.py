"""``build_pipeline``: the engine and the recorder put together one way, for every command
that records (``replay --out``, ``replay --deliver``, the ``run`` daemon).

Recordings always take the deferred media path (the recorder's workers sequence each call's
raw log, off the capture loop), the engine's working files live under ``work/media``, and the
recorder's under ``work/rendered`` unless the caller names where recordings go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.calls.record import CallRecord
from agent.config import Config
from agent.counters import new_counters
from agent.pipeline.engine import Engine, MediaMode
from agent.pipeline.finishing import FinishedCall
from agent.recorder import Recorder, Rendered


@dataclass(slots=True)
class Pipeline:
    engine: Engine
    recorder: Recorder


def uploaded_legs_only(record: CallRecord) -> bool:
    """A PBX leg whose talk another leg of its conversation uploads is spooled nowhere: no CPU
    is spent on its audio."""
    return record.get("upload") is not False


def build_pipeline(config: Config, on_rendered: Callable[[Rendered], None], *, work: Path, counters=None,
                   out_dir: Path | None = None, fmt: str | None = None, workers: int | None = None,
                   render_if: Callable[[CallRecord], bool] | None = None, stop_on_signals: bool = True,
                   route: Callable[[Recorder], Callable[[FinishedCall], None]] | None = None) -> Pipeline:
    """``on_rendered`` receives each recording; ``out_dir`` (default ``work/rendered``) is where
    they are written, in ``fmt`` (default ``[api] format``: what the API receives). ``route``
    makes the engine's hand-over to the recorder (the daemon bounds it with a queue); by
    default finished calls go straight to the recorder."""
    counters = counters if counters is not None else new_counters()     # one set: engine and recorder
    recorder = Recorder(config.recording, out_dir if out_dir is not None else work / "rendered", on_rendered,
                        fmt=fmt or config.api.format, workers=workers, render_if=render_if,
                        stop_on_signals=stop_on_signals, counters=counters)
    engine = Engine(config, route(recorder) if route is not None else recorder, counters=counters,
                    workdir=work / "media", media=MediaMode.DEFERRED)
    return Pipeline(engine, recorder)

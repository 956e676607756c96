"""Recorder: turns finished calls into recording files, in worker processes.

The engine hands each ended call here. Rendering (decode, mix, encode) is CPU
heavy, so it runs in a ``ProcessPoolExecutor`` and never in the capture loop; the
result (recording + JSON record) goes to a destination: a plain output directory
(``replay --out``) or the spool (``--deliver``, ``run``).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agent.config import RecordingSection
from agent.engine import FinishedCall
from agent.media.render import render_recording

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9+#*_-]+")


def safe_name(text: str, limit: int = 40) -> str:
    """A file-name fragment that is safe on any filesystem (no separators, no dots)."""
    cleaned = _UNSAFE.sub("_", text).strip("_")[:limit]
    return cleaned or "unknown"


def recording_basename(record: dict[str, Any], seq: int) -> str:
    start = record["startdatetimeutc"].replace("-", "").replace(":", "").replace(" ", "T") + "Z"
    return f"{start}_{safe_name(record['callerphone'])}_to_{safe_name(record['destinationphone'])}_{seq:05d}"


@dataclass(slots=True)
class Rendered:
    record: dict[str, Any]
    audio_path: Path | None
    no_audio_reason: str


def _render_job(media_log: Path | None, streams, out_path: Path, settings: RecordingSection,
                fmt: str, encrypted: bool) -> tuple[Path | None, dict[str, Any] | None, str]:
    """Runs in a worker process. Returns (audio path, recording fields, no-audio reason)."""
    if encrypted:
        return None, None, "encrypted"
    if media_log is None or not streams:
        return None, None, "no_rtp"
    try:
        result = render_recording(media_log, streams, out_path, fmt=fmt, channels=settings.channels,
                                  sample_rate_hz=settings.sample_rate_hz,
                                  bitrate_kbps=settings.mp3_bitrate_kbps)
    finally:
        try:
            os.unlink(media_log)
        except OSError:
            pass
    if result.path is None or result.duration_ms <= 0:
        return None, None, "undecodable" if result.undecodable else "no_audio"
    fields = {"file": Path(result.path).name, "format": result.fmt,
              "sample_rate_hz": result.sample_rate_hz, "channels": result.channels,
              "duration_ms": result.duration_ms, "undecodable": list(result.undecodable)}
    return Path(result.path), fields, ""


class Recorder:
    """Renders finished calls in a process pool and passes each result to ``on_rendered``."""

    def __init__(self, settings: RecordingSection, out_dir: Path,
                 on_rendered: Callable[[Rendered], None], *, fmt: str | None = None,
                 workers: int | None = None) -> None:
        self.settings = settings
        self.fmt = fmt or settings.format
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.on_rendered = on_rendered
        n = workers or settings.workers or os.cpu_count() or 1
        # forkserver: workers never inherit the capture loop's threads or open sockets.
        self.pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("forkserver"))
        self._seq = 0
        self._lock = threading.Lock()
        self._futures: list[Future] = []
        self.errors = 0

    def __call__(self, finished: FinishedCall) -> None:
        self._seq += 1
        record = finished.record
        base = recording_basename(record, self._seq)
        out_path = self.out_dir / f"{base}.{self.fmt}"
        future = self.pool.submit(_render_job, finished.media_log, finished.streams, out_path,
                                  self.settings, self.fmt, bool(record.get("encrypted")))
        future.add_done_callback(lambda f, record=record: self._done(f, record))
        self._futures.append(future)

    def _done(self, future: Future, record: dict[str, Any]) -> None:
        try:
            audio_path, fields, reason = future.result()
        except Exception as exc:           # a worker crash must not lose the call
            log.error("rendering call %s failed: %s", record.get("callid"), exc)
            self.errors += 1
            audio_path, fields, reason = None, None, f"render_failed:{type(exc).__name__}"
        record = dict(record, recording=fields)
        if reason:
            record["no_audio_reason"] = reason
        with self._lock:
            self.on_rendered(Rendered(record=record, audio_path=audio_path, no_audio_reason=reason))

    def close(self) -> None:
        """Wait for every submitted call, then stop the workers."""
        self.pool.shutdown(wait=True)


def write_to_directory(out_dir: Path) -> Callable[[Rendered], None]:
    """Destination for ``replay --out``: the JSON record beside its recording."""
    out_dir = Path(out_dir)

    def write(rendered: Rendered) -> None:
        record = rendered.record
        if rendered.audio_path is not None:
            json_path = rendered.audio_path.with_suffix(".json")
        else:
            json_path = out_dir / (recording_basename(record, 0) + f"_{safe_name(record['callid'], 16)}.json")
        tmp = json_path.with_suffix(".json.part")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, json_path)
    return write

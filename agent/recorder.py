"""Recorder: turns finished calls into recording files, in worker processes.

The engine hands each ended call here. Rendering (decode, mix, encode) is CPU
heavy, so it runs in a ``ProcessPoolExecutor`` and never in the capture loop; the
result (recording + JSON record) goes to a destination: a plain output directory
(``replay --out``) or the spool (``--deliver``, ``run``).

DTMF (issue 6): the worker also looks for in-band tones in each direction that carried no
RFC 4733 / SIP INFO key press, and with ``mask_dtmf_audio`` silences every key press; the
digits it finds are merged into the record here (``merge_inband_dtmf``), which recomputes
``callerdtmf`` / ``destinationdtmf``. With ``redact_dtmf_digits`` every digit is blanked.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agent.config import RecordingSection
from agent.calls.record import merge_dtmf_presses, presses_from_events
from agent.engine import FinishedCall, complete_media
from agent.media.render import render_recording
from agent.media.stream import MediaPlan

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


SIP_INFO_PRESS_MS = 250    # masked span of a SIP INFO press that states no duration


def dtmf_plan(record: dict[str, Any], mask: bool) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """(directions to scan for in-band tones, key-press spans to silence in packet-time ns)."""
    presses = record.get("dtmf") or []
    signalled = {0 if p.get("side") == "caller" else 1 for p in presses}
    directions = tuple(d for d in (0, 1) if d not in signalled)
    spans: list[tuple[int, int]] = []
    if mask:
        start = int(record.get("start_ts_ns") or 0)
        for p in presses:
            at = start + int(p.get("offset_ms") or 0) * 1_000_000
            dur = p.get("duration_ms") or SIP_INFO_PRESS_MS
            spans.append((at, at + int(dur) * 1_000_000))
    return directions, spans


def merge_inband_dtmf(record: dict[str, Any], inband: list[dict], *, redact: bool) -> dict[str, Any]:
    """``record`` with the in-band presses the worker found (direction/ts_ns dicts) merged in."""
    presses = presses_from_events(inband, int(record.get("start_ts_ns") or 0))
    return merge_dtmf_presses(record, presses, redact=redact)


def _render_job(media_log: Path | None, streams, media_plan: MediaPlan | None, out_path: Path,
                settings: RecordingSection, fmt: str, record: dict[str, Any],
                ) -> tuple[Path | None, dict[str, Any] | None, str, list[dict], dict[str, Any], float]:
    """Runs in a worker process: sequence the call's media if the engine deferred it, then
    decode, mix and encode. Returns (audio path, recording fields, no-audio reason, in-band
    DTMF presses, the record (completed), CPU seconds this job used)."""
    cpu_start = time.process_time()
    try:
        if media_plan is not None and media_log is not None:
            ordered = media_log.with_suffix(".ordered")
            record, streams = complete_media(record, media_log, media_plan, ordered,
                                             redact=settings.redact_dtmf_digits)
            media_log = ordered
        if record.get("encrypted"):
            return None, None, "encrypted", [], record, time.process_time() - cpu_start
        if media_log is None or not streams:
            return None, None, "no_rtp", [], record, time.process_time() - cpu_start
        directions, spans = dtmf_plan(record, settings.mask_dtmf_audio)
        result = render_recording(media_log, streams, out_path, fmt=fmt, channels=settings.channels,
                                  sample_rate_hz=settings.output_rate_hz(fmt),
                                  bitrate_kbps=settings.mp3_bitrate_kbps, mp3_quality=settings.mp3_quality,
                                  inband_dtmf_directions=directions, mask_spans_ns=spans,
                                  mask_inband=settings.mask_dtmf_audio)
    finally:
        if media_log is not None:
            media_log.unlink(missing_ok=True)
    cpu_s = time.process_time() - cpu_start
    if result.path is None or result.duration_ms <= 0:
        return None, None, "undecodable" if result.undecodable else "no_audio", [], record, cpu_s
    fields = {"file": Path(result.path).name, "format": result.fmt,
              "sample_rate_hz": result.sample_rate_hz, "channels": result.channels,
              "duration_ms": result.duration_ms, "undecodable": list(result.undecodable)}
    if settings.mask_dtmf_audio:
        fields["dtmf_masked_ms"] = result.masked_ms
    return Path(result.path), fields, "", list(result.dtmf), record, cpu_s


def _start_forkserver_single_threaded_blas() -> None:
    """Start the forkserver (if not running yet) with BLAS limited to one thread.

    The workers are the parallelism: a worker's DTMF scan (one matrix product per few
    seconds of audio) spreading over every core only adds CPU time and contends with the
    other workers and the capture loop. Set before the forkserver starts, the limit reaches
    every worker; the capture process's own environment is left as it was."""
    from multiprocessing import forkserver

    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:
            os.environ.setdefault(name, "1")
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Recorder:
    """Renders finished calls in a process pool and passes each result to ``on_rendered``."""

    def __init__(self, settings: RecordingSection, out_dir: Path,
                 on_rendered: Callable[[Rendered], None], *, fmt: str | None = None,
                 workers: int | None = None,
                 render_if: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.settings = settings
        self.fmt = fmt or settings.format
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.on_rendered = on_rendered
        self.render_if = render_if       # e.g. delivery: legs another leg uploads need no audio
        n = workers or settings.workers or os.cpu_count() or 1
        # forkserver: workers never inherit the capture loop's threads or open sockets.
        _start_forkserver_single_threaded_blas()
        self.pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("forkserver"))
        self._seq = 0
        self._lock = threading.Lock()
        self.errors = 0
        self.worker_cpu_s = 0.0         # CPU the workers spent (benchmarks: audio-s per CPU-s)

    def __call__(self, finished: FinishedCall) -> None:
        self._seq += 1
        record = finished.record
        if self.render_if is not None and not self.render_if(record):
            if finished.media_log is not None:
                finished.media_log.unlink(missing_ok=True)
            with self._lock:
                self.on_rendered(Rendered(record=dict(record, recording=None), audio_path=None,
                                          no_audio_reason="not_rendered"))
            return
        base = recording_basename(record, self._seq)
        out_path = self.out_dir / f"{base}.{self.fmt}"
        future = self.pool.submit(_render_job, finished.media_log, finished.streams, finished.media_plan,
                                  out_path, self.settings, self.fmt, record)
        future.add_done_callback(lambda f, record=record: self._done(f, record))

    def _done(self, future: Future, record: dict[str, Any]) -> None:
        try:
            audio_path, fields, reason, inband, record, cpu_s = future.result()
            self.worker_cpu_s += cpu_s
        except Exception as exc:           # a worker crash must not lose the call
            log.error("rendering call %s failed: %s", record.get("callid"), exc)
            self.errors += 1
            audio_path, fields, reason, inband = None, None, f"render_failed:{type(exc).__name__}", []
        if inband or self.settings.redact_dtmf_digits:
            record = merge_inband_dtmf(record, inband, redact=self.settings.redact_dtmf_digits)
        record = dict(record, recording=fields)
        if reason and not record.get("no_audio_reason"):     # keep the engine's own reason (disk_low)
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

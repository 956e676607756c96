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
    """A copy of ``record`` with in-band presses added to ``dtmf`` (call-time order) and the
    v1 digit strings recomputed; every digit blanked when ``redact``."""
    start = int(record.get("start_ts_ns") or 0)
    presses = [dict(p) for p in record.get("dtmf") or []]
    for ev in inband:
        presses.append({"digit": ev["digit"], "side": "caller" if ev["direction"] == 0 else "callee",
                        "offset_ms": (ev["ts_ns"] - start) // 1_000_000, "source": ev["source"],
                        "duration_ms": ev["duration_ms"]})
    presses.sort(key=lambda p: p.get("offset_ms") or 0)
    if redact:
        for p in presses:
            p["digit"] = ""
    digits = {"caller": "", "callee": ""}
    for p in presses:
        digits["caller" if p.get("side") == "caller" else "callee"] += p["digit"]
    return dict(record, dtmf=presses, callerdtmf=digits["caller"], destinationdtmf=digits["callee"])


def _render_job(media_log: Path | None, streams, out_path: Path, settings: RecordingSection,
                fmt: str, encrypted: bool, record: dict[str, Any] | None = None,
                ) -> tuple[Path | None, dict[str, Any] | None, str, list[dict]]:
    """Runs in a worker process. Returns (audio path, recording fields, no-audio reason,
    in-band DTMF presses)."""
    if encrypted:
        return None, None, "encrypted", []
    if media_log is None or not streams:
        return None, None, "no_rtp", []
    directions, spans = dtmf_plan(record or {}, settings.mask_dtmf_audio)
    try:
        result = render_recording(media_log, streams, out_path, fmt=fmt, channels=settings.channels,
                                  sample_rate_hz=settings.sample_rate_hz,
                                  bitrate_kbps=settings.mp3_bitrate_kbps,
                                  inband_dtmf_directions=directions, mask_spans_ns=spans,
                                  mask_inband=settings.mask_dtmf_audio)
    finally:
        try:
            os.unlink(media_log)
        except OSError:
            pass
    if result.path is None or result.duration_ms <= 0:
        return None, None, "undecodable" if result.undecodable else "no_audio", []
    fields = {"file": Path(result.path).name, "format": result.fmt,
              "sample_rate_hz": result.sample_rate_hz, "channels": result.channels,
              "duration_ms": result.duration_ms, "undecodable": list(result.undecodable)}
    if settings.mask_dtmf_audio:
        fields["dtmf_masked_ms"] = result.masked_ms
    return Path(result.path), fields, "", list(result.dtmf)


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
                                  self.settings, self.fmt, bool(record.get("encrypted")),
                                  {k: record.get(k) for k in ("dtmf", "start_ts_ns")})
        future.add_done_callback(lambda f, record=record: self._done(f, record))
        self._futures.append(future)

    def _done(self, future: Future, record: dict[str, Any]) -> None:
        try:
            audio_path, fields, reason, inband = future.result()
        except Exception as exc:           # a worker crash must not lose the call
            log.error("rendering call %s failed: %s", record.get("callid"), exc)
            self.errors += 1
            audio_path, fields, reason, inband = None, None, f"render_failed:{type(exc).__name__}", []
        if inband or self.settings.redact_dtmf_digits:
            record = merge_inband_dtmf(record, inband, redact=self.settings.redact_dtmf_digits)
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

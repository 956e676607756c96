"""Capture-to-API pipeline: engine → recorder (worker processes) → spool → uploader.

Used by ``replay --deliver``, ``demo`` and live ``run``. The spool is written
before anything else happens to a finished call; the uploader runs in its own
thread so a slow or dead server never slows the capture loop.

A spool that cannot be written (ENOSPC, EIO, a read-only remount) is a fault like any
other: the finished call is held in memory (its recording stays where it was rendered),
counted, and enqueued again with back-off until space returns. Beyond ``hold_max`` calls,
or when the process ends first, a held call is reported by name as lost.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable

from agent.config import Config
from agent.counters import new_counters
from agent.deliver.spool import Incoming, Spool
from agent.deliver.uploader import Uploader
from agent.errors import AgentError
from agent.lifecycle import stop_signals
from agent.recorder import Rendered, call_name
from agent.pipeline.assembly import build_pipeline, uploaded_legs_only
from agent.replay import replay

log = logging.getLogger(__name__)

CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}
HOLD_MAX_CALLS = 1000          # finished calls held in memory while the spool cannot be written
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0
CLOSE_RETRY_S = 5.0            # at the end, how long held calls still wait for space
BATCH_MAX_CALLS = 256          # calls spooled with their fsyncs shared (Spool.enqueue_many)


def private_workdir(spool_dir: Path, role: str) -> Path:
    """``<spool>/work/<role>-<pid>``: this process's working area (media logs, renders).
    Areas of processes that no longer run (a kill -9) are removed first: their media would
    otherwise be private audio left on disk, and a later process must never append to it."""
    base = Path(spool_dir) / "work"
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        entries = []
    for e in entries:
        pid = e.name.rpartition("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue                       # alive (or not ours to signal): leave it
        except ProcessLookupError:
            shutil.rmtree(e.path, ignore_errors=True)
        except PermissionError:
            continue
    return base / f"{role}-{os.getpid()}"


class SpoolSink:
    """Recorder destination: every rendered call enters the spool atomically, or is held."""

    def __init__(self, spool: Spool, config: Config, uploader: Uploader | None = None, *,
                 hold_max: int = HOLD_MAX_CALLS, retry_base_s: float = RETRY_BASE_S,
                 retry_max_s: float = RETRY_MAX_S) -> None:
        self.spool = spool
        self.config = config
        self.uploader = uploader
        self.counters = getattr(spool, "counters", None)
        if self.counters is None:
            self.counters = new_counters()
        self.hold_max = max(1, hold_max)
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.enqueued = 0
        self.duplicates = 0
        self.legs_skipped = 0
        self.lost: list[str] = []            # names of the calls given up
        self._held: deque[Rendered] = deque()
        self._lock = threading.RLock()
        self._delay_s = retry_base_s
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._closed = False
        self._retrier: threading.Thread | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    def __call__(self, rendered: Rendered) -> None:
        self.put_many([rendered])

    def put_many(self, calls: list[Rendered]) -> None:
        """Spool finished calls, the fsyncs of up to ``BATCH_MAX_CALLS`` of them shared
        (``Spool.enqueue_many``), or hold them while the spool cannot be written."""
        kept = []
        for rendered in calls:
            if rendered.record.get("upload") is False:
                # A PBX leg whose talk another leg of the conversation uploads
                # (agent/calls/legs.py): not spooled, so each second of audio is uploaded once.
                if rendered.audio_path is not None:
                    rendered.audio_path.unlink(missing_ok=True)
                self.legs_skipped += 1
            else:
                kept.append(rendered)
        if not kept:
            return
        with self._lock:
            self._held.extend(kept)
            if time.monotonic() >= self._retry_at:
                self._flush()
            self._bound()

    def _flush(self) -> None:
        """Spool what is held, oldest first, a batch at a time, until the spool refuses (then
        back off)."""
        while self._held:
            batch = list(itertools.islice(self._held, BATCH_MAX_CALLS))
            done, error = self.spool.enqueue_many([self._incoming(r) for r in batch])
            for rendered, spool_id in zip(batch, done):
                self._held.popleft()
                self._spooled(rendered, spool_id)
            if error is not None:
                self.counters["deliver.spool.io_error"] += 1
                self._retry_at = time.monotonic() + self._delay_s
                log.error("spool %s not writable (%s): %d call(s) held in memory, next try in %.0f s",
                          self.spool.dir, error.strerror or error, len(self._held), self._delay_s)
                self._delay_s = min(self.retry_max_s, self._delay_s * 2)
                self._start_retrier()
                break
            if self._delay_s != self.retry_base_s:
                log.warning("spool writable again: %d call(s) still held", len(self._held))
                self._delay_s = self.retry_base_s
        self.counters["deliver.spool.held"] = len(self._held)

    def _bound(self) -> None:
        while len(self._held) > self.hold_max:
            self._give_up(self._held.popleft(), f"more than {self.hold_max} calls held")
        self.counters["deliver.spool.held"] = len(self._held)

    def _give_up(self, rendered: Rendered, why: str) -> None:
        name = call_name(rendered.record)
        self.lost.append(name)
        self.counters["deliver.spool.lost"] += 1
        log.error("call LOST, the spool could not be written (%s): %s", why, name)
        if rendered.audio_path is not None:
            rendered.audio_path.unlink(missing_ok=True)

    def _incoming(self, rendered: Rendered) -> Incoming:
        record = rendered.record
        fmt = (record.get("recording") or {}).get("format", self.config.api.format)
        content_type = CONTENT_TYPES.get(fmt) if rendered.audio_path else None
        return Incoming(record, rendered.audio_path, content_type,
                        upload_no_audio=self.config.api.upload_no_audio,
                        upload_unanswered=self.config.api.upload_unanswered)

    def _spooled(self, rendered: Rendered, spool_id: str | None) -> None:
        if rendered.audio_path is not None and rendered.audio_path.exists():
            rendered.audio_path.unlink(missing_ok=True)      # the spool holds its own copy
        if spool_id is None:
            self.duplicates += 1
            log.info("call %s already spooled or delivered: not uploaded again", rendered.record["callid"])
        else:
            self.enqueued += 1
            if self.uploader is not None:
                self.uploader.wake()

    def _start_retrier(self) -> None:
        if self._retrier is None or not self._retrier.is_alive():
            self._retrier = threading.Thread(target=self._retry_loop, name="calln-spool-retry", daemon=True)
            self._retrier.start()

    def _retry_loop(self) -> None:
        while not self._closed:
            self._wake.wait(max(0.0, self._retry_at - time.monotonic()))
            self._wake.clear()
            with self._lock:
                if self._closed or not self._held:
                    return
                if time.monotonic() >= self._retry_at:
                    self._flush()

    def close(self, wait_s: float = CLOSE_RETRY_S) -> list[str]:
        """At the end: give held calls ``wait_s`` more for space, then report each left as
        lost. Returns the names of every call lost."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                self._retry_at = 0.0
                self._delay_s = min(self._delay_s, 0.5)
                self._flush()
                if not self._held or time.monotonic() >= deadline or stop_signals.requested:
                    while self._held:
                        self._give_up(self._held.popleft(), "process ending")
                    self.counters["deliver.spool.held"] = 0
                    self._closed = True
                    self._wake.set()
                    return list(self.lost)
            time.sleep(0.2)


def replay_and_deliver(captures: Iterable[str | Path], config: Config, *, deadline_s: float = 600.0,
                       progress: bool = True, workers: int | None = None,
                       counters=None) -> tuple[int, dict[str, int]]:
    """Replay captures into the spool and deliver everything. Returns (exit status, spool summary);
    ``counters`` (optional) receives the run's counters (the caller's closing summary reads them).
    SIGINT / SIGTERM stop it (``Interrupted``); what is spooled stays for the next run."""
    counters = new_counters() if counters is None else counters
    try:
        spool = Spool(Path(config.spool.dir), retention_days=config.spool.retention_days,
                      ledger_days=config.spool.ledger_days, counters=counters)
    except OSError as exc:
        raise AgentError(f"spool {config.spool.dir} not usable: {exc.strerror or exc}") from None
    uploader = Uploader(spool, config.api, counters=counters, sleep=stop_signals.sleep)
    work = private_workdir(Path(config.spool.dir), "replay")
    sink = SpoolSink(spool, config, uploader)
    signals = stop_signals.install()
    try:
        pipeline = build_pipeline(config, sink, work=work, counters=counters, workers=workers,
                                  render_if=uploaded_legs_only)
        recorder = pipeline.recorder
        uploader.start_thread()
        started = time.monotonic()
        try:
            try:
                engine = replay(captures, config, engine=pipeline.engine, progress=progress)
            finally:
                recorder.close()
                lost = sink.close()
            engine.close()
            remaining = max(0.0, deadline_s - (time.monotonic() - started))
            uploader.stop()
            done = uploader.run_until_idle(deadline_s=remaining)
        finally:
            uploader.stop()
            uploader.close()
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:       # the spool failing outside an enqueue (its directories, a state)
        raise AgentError(f"spool {config.spool.dir}: {exc.strerror or exc}; spooled calls are kept "
                         "for the next run") from None
    finally:
        if signals:
            stop_signals.restore()
    summary = spool.summary()
    if lost:
        log.error("%d call(s) could not be spooled and are lost (see the log lines above)", len(lost))
    return (0 if done and not lost else 1), summary

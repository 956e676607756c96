"""Capture-to-API pipeline: engine → recorder (worker processes) → spool → uploader.

Used by ``replay --deliver``, ``demo`` and live ``run``. The spool is written
before anything else happens to a finished call; the uploader runs in its own
thread so a slow or dead server never slows the capture loop.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Iterable

from agent.config import Config
from agent.counters import new_counters
from agent.deliver.spool import Spool
from agent.deliver.uploader import Uploader
from agent.recorder import Recorder, Rendered
from agent.replay import replay

log = logging.getLogger(__name__)

CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}


class SpoolSink:
    """Recorder destination: every rendered call enters the spool atomically."""

    def __init__(self, spool: Spool, config: Config, uploader: Uploader | None = None) -> None:
        self.spool = spool
        self.config = config
        self.uploader = uploader
        self.enqueued = 0
        self.duplicates = 0
        self.legs_skipped = 0

    def __call__(self, rendered: Rendered) -> None:
        record = rendered.record
        if record.get("upload") is False:
            # [legs edit] a PBX leg whose talk another leg of the conversation uploads
            # (agent/calls/legs.py): not spooled, so each second of audio is uploaded once.
            if rendered.audio_path is not None:
                rendered.audio_path.unlink(missing_ok=True)
            self.legs_skipped += 1
            return
        fmt = (record.get("recording") or {}).get("format", self.config.api.format)
        content_type = CONTENT_TYPES.get(fmt) if rendered.audio_path else None
        spool_id = self.spool.enqueue(record, rendered.audio_path, content_type,
                                      upload_no_audio=self.config.api.upload_no_audio,
                                      upload_unanswered=self.config.api.upload_unanswered)
        if rendered.audio_path is not None and rendered.audio_path.exists():
            rendered.audio_path.unlink(missing_ok=True)      # the spool holds its own copy
        if spool_id is None:
            self.duplicates += 1
            log.info("call %s already spooled or delivered: not uploaded again", record["callid"])
        else:
            self.enqueued += 1
            if self.uploader is not None:
                self.uploader.wake()


def replay_and_deliver(captures: Iterable[str | Path], config: Config, *, deadline_s: float = 600.0,
                       progress: bool = True, workers: int | None = None,
                       counters=None) -> tuple[int, dict[str, int]]:
    """Replay captures into the spool and deliver everything. Returns (exit status, spool summary);
    ``counters`` (optional) receives the run's counters (the caller's closing summary reads them)."""
    counters = new_counters() if counters is None else counters
    spool = Spool(Path(config.spool.dir), retention_days=config.spool.retention_days,
                  ledger_days=config.spool.ledger_days, counters=counters)
    uploader = Uploader(spool, config.api, counters=counters)
    work = Path(config.spool.dir) / "work"
    sink = SpoolSink(spool, config, uploader)
    # Recordings are made in the format the API will receive.
    # A PBX leg whose talk another leg uploads is spooled nowhere: do not spend CPU on its audio.
    recorder = Recorder(config.recording, work / "rendered", sink, fmt=config.api.format, workers=workers,
                        render_if=lambda record: record.get("upload") is not False)
    uploader.start_thread()
    started = time.monotonic()
    try:
        try:
            engine = replay(captures, config, recorder, counters=counters, workdir=work / "media",
                            progress=progress, defer_media=True)
        finally:
            recorder.close()
        engine.close()
        remaining = max(0.0, deadline_s - (time.monotonic() - started))
        uploader.stop()
        done = uploader.run_until_idle(deadline_s=remaining)
    finally:
        uploader.stop()
        uploader.close()
        shutil.rmtree(work, ignore_errors=True)
    summary = spool.summary()
    return (0 if done else 1), summary

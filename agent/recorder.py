"""Recorder: turns finished calls into recording files, in worker processes.

The engine hands each ended call here. Rendering (decode, mix, encode) is CPU
heavy, so it runs in a ``ProcessPoolExecutor`` and never in the capture loop; the
result (recording + JSON record) goes to a destination: a plain output directory
(``replay --out``) or the spool (``--deliver``, ``run``).

In-band DTMF: the worker also looks for in-band tones in each direction that carried no
RFC 4733 / SIP INFO key press, and with ``mask_dtmf_audio`` silences every key press; the
digits it finds are merged into the record here (``merge_inband_dtmf``), which recomputes
``callerdtmf`` / ``destinationdtmf``. With ``redact_dtmf_digits`` every digit is blanked.

A recording that cannot be written (ENOSPC, EDQUOT, EIO: ``local_io_fault``) is a fault of the
disk, not of the call: the worker keeps the call's media log and the recorder renders it again
with back-off (``retry_base_s`` doubling to ``retry_max_s``, at most ``retries`` more tries),
counted (``recorder.io_errors``, ``recorder.retrying``). Only then is the call passed on
without audio and named in an ERROR log as lost (``recorder.audio_lost``). A render that fails
any other way (bad input) fails the same way every time: it is passed on at once.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.config import RecordingSection
from agent.calls.record import CallRecord, Recording, merge_dtmf_presses, presses_from_events
from agent.counters import new_counters
from agent.calls.srtp_keys import ENCRYPTED_NO_KEYS
from agent.pipeline.completion import complete_media
from agent.pipeline.finishing import FinishedCall
from agent.killpoints import kill_point
from agent.lifecycle import FORKSERVER_ENV, PARENT_ENV, die_with_parent, env_pid, stop_signals
from agent.private import file_mode, make_private, make_private_dir, umask_for
from agent.media.render import render_recording, streams_in_use
from agent.media.stream import MediaPlan
from agent.media.timeline import StreamSpec
from agent.worker_heap import keep_arrays_on_heap

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9+#*_-]+")


def safe_name(text: str, limit: int = 40) -> str:
    """A file-name fragment that is safe on any filesystem (no separators, no dots)."""
    cleaned = _UNSAFE.sub("_", text).strip("_")[:limit]
    return cleaned or "unknown"


def recording_basename(record: CallRecord, seq: int) -> str:
    start = record["startdatetimeutc"].replace("-", "").replace(":", "").replace(" ", "T") + "Z"
    return f"{start}_{safe_name(record['callerphone'])}_to_{safe_name(record['destinationphone'])}_{seq:05d}"


def call_name(record: CallRecord) -> str:
    """How a lost call is named in the log: enough for an operator to find it elsewhere."""
    return (f"callid={record.get('callid')} start={record.get('startdatetimeutc')} "
            f"caller={record.get('callerphone') or '?'} callee={record.get('destinationphone') or '?'}")


@dataclass(slots=True)
class Rendered:
    record: CallRecord
    audio_path: Path | None
    no_audio_reason: str


SIP_INFO_PRESS_MS = 250    # masked span of a SIP INFO press that states no duration


def dtmf_plan(record: CallRecord, mask: bool) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """(directions to scan for in-band tones, key-press spans to silence in packet-time ns)."""
    presses = record.get("dtmf") or []
    signalled = {0 if p.get("side") == "caller" else 1 for p in presses}
    sides = tuple(d for d in (0, 1) if d not in signalled)
    spans: list[tuple[int, int]] = []
    if mask:
        start = int(record.get("start_ts_ns") or 0)
        for p in presses:
            at = start + int(p.get("offset_ms") or 0) * 1_000_000
            dur = p.get("duration_ms") or SIP_INFO_PRESS_MS
            spans.append((at, at + int(dur) * 1_000_000))
    return sides, spans


def merge_inband_dtmf(record: CallRecord, inband: list[dict], *, redact: bool) -> CallRecord:
    """``record`` with the in-band presses the worker found (direction/ts_ns dicts) merged in."""
    presses = presses_from_events(inband, int(record.get("start_ts_ns") or 0))
    return merge_dtmf_presses(record, presses, redact=redact)


LOCAL_IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def local_io_fault(exc: BaseException | None) -> bool:
    """True for an error of the local disk (full, over quota, failing): worth trying again."""
    return isinstance(exc, OSError) and exc.errno in LOCAL_IO_ERRNOS


def _render_job(media_log: Path | None, streams, media_plan: MediaPlan | None, out_path: Path,
                settings: RecordingSection, fmt: str, record: CallRecord,
                ) -> tuple[Path | None, Recording | None, str, list[dict], CallRecord, float]:
    """Runs in a worker process: sequence the call's media if the engine deferred it, then
    decode, mix and encode. Returns (audio path, recording fields, no-audio reason, in-band
    DTMF presses, the record (completed), CPU seconds this job used). On a ``local_io_fault``
    the media log is kept (the recorder tries again) and the partial outputs removed."""
    cpu_start = time.process_time()
    ordered_log = None if media_log is None else media_log.with_suffix(".ordered")
    media = media_log     # what render_recording reads: the ordered log's path or blocks
    keep_media = False
    try:
        if media_plan is not None and media_log is not None:
            # Sequenced here and rendered right away: the ordered records stay in memory
            # (a long call's go to ordered_log).
            record, streams, media = complete_media(record, media_log, media_plan, ordered_log,
                                                    redact=settings.redact_dtmf_digits, in_memory=True,
                                                    keep_raw=True)
        if record.get("encrypted"):
            # SDES keys (or plain RTP negotiated) make "" here; DTLS-SRTP, ZRTP, no keys do not.
            why = (record.get("srtp") or {}).get("no_audio", ENCRYPTED_NO_KEYS)
            if why:
                return None, None, why, [], record, time.process_time() - cpu_start
        if media is None or not streams:
            return None, None, "no_rtp", [], record, time.process_time() - cpu_start
        sides, spans = dtmf_plan(record, settings.mask_dtmf_audio)
        streams = streams_in_use(streams, record.get("streams") or [])    # native rate: codecs used
        result = render_recording(media, streams, out_path, fmt=fmt, channels=settings.channels,
                                  sample_rate_hz=settings.output_rate_hz(fmt),
                                  bitrate_kbps=settings.mp3_bitrate_kbps, mp3_quality=settings.mp3_quality,
                                  inband_dtmf_sides=sides, mask_spans_ns=spans,
                                  mask_inband=settings.mask_dtmf_audio)
    except OSError as exc:
        keep_media = local_io_fault(exc)
        if keep_media:
            for partial in out_path.parent.glob(out_path.name + "*"):     # .part, .d0.pcm, ...
                partial.unlink(missing_ok=True)
        raise
    finally:
        if media_log is not None:
            if ordered_log != media_log:
                ordered_log.unlink(missing_ok=True)
            if not keep_media:
                media_log.unlink(missing_ok=True)
    cpu_s = time.process_time() - cpu_start
    if result.path is None or result.duration_ms <= 0:
        return None, None, "undecodable" if result.undecodable else "no_audio", [], record, cpu_s
    fields: Recording = {"file": Path(result.path).name, "format": result.fmt,
              "sample_rate_hz": result.sample_rate_hz, "channels": result.channels,
              "duration_ms": result.duration_ms, "undecodable": list(result.undecodable)}
    if settings.mask_dtmf_audio:
        fields["dtmf_masked_ms"] = result.masked_ms
    return Path(result.path), fields, "", list(result.dtmf), record, cpu_s


def _start_forkserver() -> None:
    """Start the forkserver (if not running yet) with BLAS limited to one thread, dying with
    this process (agent.forkserver_guard).

    The workers are the parallelism: a worker's DTMF scan (one matrix product per few
    seconds of audio) spreading over every core only adds CPU time and contends with the
    other workers and the capture loop. Set before the forkserver starts, the limit reaches
    every worker; the capture process's own environment is left as it was."""
    from multiprocessing import forkserver

    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {name: os.environ.get(name) for name in (*env, PARENT_ENV)}
    try:
        for name, value in env.items():
            os.environ.setdefault(name, value)
        os.environ[PARENT_ENV] = str(os.getpid())
        # The render modules are imported once, in the forkserver, not again in every worker
        # (about 0.3 CPU-s each: numpy, PyAV, the media modules).
        forkserver.set_forkserver_preload(["agent.forkserver_guard", "agent.recorder", "lameenc"])
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


RENDER_NICE = 5    # render workers' niceness, above the capture loop's (which stays at 0)


def _worker_init(umask: int) -> None:
    """In each render worker: die with the forkserver (whose pid it inherited in its
    environment), leave SIGINT to the main process (a Ctrl-C reaches the whole process group),
    create recordings private (``umask``), serve the render's arrays from a heap the worker
    keeps (``worker_heap``), and yield the CPU to the process feeding it (``RENDER_NICE``): a
    render can wait, a capture ring that is not read drops frames."""
    die_with_parent(env_pid(FORKSERVER_ENV))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.umask(umask)
    keep_arrays_on_heap()
    os.nice(RENDER_NICE)


ABORT_WAIT_S = 3.0     # on a stop, renders already running get this long before their workers are killed
RENDER_RETRIES = 8         # tries after a local I/O fault: 1 + 2 + ... + 60 s, about 3 minutes in all
RENDER_RETRY_BASE_S = 1.0
RENDER_RETRY_MAX_S = 60.0


@dataclass(eq=False)
class _Job:
    """One call to render, kept until its result is passed on (a retry submits it again)."""
    media_log: Path | None
    streams: list[StreamSpec]
    media_plan: MediaPlan | None
    out_path: Path
    record: CallRecord
    tries: int = 0
    fault: str = ""                     # the last local I/O fault: "ENOSPC No space left on device"
    timer: threading.Timer | None = field(default=None, repr=False)


class Recorder:
    """Renders finished calls in a process pool and passes each result to ``on_rendered``.

    A SIGINT / SIGTERM while it runs (``stop_on_signals``, the default for commands; the
    live capture process handles its signals itself) cancels the calls not yet rendering,
    gives those rendering ``ABORT_WAIT_S``, kills the rest and raises ``Interrupted`` from
    ``close()``: what was finished was passed on, nothing half-done is."""

    def __init__(self, settings: RecordingSection, out_dir: Path,
                 on_rendered: Callable[[Rendered], None], *, fmt: str | None = None,
                 workers: int | None = None,
                 render_if: Callable[[CallRecord], bool] | None = None,
                 stop_on_signals: bool = True, counters=None, retries: int = RENDER_RETRIES,
                 retry_base_s: float = RENDER_RETRY_BASE_S, retry_max_s: float = RENDER_RETRY_MAX_S) -> None:
        self.settings = settings
        self.fmt = fmt or settings.format
        self.out_dir = Path(out_dir)
        make_private_dir(self.out_dir, settings.group)
        self.on_rendered = on_rendered
        self.render_if = render_if       # e.g. delivery: legs another leg uploads need no audio
        n = workers or settings.workers or os.cpu_count() or 1
        # forkserver: workers never inherit the capture loop's threads or open sockets.
        _start_forkserver()
        # The pool starts its workers on demand, as this process's multiprocessing children:
        # the children started from now on are its workers (what a stop may have to kill).
        self._children_before = {p.pid for p in multiprocessing.active_children()}
        self.pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("forkserver"),
                                        initializer=_worker_init, initargs=(umask_for(settings.group),))
        self._seq = 0
        self._lock = threading.Lock()
        self._futures: dict[Future, _Job] = {}     # submitted, result not yet passed on
        self._retrying: set[_Job] = set()          # waiting for their next try (a disk fault)
        self.counters = counters if counters is not None else new_counters()
        self.retries, self.retry_base_s, self.retry_max_s = retries, retry_base_s, retry_max_s
        self.errors = 0
        self.cancelled = 0              # calls dropped unrendered by a stop
        self.worker_cpu_s = 0.0         # CPU the workers spent (benchmarks: audio-s per CPU-s)
        self._signals = stop_signals.install() if stop_on_signals else False

    def __call__(self, finished: FinishedCall) -> None:
        self._seq += 1
        record = finished.record
        if self.render_if is not None and not self.render_if(record):
            if finished.media_log is not None:
                finished.media_log.unlink(missing_ok=True)
            with self._lock:
                self.on_rendered(Rendered(record={**record, "recording": None}, audio_path=None,
                                          no_audio_reason="not_rendered"))
            return
        base = recording_basename(record, self._seq)
        job = _Job(finished.media_log, finished.streams, finished.media_plan,
                   self.out_dir / f"{base}.{self.fmt}", record)
        if finished.media_log is None:
            self._decide_here(job)
            return
        self._submit(job)
        kill_point("render_submitted")        # crash tests: the agent dies while a worker renders

    def _decide_here(self, job: _Job) -> None:
        """A call without media: its job decides at once (no_rtp, or why encrypted media has no
        audio), so it runs here, not as a worker round trip: a burst of thousands of media-less
        endings then never queues ahead of the calls with audio."""
        future: Future = Future()
        try:
            future.set_result(_render_job(job.media_log, job.streams, job.media_plan, job.out_path,
                                          self.settings, self.fmt, job.record))
        except Exception as exc:               # passed on without audio, as a worker's failure is
            future.set_exception(exc)
        with self._lock:
            self._futures[future] = job
        self._done(future)

    def _submit(self, job: _Job) -> None:
        with self._lock:
            future = self._submit_locked(job)
        future.add_done_callback(self._done)      # outside the lock: it may run at once

    def _submit_locked(self, job: _Job) -> Future:
        future = self.pool.submit(_render_job, job.media_log, job.streams, job.media_plan, job.out_path,
                                  self.settings, self.fmt, job.record)
        self._futures[future] = job
        return future

    def _stopping(self) -> bool:
        return bool(self._signals) and stop_signals.requested

    def _done(self, future: Future) -> None:
        failure = None if future.cancelled() else future.exception()
        with self._lock:
            job = self._futures.pop(future)
            # in the same hold of the lock: close() never sees the call in neither set
            if local_io_fault(failure) and self._retry_later(job, failure):
                return
        media_log, record = job.media_log, job.record
        # After a stop only whole recordings are passed on: a job that failed or found no
        # media may have lost its media log to the stop's clean-up (the next run redoes it).
        if future.cancelled() or (self._stopping() and (future.exception() is not None
                                                        or future.result()[0] is None)):
            self.cancelled += 1         # stopped before it finished: half-done, not passed on
            if media_log is not None:
                media_log.unlink(missing_ok=True)
            return
        try:
            audio_path, fields, reason, inband, record, cpu_s = future.result()
            self.worker_cpu_s += cpu_s
        except Exception as exc:           # a worker crash must not lose the call
            if local_io_fault(exc):          # its tries spent (_retry_later named it as lost)
                reason = f"recording_lost:{errno.errorcode.get(exc.errno, 'EIO')}"
            else:
                log.error("rendering call %s failed: %s", record.get("callid"), exc)
                reason = f"render_failed:{type(exc).__name__}"
            self.errors += 1
            audio_path, fields, inband = None, None, []
        if audio_path is not None and self.settings.group:
            make_private(audio_path, self.settings.group)
        if inband or self.settings.redact_dtmf_digits:
            record = merge_inband_dtmf(record, inband, redact=self.settings.redact_dtmf_digits)
        record = {**record, "recording": fields}
        if reason and not record.get("no_audio_reason"):     # keep the engine's own reason (disk_low)
            record["no_audio_reason"] = reason
        kill_point("rendered")                # crash tests: encoded, not yet handed on
        with self._lock:
            self.on_rendered(Rendered(record=record, audio_path=audio_path, no_audio_reason=reason))

    def _retry_later(self, job: _Job, exc: OSError) -> bool:
        """A local I/O fault (called with the lock held): schedule the job's next try (True),
        or, its tries spent or the recorder stopping, name the call as lost (False: it is
        passed on without audio)."""
        self.counters["recorder.io_errors"] += 1
        if self._stopping():
            return False              # half-done: the stop drops it like the calls not yet rendered
        job.fault = f"{errno.errorcode.get(exc.errno, 'EIO')} {exc.strerror or exc}"
        if job.tries >= self.retries:
            self._lose(job)
            return False
        delay_s = min(self.retry_max_s, self.retry_base_s * 2 ** job.tries)
        job.tries += 1
        log.warning("recording of call %s not written (%s): trying again in %.0f s (%d of %d)",
                    job.record.get("callid"), job.fault, delay_s, job.tries, self.retries)
        job.timer = threading.Timer(delay_s, self._try_again, args=(job,))
        job.timer.daemon = True
        self._retrying.add(job)
        self.counters["recorder.retrying"] = len(self._retrying)
        job.timer.start()
        return True

    def _lose(self, job: _Job) -> None:
        """Give up a call's audio: named in an ERROR log, counted, its media log deleted."""
        self.counters["recorder.audio_lost"] += 1
        log.error("call LOST its audio, the recording could not be written after %d tries (%s): %s",
                  job.tries + 1, job.fault, call_name(job.record))
        if job.media_log is not None:
            job.media_log.unlink(missing_ok=True)

    def _give_up_retries(self) -> None:
        """Every call still waiting for a retry is lost now (a shutdown cannot wait longer):
        each is named and passed on without audio."""
        with self._lock:
            jobs, self._retrying = self._retrying, set()
            self.counters["recorder.retrying"] = 0
            for job in jobs:
                if job.timer is not None:
                    job.timer.cancel()
                self._lose(job)
                self.errors += 1
                reason = f"recording_lost:{job.fault.split(' ', 1)[0]}"
                record = CallRecord(job.record, recording=None)
                if not record.get("no_audio_reason"):
                    record["no_audio_reason"] = reason
                self.on_rendered(Rendered(record=record, audio_path=None, no_audio_reason=reason))

    def _try_again(self, job: _Job) -> None:
        # Under the lock from leaving _retrying to entering _futures: close() never sees it in neither.
        with self._lock:
            if job not in self._retrying:         # a stop took it back
                return
            self._retrying.discard(job)
            self.counters["recorder.retrying"] = len(self._retrying)
            future = self._submit_locked(job)
        future.add_done_callback(self._done)

    def close(self, retry_for_s: float | None = None) -> None:
        """Wait for every submitted call (and every retry), then stop the workers. After a stop
        signal: cancel, bound the wait, and raise ``Interrupted``. ``retry_for_s``: calls still
        waiting for a retry after this long are given up by name (the daemon's shutdown budget)."""
        give_up_at = None if retry_for_s is None else time.monotonic() + retry_for_s
        try:
            while True:
                with self._lock:
                    pending = set(self._futures)
                    retrying = bool(self._retrying)
                if not (pending or retrying) or self._stopping():
                    break
                if retrying and give_up_at is not None and time.monotonic() >= give_up_at:
                    self._give_up_retries()
                    continue
                if pending:
                    # All of them, looked at again every 0.2 s (a stop, a retry): waking at
                    # each completion cost a pass over every pending future each time.
                    wait(pending, timeout=0.2)
                else:
                    time.sleep(0.1)
            if self._stopping():
                self._abort()
                stop_signals.check()
            self.pool.shutdown(wait=True)
        finally:
            if self._signals:
                self._signals = False
                stop_signals.restore()

    def _abort(self) -> None:
        with self._lock:
            pending = set(self._futures)
            retrying, self._retrying = self._retrying, set()
            self.counters["recorder.retrying"] = 0
        for job in retrying:                  # half-done: dropped, as the calls not yet rendered
            if job.timer is not None:
                job.timer.cancel()
            if job.media_log is not None:
                job.media_log.unlink(missing_ok=True)
            self.cancelled += 1
        for f in pending:
            f.cancel()
        running = {f for f in pending if not f.cancelled()}
        wait(running, timeout=ABORT_WAIT_S)
        # Renders still running after the grace: kill their workers.
        for proc in multiprocessing.active_children():
            if proc.pid not in self._children_before:
                proc.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for litter in (*self.out_dir.glob("*.part"), *self.out_dir.glob("*.pcm")):
            litter.unlink(missing_ok=True)          # files of renders cut short
        log.warning("stopped: %d call(s) not rendered", self.cancelled)


def write_to_directory(out_dir: Path, group: str = "") -> Callable[[Rendered], None]:
    """Destination for ``replay --out``: the JSON record beside its recording (private)."""
    out_dir = Path(out_dir)

    def write(rendered: Rendered) -> None:
        record = rendered.record
        if rendered.audio_path is not None:
            json_path = rendered.audio_path.with_suffix(".json")
        else:
            json_path = out_dir / (recording_basename(record, 0) + f"_{safe_name(record['callid'], 16)}.json")
        tmp = json_path.with_suffix(".json.part")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode(group)), "w") as fh:
            fh.write(json.dumps(record, indent=1, sort_keys=True))
        if group:
            make_private(tmp, group)
        os.replace(tmp, json_path)
    return write

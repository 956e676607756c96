"""The durable spool: finished calls waiting for (or done with) upload.

Owns the on-disk layout and each call's upload state. It does no HTTP (that is
``uploader.py``) and no encoding. Its parts, one concern each:

- ``spool_files.py``     atomic file operations (whole or absent after a crash)
- ``spool_ledger.py``    the dedup ledger (one file per call key; sharding, pruning)
- ``spool_state.py``     a call's upload state (``UploadState``) and its states
- ``spool_recovery.py``  start-up recovery of what a crash left half-done
- this module            the queue: enqueue (one call, or a batch whose fsyncs are shared:
                         ``enqueue_many``), the in-memory state table, operator actions

Layout under ``dir`` (mode 0700)::

    calls/<id>/record.json   the call record (record_format.md), written once
    calls/<id>/audio.<ext>   the recording (or generated silence)
    calls/<id>/state.json    upload state, rewritten atomically after every step; while a call
                             backs off it holds ``backoff: {attempts, due_wall}`` (wall clock)
    ledger/                  the dedup ledger (spool_ledger.py)
    tmp/                     enqueue builds a call here, then renames it into calls/
    retry.signal             touched by ``retry`` so a running uploader re-reads states
    quota.json               written by the uploader on a 403: ``{until_wall, reason}``
                             (delete it and restart to resume before the back-off is over)

A call becomes visible only by the atomic rename of its complete directory, so a
crash during enqueue leaves at most litter in ``tmp/`` (completed or cleaned at start).
The ledger claim is an exclusive file creation, so two processes enqueueing the same
call cannot both win. Undelivered calls are never deleted.
"""

from __future__ import annotations

import copy
import fcntl
import io
import logging
import os
import shutil
import threading
import time
import uuid
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from agent.calls.record import CallRecord, record_from_json
from agent.deliver import spool_files as files
from agent.deliver.spool_ledger import LEDGER_SHARDS, Ledger, call_key
from agent.deliver.spool_recovery import SpoolRecovery
from agent.deliver.spool_state import (ACTIVE_STATES, AUDIO_EXT_FOR_TYPE, AUDIO_TYPE_FOR_EXT, CREATED,
                                       DELIVERED, DELIVERED_UNCONFIRMED, DONE_STATES, PARKED, READY,
                                       RETRYABLE_BY_OPERATOR, SKIPPED_UNANSWERED, UPLOADING,
                                       UploadState, fresh_state, state_from_json)
from agent.errors import AgentError
from agent.killpoints import kill_point
from agent.private import loose_spool_modes

log = logging.getLogger("agent.deliver")

# The names the uploader, the CLI and the tests use, in one import.
__all__ = ["Spool", "SpoolEntry", "Incoming", "silence_wav", "call_key", "LEDGER_SHARDS", "UploadState",
           "READY", "CREATED", "UPLOADING", "DELIVERED", "DELIVERED_UNCONFIRMED", "PARKED",
           "SKIPPED_UNANSWERED", "ACTIVE_STATES", "DONE_STATES", "RETRYABLE_BY_OPERATOR"]

# Record fields a "delivered" ledger line keeps (with the final state) for `spool delivered`.
LEDGER_SUMMARY_FIELDS = ("startdatetimeutc", "callerphone", "destinationphone")


def silence_wav(duration_ms: int = 1000, sample_rate_hz: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(b"\x00\x00" * (sample_rate_hz * duration_ms // 1000))
    return buf.getvalue()


@dataclass(slots=True)
class Incoming:
    """One finished call for ``Spool.enqueue_many`` (the arguments of ``enqueue``)."""
    record: CallRecord
    audio_path: Path | None
    content_type: str | None
    upload_no_audio: bool = False
    upload_unanswered: bool = False


@dataclass(slots=True, eq=False)
class _Built:
    """A call ``enqueue_many`` has built in tmp/<id>, locked until it is published."""
    call_id: str
    work: Path
    lock_fd: int
    state: UploadState
    audio_path: Path | None                 # where the recording was (put back on failure)
    audio_file: str | None = None           # its name inside the call's directory
    claimed: bool = False
    published: bool = False


@dataclass(slots=True)
class SpoolEntry:
    """A read-only snapshot of one spooled call (state plus record)."""
    id: str
    key: str
    state: str
    reason: str
    record: CallRecord
    audio_path: Path | None
    content_type: str
    tempcallid: str | None
    next_chunk: int
    total_chunks: int | None
    last_chunk_attempted: bool
    restarts: int
    enqueued_at: float           # wall clock, seconds since the epoch
    delivered_at: float | None
    raw_state: UploadState = field(repr=False, default_factory=lambda: UploadState())


class Spool(SpoolRecovery):
    """The durable queue of finished calls. Thread-safe within one process."""

    def __init__(self, dir: Path, *, retention_days: float = 0.0, ledger_days: float = 400.0,
                 counters: Counter | None = None, recover: bool = True) -> None:
        """``recover``: complete half-done steps at full refreshes (the default). A process that
        only enqueues (the capture process beside a running uploader) passes False."""
        self.dir = Path(dir)
        self.recover = recover
        self.retention_days = retention_days
        self.counters: Counter = counters if counters is not None else Counter()
        self._lock = threading.RLock()
        self._states: dict[str, UploadState] = {}
        self._signal_mtime_ns = -1
        created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if created:
            os.chmod(self.dir, 0o700)
        for sub in ("calls", "ledger", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True, mode=0o700)
        self.calls_dir = self.dir / "calls"
        self.tmp_dir = self.dir / "tmp"
        self._signal = self.dir / "retry.signal"
        self.quota_file = self.dir / "quota.json"
        if not created and recover:
            loose = loose_spool_modes(self.dir)
            for line in loose[:5]:
                log.warning("spool not private: %s (recordings inside; chmod -R go-rwx %s)", line, self.dir)
            self.counters["deliver.spool.loose_modes"] = len(loose)
        self.ledger = Ledger(self.dir / "ledger", self._in_spool, self.counters, ledger_days=ledger_days)
        self.ledger.open()
        self.refresh(full=True)
        self.ledger.prune()

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, record: CallRecord, audio_path: Path | None, content_type: str | None,
                *, upload_no_audio: bool = False, upload_unanswered: bool = False) -> str | None:
        """Add a finished call durably. Returns its spool id, or None for a duplicate."""
        done, error = self.enqueue_many([Incoming(record, audio_path, content_type,
                                                  upload_no_audio, upload_unanswered)])
        if error is not None:
            raise error
        return done[0]

    def enqueue_many(self, calls: Sequence[Incoming]) -> tuple[list[str | None], OSError | None]:
        """Add finished calls durably, the fsyncs of the batch shared (group commit): every
        call is built in tmp/ unsynced, then the batch's files and directories are fsynced
        together, its ledger keys claimed together (``Ledger.claim_many``), and the calls
        renamed into calls/ with one fsync of that directory. Each step of one call keeps the
        order ``enqueue`` always had, so a crash anywhere leaves what recovery completes.

        Returns the spool ids (None: a duplicate) of the first calls, in order, and the OSError
        that kept the others out (None when all went in): those were never published and
        their recordings are back where they were."""
        built: list[_Built | None] = []          # per call, in order; None: known already
        error: OSError | None = None
        try:
            for item in calls:
                try:
                    built.append(self._build(item))
                except OSError as exc:
                    error = exc
                    break
            live = [b for b in built if b is not None]
            try:
                self._sync_built(live)
            except OSError as exc:
                return [], self._discard(live, exc)
            kill_point("spool_tmp_written")
            try:
                claimed = self.ledger.claim_many([(b.state["key"], b.call_id) for b in live])
            except OSError as exc:
                return [], self._discard(live, exc)
            kill_point("spool_claimed")
            done: list[str | None] = []
            for b, won in zip(live, claimed):
                b.claimed = won
            for b in built:
                if b is not None and b.claimed:
                    try:
                        os.replace(self.tmp_dir / b.call_id, self.calls_dir / b.call_id)
                    except OSError as exc:
                        error = self._discard([c for c in live if not c.published], exc)
                        break
                    b.published = True
                    kill_point("spool_published")
                elif b is not None:                  # another call holds the key
                    self._discard([b], None)
                    self.counters["deliver.spool.duplicate"] += 1
                done.append(b.call_id if b is not None and b.claimed else None)
            files.fsync_dir(self.calls_dir)
        except BaseException:
            self._discard([b for b in built if b is not None and not b.published], None)
            raise
        finally:
            for b in built:
                if b is not None:
                    os.close(b.lock_fd)
        for b in built[:len(done)]:
            if b is not None and b.published:
                self._published(b)
        return done, error

    def _build(self, item: Incoming) -> _Built | None:
        """A call's directory in tmp/, unsynced: record, audio, state. None: a known call."""
        record = item.record
        key = call_key(record)
        if self.ledger.lookup(key) is not None:
            self.counters["deliver.spool.duplicate"] += 1
            return None
        call_id = f"{time.time_ns():016x}-{uuid.uuid4().hex[:8]}"
        answered = bool(record.get("answered", True))
        state = fresh_state(call_id, key)
        work = self.tmp_dir / call_id
        work.mkdir(mode=0o700)
        # Held until published: start-up recovery completes only tmp/ entries whose enqueuer
        # died (the kernel drops the lock with the process), never one in progress.
        lock_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        b = _Built(call_id, work, lock_fd, state, item.audio_path)
        try:
            # record.json first and state.json last: a tmp/ entry with a state is complete, and
            # one with a record and its audio can be completed by recovery (spool_state.call_dir_state).
            files.write_atomic(work / "record.json", files.json_bytes(record), sync=False)
            if item.audio_path is not None:
                ctype = item.content_type or AUDIO_TYPE_FOR_EXT.get(
                    Path(item.audio_path).suffix.lstrip(".").lower(), "audio/mpeg")
                b.audio_file = f"audio.{AUDIO_EXT_FOR_TYPE.get(ctype, 'bin')}"
                files.move_in(Path(item.audio_path), work / b.audio_file, sync=False)
                state["content_type"] = ctype
            elif (answered and item.upload_no_audio) or (not answered and item.upload_unanswered):
                b.audio_file = "audio.wav"
                files.write_atomic(work / b.audio_file, silence_wav(), sync=False)
                state["content_type"] = "audio/wav"
                self.counters["deliver.spool.silence_generated"] += 1
            state["audio_file"] = b.audio_file
            kill_point("spool_audio_moved")
            if not answered and not item.upload_unanswered:
                state["state"] = SKIPPED_UNANSWERED
                self.counters["deliver.spool.skipped_unanswered"] += 1
            elif b.audio_file is None:
                why = str(record.get("no_audio_reason") or "unknown")
                state["state"] = PARKED
                state["reason"] = f"no_audio:{why}"
                self.counters["deliver.spool.parked_no_audio"] += 1
            files.write_atomic(work / "state.json", files.json_bytes(state), sync=False)
        except BaseException:
            self._discard([b], None)
            os.close(lock_fd)
            raise
        return b

    def _sync_built(self, built: list[_Built]) -> None:
        """Every file of the built calls, then their directories, durable: one pass each, so
        that a filesystem writes blocks the calls share once."""
        for b in built:
            for name in ("record.json", b.audio_file, "state.json"):
                if name is not None:
                    files.fsync_path(b.work / name)
        for b in built:
            files.fsync_dir(b.work)

    def _discard(self, built: list[_Built], exc: OSError | None) -> OSError | None:
        """Undo calls not published: each recording back where it was (the caller still holds
        the call), its tmp/ directory removed. Returns ``exc``."""
        for b in built:
            if b.audio_file is not None and b.audio_path is not None:
                files.put_back(b.work / b.audio_file, Path(b.audio_path))
            shutil.rmtree(b.work, ignore_errors=True)
        return exc

    def _published(self, b: _Built) -> None:
        state = b.state
        if state["state"] == SKIPPED_UNANSWERED:
            self.ledger.mark(state["key"], "skipped", b.call_id)
        with self._lock:
            self._states[b.call_id] = state
        self.counters["deliver.spool.enqueued"] += 1

    def _publish(self, call_id: str) -> None:
        """Make a complete tmp/<id> visible as a call: one atomic rename."""
        os.replace(self.tmp_dir / call_id, self.calls_dir / call_id)
        files.fsync_dir(self.calls_dir)

    def _in_spool(self, call_id: str) -> bool:
        return bool(call_id) and ((self.tmp_dir / call_id).exists() or (self.calls_dir / call_id).exists())

    def is_known(self, record: CallRecord) -> bool:
        return self.ledger.lookup(call_key(record)) is not None

    # ------------------------------------------------------------------ state
    def refresh(self, *, full: bool = False) -> None:
        """Pick up calls enqueued by other processes and states changed by ``retry``.
        A full refresh of a recovering spool also completes what a crash left half-done."""
        try:
            mtime = self._signal.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        full = full or mtime != self._signal_mtime_ns
        self._signal_mtime_ns = mtime
        if full and self.recover:
            self._recover_tmp()         # first: a call it publishes is then read below
        try:
            names = {e.name for e in os.scandir(self.calls_dir) if e.is_dir() and not e.name.startswith(".")}
        except FileNotFoundError:
            names = set()
        with self._lock:
            for gone in set(self._states) - names:
                del self._states[gone]
            for name in sorted(names):
                if full or name not in self._states:
                    st = self._read_state(name)
                    if st is not None:
                        self._states[name] = st
        if full and self.recover:
            self._reconcile()

    def _read_state(self, call_id: str) -> UploadState | None:
        path = self.calls_dir / call_id / "state.json"
        try:
            return state_from_json(path.read_bytes())
        except FileNotFoundError:
            if self.recover and (self.calls_dir / call_id).is_dir():
                return self._rebuild_state(call_id)
            return None           # deleted meanwhile, or another process will rebuild it
        except (OSError, ValueError):
            self.counters["deliver.spool.unreadable_state"] += 1
            if self.recover:
                return self._rebuild_state(call_id, unreadable=True)
            return None

    def state_of(self, call_id: str) -> UploadState:
        """A copy of the call's state dict (raises KeyError)."""
        with self._lock:
            return copy.deepcopy(self._states[call_id])

    def save_state(self, state: UploadState) -> None:
        """Persist a call's state atomically, then update the in-memory view."""
        call_id = state["id"]
        files.write_atomic(self.calls_dir / call_id / "state.json", files.json_bytes(state))
        with self._lock:
            self._states[call_id] = copy.deepcopy(state)

    def record_of(self, call_id: str) -> CallRecord:
        """The call's record (OSError, ValueError when it cannot be read)."""
        return record_from_json((self.calls_dir / call_id / "record.json").read_bytes())

    def audio_path_of(self, state: UploadState) -> Path | None:
        name = state.get("audio_file")
        return self.calls_dir / state["id"] / name if name else None

    def ids_in_state(self, states: frozenset[str] | set[str]) -> list[str]:
        with self._lock:
            return sorted(i for i, st in self._states.items() if st["state"] in states)

    def mark_done(self, state: UploadState, final_state: str) -> None:
        """Delivered (confirmed or not): ledger first, then state, then retention."""
        self.ledger.mark(state["key"], "delivered", state["id"],
                          self._delivery_summary(state["id"], final_state))
        kill_point("spool_ledger_delivered")
        state["state"] = final_state
        state["delivered_at"] = time.time()
        if self.retention_days > 0:
            self.save_state(state)
            return
        # Deleted at once: the ledger line is the lasting record, so the state is not written
        # first (a crash before the deletion is the window above, completed by _reconcile).
        # In memory it is done either way: a deletion that fails never uploads the call again.
        with self._lock:
            self._states[state["id"]] = copy.deepcopy(state)
        self._delete(state["id"])

    def _delivery_summary(self, call_id: str, final_state: str) -> dict[str, str]:
        """The ledger's lasting note of a delivered call: confirmed or not, when, who."""
        summary = {"state": final_state}
        try:
            record = self.record_of(call_id)
        except (OSError, ValueError):
            return summary
        summary.update((k, str(record.get(k) or "")) for k in LEDGER_SUMMARY_FIELDS)
        return summary

    def _delete(self, call_id: str) -> None:
        path = self.calls_dir / call_id
        # Rename first so a half-deleted directory is never mistaken for a call.
        trash = self.tmp_dir / f"del-{call_id}"
        try:
            os.replace(path, trash)
        except OSError:
            return
        kill_point("spool_delete_renamed")
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._states.pop(call_id, None)

    def purge_expired(self, now_wall: float | None = None) -> int:
        """Delete done calls older than the retention period. Undelivered calls stay."""
        now_wall = time.time() if now_wall is None else now_wall
        limit_s = self.retention_days * 86400.0
        n = 0
        for call_id in self.ids_in_state(DONE_STATES):
            with self._lock:
                st = self._states.get(call_id)
            if st is None:
                continue
            done_at = st.get("delivered_at") or st.get("enqueued_at") or now_wall
            if now_wall - done_at >= limit_s:
                self._delete(call_id)
                n += 1
        return n

    # ------------------------------------------------------------------ operator API
    def list(self) -> list[SpoolEntry]:
        with self._lock:
            ids = sorted(self._states)
        out = []
        for i in ids:
            try:
                out.append(self.get(i))
            except KeyError:
                pass
        return out

    def get(self, id: str) -> SpoolEntry:
        with self._lock:
            st = self._states.get(id)
        if st is None:
            st = self._read_state(id) if (self.calls_dir / id).is_dir() else None
            if st is None:
                raise KeyError(id)
        try:
            record = self.record_of(id)
        except (OSError, ValueError):
            record = CallRecord()
        return SpoolEntry(
            id=id, key=st["key"], state=st["state"], reason=st.get("reason", ""), record=record,
            audio_path=self.audio_path_of(st), content_type=st.get("content_type", ""),
            tempcallid=st.get("tempcallid"), next_chunk=st.get("next_chunk", 1),
            total_chunks=st.get("total_chunks"), last_chunk_attempted=bool(st.get("last_chunk_attempted")),
            restarts=st.get("restarts", 0), enqueued_at=st.get("enqueued_at", 0.0),
            delivered_at=st.get("delivered_at"), raw_state=copy.deepcopy(st))

    def retry(self, id: str) -> None:
        """Put a parked / skipped / unconfirmed call back to ``ready`` (a fresh step 1), or a
        call parked after an uncertain last chunk back to re-sending that chunk."""
        with self._lock:
            st = self._states.get(id)
            if st is None:
                raise KeyError(id)
            st = copy.deepcopy(st)
        if st["state"] not in RETRYABLE_BY_OPERATOR:
            raise AgentError(f"call {id} is {st['state']}, not parked: nothing to retry")
        if not st.get("audio_file"):
            raise AgentError(f"call {id} has no audio ({st.get('reason')}); "
                             "enable upload_no_audio and enqueue again, or leave it parked")
        if st["state"] == SKIPPED_UNANSWERED:
            self.ledger.mark(st["key"], "queued", id)
        if st["state"] == PARKED and st.get("last_chunk_attempted") and st.get("tempcallid"):
            # Parked after an uncertain last chunk: the call may be stored already. Resume by
            # re-sending that chunk (404 = delivered, unconfirmed); a new POST could store it twice.
            st.update({"state": UPLOADING, "reason": "", "backoff": None, "delivered_at": None})
        else:
            st.update({"state": READY, "reason": "", "tempcallid": None, "next_chunk": 1, "backoff": None,
                       "last_chunk_attempted": False, "total_chunks": None, "chunk_bytes": None,
                       "delivered_at": None})
        self.save_state(st)
        self._touch_signal()
        self.counters["deliver.spool.retried"] += 1

    def retry_parked(self) -> int:
        n = 0
        for i in self.ids_in_state({PARKED}):
            try:
                self.retry(i)
                n += 1
            except AgentError:
                pass  # no audio: stays parked
        return n

    def _touch_signal(self) -> None:
        self._signal.touch()
        os.utime(self._signal)
        self._signal_mtime_ns = self._signal.stat().st_mtime_ns

    def pending_count(self) -> int:
        return len(self.ids_in_state(ACTIVE_STATES))

    def summary(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(st["state"] for st in self._states.values()))

    def oldest_undelivered_age_s(self, now_wall: float | None = None) -> float:
        """Age of the oldest call not yet delivered (active or parked); 0.0 when none."""
        now_wall = time.time() if now_wall is None else now_wall
        with self._lock:
            times = [st.get("enqueued_at", now_wall) for st in self._states.values()
                     if st["state"] in ACTIVE_STATES or st["state"] == PARKED]
        return max(0.0, now_wall - min(times)) if times else 0.0


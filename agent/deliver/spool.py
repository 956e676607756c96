"""The durable spool: finished calls waiting for (or done with) upload.

Owns the on-disk layout, atomic writes, the dedup ledger and each call's upload
state. It does no HTTP (that is ``uploader.py``) and no encoding.

Layout under ``dir`` (mode 0700)::

    calls/<id>/record.json   the call record (record_format.md), written once
    calls/<id>/audio.<ext>   the recording (or generated silence)
    calls/<id>/state.json    upload state, rewritten atomically after every step; while a call
                             backs off it holds ``backoff: {attempts, due_wall}`` (wall clock)
    ledger/<h[:2]>/<h[2:]>   h = sha256(call key): one small file per call key accepted:
                             "queued <id>" then "delivered <id> <time> <summary JSON>" /
                             "skipped <id> <time>"
                             (<time>: seconds since the epoch when the entry became final)
    ledger/.maint.lock       serialises ledger migration and pruning between processes
    tmp/                     enqueue builds a call here, then renames it into calls/
    retry.signal             touched by ``retry`` so a running uploader re-reads states
    quota.json               written by the uploader on a 403: ``{until_wall, reason}``
                             (delete it and restart to resume before the back-off is over)

A call becomes visible only by the atomic rename of its complete directory, so a
crash during enqueue leaves at most litter in ``tmp/`` (cleaned at start).
The ledger uses exclusive file creation, so two processes enqueueing the same
call cannot both win. Undelivered calls are never deleted.

The ledger is sharded into 256 directories by the first two hex digits of the hash,
so a directory holds 1/256 of the entries. Versions before the sharding kept
``ledger/<h>`` flat: opening the spool moves such entries into their shard (link,
fsync, unlink: a crash leaves the entry in one place or both, never in none), and a
lookup consults the flat name too, so a call delivered before an upgrade is still
known after it. Old and new versions must not run on one spool at the same time.

Final ledger entries (delivered / skipped) are pruned once older than ``ledger_days``
(0 = never), judged by the time written into the entry (the file's mtime for entries
of older versions): at open, then from the uploader's hourly maintenance, one shard
per pass (a full cycle takes 256 passes, about 11 days). An entry whose call is still
in ``calls/`` or ``tmp/`` is never pruned, whatever its age and state. The trade-off:
a capture older than ``ledger_days`` replayed again is uploaded again.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import io
import json
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
from typing import Any

from agent.errors import AgentError
from agent.killpoints import kill_point
from agent.private import loose_spool_modes

log = logging.getLogger("agent.deliver")

# States of a call in the spool.
READY = "ready"
CREATED = "created"
UPLOADING = "uploading"
DELIVERED = "delivered"
DELIVERED_UNCONFIRMED = "delivered_unconfirmed"
PARKED = "parked"
SKIPPED_UNANSWERED = "skipped_unanswered"

ACTIVE_STATES = frozenset({READY, CREATED, UPLOADING})
DONE_STATES = frozenset({DELIVERED, DELIVERED_UNCONFIRMED, SKIPPED_UNANSWERED})
RETRYABLE_BY_OPERATOR = frozenset({PARKED, SKIPPED_UNANSWERED, DELIVERED_UNCONFIRMED})

FINAL_LEDGER_KINDS = frozenset({"delivered", "skipped"})
# Record fields a "delivered" ledger line keeps (with the final state) for `spool delivered`.
LEDGER_SUMMARY_FIELDS = ("startdatetimeutc", "callerphone", "destinationphone")
LEDGER_SHARDS = tuple(f"{i:02x}" for i in range(256))
LITTER_AGE_S = 3600.0          # a claim / temp file this old without its call is a crash's litter

_EXT_FOR_TYPE = {"audio/mpeg": "mp3", "audio/wav": "wav", "audio/x-wav": "wav"}
_TYPE_FOR_EXT = {"mp3": "audio/mpeg", "wav": "audio/wav"}


def call_key(record: dict[str, Any]) -> str:
    """The dedup / ledger key of a call (record_format.md)."""
    return f"{record.get('callid', '')}|{record.get('from_tag', '')}|{record.get('start_ts_ns', '')}|{record.get('leg', 0)}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Temp file, fsync, rename, fsync the directory: the file is old or new, never torn."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    _write_synced(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), data)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def silence_wav(duration_ms: int = 1000, sample_rate_hz: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(b"\x00\x00" * (sample_rate_hz * duration_ms // 1000))
    return buf.getvalue()


@dataclass(slots=True)
class SpoolEntry:
    """A read-only snapshot of one spooled call (state plus record)."""
    id: str
    key: str
    state: str
    reason: str
    record: dict[str, Any]
    audio_path: Path | None
    content_type: str
    tempcallid: str | None
    next_chunk: int
    total_chunks: int | None
    last_chunk_attempted: bool
    restarts: int
    enqueued_at: float           # wall clock, seconds since the epoch
    delivered_at: float | None
    raw_state: dict[str, Any] = field(repr=False, default_factory=dict)


class Spool:
    """The durable queue of finished calls. Thread-safe within one process."""

    def __init__(self, dir: Path, *, retention_days: float = 0.0, ledger_days: float = 400.0,
                 counters: Counter | None = None, recover: bool = True) -> None:
        """``recover``: complete half-done steps at full refreshes (the default). A process that
        only enqueues (the capture process beside a running uploader) passes False."""
        self.dir = Path(dir)
        self.recover = recover
        self.retention_days = retention_days
        self.ledger_days = ledger_days
        self.counters: Counter = counters if counters is not None else Counter()
        # Pruning walks one shard per pass; start where the wall-clock hour points so that
        # an agent restarted often still covers every shard over time.
        self._prune_cursor = int(time.time() // 3600) % len(LEDGER_SHARDS)
        self._lock = threading.RLock()
        self._states: dict[str, dict[str, Any]] = {}
        self._signal_mtime_ns = -1
        created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if created:
            os.chmod(self.dir, 0o700)
        for sub in ("calls", "ledger", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True, mode=0o700)
        self.calls_dir = self.dir / "calls"
        self.ledger_dir = self.dir / "ledger"
        self.tmp_dir = self.dir / "tmp"
        self._signal = self.dir / "retry.signal"
        self.quota_file = self.dir / "quota.json"
        if not created and recover:
            loose = loose_spool_modes(self.dir)
            for line in loose[:5]:
                log.warning("spool not private: %s (recordings inside; chmod -R go-rwx %s)", line, self.dir)
            self.counters["deliver.spool.loose_modes"] = len(loose)
        self._open_ledger()
        self.refresh(full=True)
        self.prune_ledger()

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, record: dict[str, Any], audio_path: Path | None, content_type: str | None,
                *, upload_no_audio: bool = False, upload_unanswered: bool = False) -> str | None:
        """Add a finished call durably. Returns its spool id, or None for a duplicate."""
        key = call_key(record)
        if self._ledger_lookup(key) is not None:
            self.counters["deliver.spool.duplicate"] += 1
            return None
        call_id = f"{time.time_ns():016x}-{uuid.uuid4().hex[:8]}"
        answered = bool(record.get("answered", True))
        state = _fresh_state(call_id, key)
        work = self.tmp_dir / call_id
        work.mkdir(mode=0o700)
        # Held while the call is built: start-up recovery completes only tmp/ entries whose
        # enqueuer died (the kernel drops the lock with the process), never one in progress.
        lock_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        audio_file = None
        try:
            # record.json first and state.json last: a tmp/ entry with a state is complete, and
            # one with a record and its audio can be completed by recovery (_tmp_state).
            write_atomic(work / "record.json", _dumps(record), sync_dir=False)
            if audio_path is not None:
                ctype = content_type or _TYPE_FOR_EXT.get(Path(audio_path).suffix.lstrip(".").lower(), "audio/mpeg")
                audio_file = f"audio.{_EXT_FOR_TYPE.get(ctype, 'bin')}"
                self._move_in(Path(audio_path), work / audio_file)
                state["content_type"] = ctype
            elif (answered and upload_no_audio) or (not answered and upload_unanswered):
                audio_file = "audio.wav"
                write_atomic(work / audio_file, silence_wav(), sync_dir=False)
                state["content_type"] = "audio/wav"
                self.counters["deliver.spool.silence_generated"] += 1
            state["audio_file"] = audio_file
            kill_point("spool_audio_moved")
            if not answered and not upload_unanswered:
                state["state"] = SKIPPED_UNANSWERED
                self.counters["deliver.spool.skipped_unanswered"] += 1
            elif audio_file is None:
                why = str(record.get("no_audio_reason") or "unknown")
                state["state"] = PARKED
                state["reason"] = f"no_audio:{why}"
                self.counters["deliver.spool.parked_no_audio"] += 1
            write_atomic(work / "state.json", _dumps(state), sync_dir=False)
            fsync_dir(work)
            kill_point("spool_tmp_written")
            # Claim the key only once the call is complete on disk; the exclusive
            # create is what makes two concurrent enqueues of one call safe.
            if not self._ledger_claim(key, call_id):
                shutil.rmtree(work, ignore_errors=True)
                self.counters["deliver.spool.duplicate"] += 1
                return None
            kill_point("spool_claimed")
            self._publish(call_id)
            kill_point("spool_published")
        except BaseException:
            if audio_file is not None and audio_path is not None:
                _put_back(work / audio_file, Path(audio_path))   # the caller still holds the call
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            os.close(lock_fd)
        if state["state"] == SKIPPED_UNANSWERED:
            self._ledger_mark(key, "skipped", call_id)
        with self._lock:
            self._states[call_id] = state
        self.counters["deliver.spool.enqueued"] += 1
        return call_id

    def _publish(self, call_id: str) -> None:
        """Make a complete tmp/<id> visible as a call: one atomic rename."""
        os.replace(self.tmp_dir / call_id, self.calls_dir / call_id)
        fsync_dir(self.calls_dir)

    @staticmethod
    def _move_in(src: Path, dst: Path) -> None:
        """Move the recording in, private (0600) and durable; ``dst`` appears whole or not at all."""
        try:
            os.replace(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS):
                raise               # ENOSPC, EIO: the caller's fault handling decides
            # Another filesystem or a read-only source: copy, fsync, rename, then drop the source.
            part = dst.with_name(f".{dst.name}.part")
            with open(src, "rb") as fin, open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                                              "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(part, dst)
            try:
                os.unlink(src)
            except OSError:
                pass
            return
        os.chmod(dst, 0o600)        # rendered files are made with the worker's umask
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ ledger
    @staticmethod
    def _ledger_hash(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _ledger_path(self, key: str) -> Path:
        h = self._ledger_hash(key)
        return self.ledger_dir / h[:2] / h[2:]

    def _flat_ledger_path(self, key: str) -> Path:
        """Where versions before the sharding kept the entry."""
        return self.ledger_dir / self._ledger_hash(key)

    def _maint_lock(self, *, wait: bool) -> int | None:
        """The ledger maintenance lock (migration, pruning) of all processes on this spool."""
        fd = os.open(self.ledger_dir / ".maint.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _open_ledger(self) -> None:
        """Create the shard directories and move entries of the flat layout into them."""
        made = False
        for shard in LEDGER_SHARDS:
            try:
                (self.ledger_dir / shard).mkdir(mode=0o700)
                made = True
            except FileExistsError:
                pass
        if made:
            fsync_dir(self.ledger_dir)
        fd = self._maint_lock(wait=True)
        try:
            self._migrate_flat_ledger()
        finally:
            os.close(fd)

    def _migrate_flat_ledger(self, batch: int = 4096) -> None:
        now = time.time()
        flat: list[str] = []
        with os.scandir(self.ledger_dir) as it:
            for e in it:
                name = e.name
                if len(name) == 64 and not name.startswith(".") and e.is_file(follow_symlinks=False):
                    flat.append(name)
                elif name.startswith(".") and name.endswith(".tmp"):
                    _remove_if_older(e, now - LITTER_AGE_S)  # a write_atomic cut short
        if not flat:
            return
        flat.sort()          # a batch then touches few shards: few directory fsyncs
        log.info("ledger: moving %d entries of the flat layout into shards", len(flat))
        moved = 0
        for i in range(0, len(flat), batch):
            linked: list[Path] = []
            shards: set[str] = set()
            for name in flat[i:i + batch]:
                src = self.ledger_dir / name
                dst = self.ledger_dir / name[:2] / name[2:]
                try:
                    if not _link_or_move(src, dst):
                        shards.add(name[:2])       # renamed: nothing left to remove
                        moved += 1
                        continue
                    moved += 1
                except FileNotFoundError:
                    continue                       # gone meanwhile
                except FileExistsError:
                    # Both exist (a crash between link and unlink, or a stale claim in the
                    # shard): keep the shard's entry unless only the flat one means something.
                    if self._entry_line(dst) is None and self._entry_line(src) is not None:
                        os.replace(src, dst)
                        shards.add(name[:2])
                        moved += 1
                        continue
                linked.append(src)
                shards.add(name[:2])
            # The new names are durable before an old one goes: never in no place at all.
            for shard in shards:
                fsync_dir(self.ledger_dir / shard)
            for src in linked:
                src.unlink(missing_ok=True)
            fsync_dir(self.ledger_dir)
        self.counters["deliver.spool.ledger_migrated"] += moved
        log.info("ledger: %d entries moved into shards", moved)

    def _entry_line(self, path: Path) -> str | None:
        """The entry's line if it stands for a real call (queued, delivered or skipped)."""
        try:
            text = path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        kind, call_id, _ = _parse_entry(text)
        # tmp/ before calls/: a concurrent enqueue renames tmp/<id> into calls/<id>.
        if kind == "queued" and not self._in_spool(call_id):
            return None  # litter of a crash between claim and rename: not a real call
        return text or None

    def _in_spool(self, call_id: str) -> bool:
        return bool(call_id) and ((self.tmp_dir / call_id).exists() or (self.calls_dir / call_id).exists())

    def _ledger_lookup(self, key: str) -> str | None:
        """The ledger line for key if the call is known (queued, delivered or skipped)."""
        line = self._entry_line(self._ledger_path(key))
        if line is None:
            # An entry of the flat layout that the migration at open has not moved (yet).
            line = self._entry_line(self._flat_ledger_path(key))
        return line

    def _ledger_claim(self, key: str, call_id: str) -> bool:
        """Claim key for call_id: True for exactly one of any number of concurrent claimers."""
        path = self._ledger_path(key)
        data = f"queued {call_id}\n".encode()
        if _create_whole(path, data):
            return True
        if self._ledger_lookup(key) is not None:
            return False
        # A claim left by a crashed enqueue: replace it, one process at a time, so that two
        # claimers never each remove what the other has just created.
        fd = self._maint_lock(wait=True)
        try:
            if self._ledger_lookup(key) is not None:
                return False
            path.unlink(missing_ok=True)
            return _create_whole(path, data)
        finally:
            os.close(fd)

    def _ledger_mark(self, key: str, kind: str, call_id: str,
                     summary: dict[str, str] | None = None) -> None:
        line = f"{kind} {call_id}"
        if kind in FINAL_LEDGER_KINDS:
            line += f" {time.time():.0f}"   # the entry's own time, for pruning
            if summary:
                # What `spool delivered` shows once the call itself has left the spool.
                line += " " + json.dumps(summary, ensure_ascii=True, separators=(",", ":"))
        path = self._ledger_path(key)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(path, f"{line}\n".encode())

    def prune_ledger(self, now_wall: float | None = None, *, shards: list[str] | None = None) -> int:
        """Remove final entries older than ``ledger_days`` from the next shard (or ``shards``).

        Never an entry whose call is still in the spool. Also removes crash litter (claims
        without a call, cut-short temp files) older than an hour. Returns the entries pruned.
        """
        if shards is None:
            shards = [LEDGER_SHARDS[self._prune_cursor]]
            self._prune_cursor = (self._prune_cursor + 1) % len(LEDGER_SHARDS)
        fd = self._maint_lock(wait=False)
        if fd is None:
            return 0                   # another process is pruning right now
        pruned = litter = 0
        try:
            now_wall = time.time() if now_wall is None else now_wall
            cutoff = now_wall - self.ledger_days * 86400.0 if self.ledger_days > 0 else None
            litter_cutoff = time.time() - LITTER_AGE_S
            for shard in shards:
                try:
                    it = os.scandir(self.ledger_dir / shard)
                except FileNotFoundError:
                    continue
                with it:
                    for e in it:
                        if e.name.startswith("."):
                            litter += _remove_if_older(e, litter_cutoff)
                            continue
                        try:
                            kind, call_id, ts = _parse_entry(Path(e.path).read_text().strip())
                            if kind in FINAL_LEDGER_KINDS:
                                if cutoff is None:
                                    continue
                                when = ts if ts is not None else e.stat(follow_symlinks=False).st_mtime
                                if when > cutoff:
                                    continue
                            elif kind in ("queued", ""):
                                # Only a claim whose enqueue crashed gets here (see below).
                                if e.stat(follow_symlinks=False).st_mtime > litter_cutoff:
                                    continue
                            else:
                                continue         # not ours to judge (a later version's kind)
                        except OSError:
                            continue
                        if self._in_spool(call_id):
                            continue             # the call is still here: never forgotten
                        if kind in FINAL_LEDGER_KINDS:
                            pruned += _unlink(e.path)
                        else:
                            litter += _unlink(e.path)
        finally:
            os.close(fd)
        if pruned:
            self.counters["deliver.spool.ledger_pruned"] += pruned
        if litter:
            self.counters["deliver.spool.ledger_litter_removed"] += litter
        if pruned or litter:
            log.info("ledger: pruned %d final entries older than %g days and %d crash leftovers "
                     "(shard %s)", pruned, self.ledger_days, litter, ",".join(shards))
        return pruned

    def is_known(self, record: dict[str, Any]) -> bool:
        return self._ledger_lookup(call_key(record)) is not None

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

    def _read_state(self, call_id: str) -> dict[str, Any] | None:
        path = self.calls_dir / call_id / "state.json"
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            if self.recover and (self.calls_dir / call_id).is_dir():
                return self._rebuild_state(call_id)
            return None           # deleted meanwhile, or another process will rebuild it
        except (OSError, ValueError):
            self.counters["deliver.spool.unreadable_state"] += 1
            if self.recover:
                return self._rebuild_state(call_id, unreadable=True)
            return None

    def _rebuild_state(self, call_id: str, *, unreadable: bool = False) -> dict[str, Any] | None:
        """A call in calls/ without a (readable) state. Never written: ``ready``. Unreadable
        (it may have been part-uploaded): ``parked:state_unreadable``, for an operator."""
        st = _tmp_state(self.calls_dir / call_id, call_id)
        if st is None:
            log.error("spool: call %s has neither a state nor a readable record: left as it is", call_id)
            return None
        if unreadable:
            st.update(state=PARKED, reason="state_unreadable")
        try:
            self.save_state(st)
        except FileNotFoundError:
            return None           # delivered and deleted meanwhile
        self.counters["deliver.spool.recovered_state"] += 1
        log.warning("spool: call %s had no readable state: now %s", call_id,
                    st["state"] + (f":{st['reason']}" if st["reason"] else ""))
        return st

    def _reconcile(self) -> None:
        """Make the ledger agree with the calls (a crash between the two writes of a step).
        Another process may deliver and delete a call meanwhile: that call is simply gone."""
        with self._lock:
            items = list(self._states.items())
        for call_id, st in items:
            try:
                self._reconcile_one(call_id, st)
            except FileNotFoundError:
                with self._lock:
                    if not (self.calls_dir / call_id).exists():
                        self._states.pop(call_id, None)

    def _reconcile_one(self, call_id: str, st: dict[str, Any]) -> None:
        key = st["key"]
        path = self._ledger_path(key)
        line = self._entry_line(path) or self._entry_line(self._flat_ledger_path(key))
        kind, owner, _ = _parse_entry(line or "")
        if line is None:
            # State without ledger: claim the key for this call so a replay does not enqueue it
            # again. The claim is exclusive: an uploader marking the call delivered meanwhile wins.
            if self._ledger_claim(key, call_id):
                kind = {SKIPPED_UNANSWERED: "skipped"}.get(st["state"], "delivered" if st["state"] in DONE_STATES
                                                           else "queued")
                if kind in FINAL_LEDGER_KINDS:
                    self._ledger_mark(key, kind, call_id)
                self.counters["deliver.spool.ledger_repaired"] += 1
                log.warning("spool: call %s had no ledger entry: now %s", call_id, kind)
            return
        if owner != call_id:
            return                # another call of the same key owns the entry: not ours to change
        if st["state"] in ACTIVE_STATES and kind == "delivered":
            # A crash between writing "delivered" to the ledger and to the state file.
            st = dict(st, state=DELIVERED, delivered_at=st.get("delivered_at") or time.time())
            self.save_state(st)
            if self.retention_days <= 0:
                self._delete(call_id)
        elif st["state"] == SKIPPED_UNANSWERED and kind == "queued":
            self._ledger_mark(key, "skipped", call_id)      # a crash right after the publish

    def _recover_tmp(self) -> None:
        """Complete or clear what crashed enqueues and deletions left in tmp/.

        A complete call whose enqueuer died is claimed (if nobody else holds its key) and
        published: a kill between claim and publish must not lose it. An entry still locked
        belongs to a live enqueue and is left alone."""
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return
        for e in entries:
            if e.name.startswith("del-"):
                shutil.rmtree(e.path, ignore_errors=True)     # a delivered call's deletion
                continue
            try:
                fd = os.open(e.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                _remove_if_older(e, time.time() - LITTER_AGE_S)     # not a call directory
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue          # an enqueue in progress
                self._recover_one(Path(e.path), e.name)
            except OSError as exc:
                self.counters["deliver.spool.io_error"] += 1
                log.error("spool: cannot recover %s yet: %s", e.path, exc)
            finally:
                os.close(fd)

    def _recover_one(self, work: Path, call_id: str) -> None:
        if not work.exists():
            return                    # published or removed by its enqueuer just before the lock
        st = _tmp_state(work, call_id)
        if st is None:
            # No record yet: cut off by a crash, or an enqueue between its mkdir and its lock.
            # Nothing that could become a call; removed once surely not in progress.
            if work.stat().st_mtime < time.time() - LITTER_AGE_S:
                shutil.rmtree(work, ignore_errors=True)
                self.counters["deliver.spool.tmp_incomplete_removed"] += 1
            return
        if not (work / "state.json").exists():
            if st["audio_file"] is None and st["state"] == PARKED:
                # Killed while moving the recording in: the enqueue never returned, so the
                # caller (a replay run again) makes the call anew with its audio.
                shutil.rmtree(work, ignore_errors=True)
                self.counters["deliver.spool.tmp_incomplete_removed"] += 1
                return
            write_atomic(work / "state.json", _dumps(st))
        key = st["key"]
        path = self._ledger_path(key)
        try:
            kind, owner, _ = _parse_entry(path.read_text().strip())
        except (FileNotFoundError, NotADirectoryError):
            kind, owner = "", ""
        if not (kind == "queued" and owner == call_id) and not self._ledger_claim(key, call_id):
            shutil.rmtree(work, ignore_errors=True)          # another call holds the key
            self.counters["deliver.spool.duplicate"] += 1
            log.info("spool: %s left by a crash is a duplicate of a known call: removed", call_id)
            return
        self._publish(call_id)
        if st["state"] == SKIPPED_UNANSWERED:
            self._ledger_mark(key, "skipped", call_id)
        self.counters["deliver.spool.recovered_publish"] += 1
        log.warning("spool: call %s left half-enqueued by a crash: published", call_id)

    def state_of(self, call_id: str) -> dict[str, Any]:
        """A copy of the call's state dict (raises KeyError)."""
        with self._lock:
            return copy.deepcopy(self._states[call_id])

    def save_state(self, state: dict[str, Any]) -> None:
        """Persist a call's state atomically, then update the in-memory view."""
        call_id = state["id"]
        write_atomic(self.calls_dir / call_id / "state.json", _dumps(state))
        with self._lock:
            self._states[call_id] = copy.deepcopy(state)

    def record_of(self, call_id: str) -> dict[str, Any]:
        return json.loads((self.calls_dir / call_id / "record.json").read_bytes())

    def audio_path_of(self, state: dict[str, Any]) -> Path | None:
        name = state.get("audio_file")
        return self.calls_dir / state["id"] / name if name else None

    def ids_in_state(self, states: frozenset[str] | set[str]) -> list[str]:
        with self._lock:
            return sorted(i for i, st in self._states.items() if st["state"] in states)

    def mark_done(self, state: dict[str, Any], final_state: str) -> None:
        """Delivered (confirmed or not): ledger first, then state, then retention."""
        self._ledger_mark(state["key"], "delivered", state["id"],
                          self._delivery_summary(state["id"], final_state))
        kill_point("spool_ledger_delivered")
        state["state"] = final_state
        state["delivered_at"] = time.time()
        self.save_state(state)
        if self.retention_days <= 0:
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
            record = {}
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
            self._ledger_mark(st["key"], "queued", id)
        if st["state"] == PARKED and st.get("last_chunk_attempted") and st.get("tempcallid"):
            # Parked after an uncertain last chunk: the call may be stored already. Resume by
            # re-sending that chunk (404 = delivered, unconfirmed); a new POST could store it twice.
            st.update(state=UPLOADING, reason="", backoff=None, delivered_at=None)
        else:
            st.update(state=READY, reason="", tempcallid=None, next_chunk=1, backoff=None,
                      last_chunk_attempted=False, total_chunks=None, chunk_bytes=None,
                      delivered_at=None)
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


def _tmp_state(work: Path, call_id: str) -> dict[str, Any] | None:
    """The state of a call directory: its state.json, or one rebuilt from its record and
    audio (a crash before state.json was written; enqueue writes it last). None: no record."""
    try:
        return json.loads((work / "state.json").read_bytes())
    except (OSError, ValueError):
        pass
    try:
        record = json.loads((work / "record.json").read_bytes())
    except (OSError, ValueError):
        return None
    st = _fresh_state(call_id, call_key(record))
    audio = sorted(p.name for p in work.glob("audio.*"))
    if audio:
        st["audio_file"] = audio[0]
        st["content_type"] = _TYPE_FOR_EXT.get(audio[0].rpartition(".")[2], "audio/mpeg")
    elif record.get("answered", True) is False:
        st["state"] = SKIPPED_UNANSWERED
    else:
        st.update(state=PARKED, reason=f"no_audio:{record.get('no_audio_reason') or 'unknown'}")
    return st


def _fresh_state(call_id: str, key: str) -> dict[str, Any]:
    """The upload state of a call nothing has been sent for yet."""
    return {
        "id": call_id, "key": key, "state": READY, "reason": "",
        "tempcallid": None, "next_chunk": 1, "total_chunks": None, "chunk_bytes": None,
        "audio_size": None, "gzip": False, "last_chunk_attempted": False,
        "restarts": 0, "enqueued_at": time.time(), "delivered_at": None,
        "audio_file": None, "content_type": "",
    }


def _parse_entry(text: str) -> tuple[str, str, float | None]:
    """(kind, call id, time written or None) of a ledger line; older versions wrote no time."""
    parts = text.split(maxsplit=3)
    kind = parts[0] if parts else ""
    call_id = parts[1] if len(parts) > 1 else ""
    ts = None
    if len(parts) > 2:
        try:
            ts = float(parts[2])
        except ValueError:
            ts = None
    return kind, call_id, ts


def ledger_summary(text: str) -> dict[str, str]:
    """The summary a final ledger line carries after its time ({} on older lines)."""
    parts = text.split(maxsplit=3)
    try:
        summary = json.loads(parts[3]) if len(parts) > 3 else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in summary.items()} if isinstance(summary, dict) else {}


def _link_or_move(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` too (True: src is still to be removed), or, where the
    filesystem has no hard links, rename it (False). FileExistsError if ``dst`` exists."""
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    if dst.exists():
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.replace(src, dst)        # only under the maintenance lock: nobody else renames here
    return False


def _create_whole(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data``, exclusively: False if it exists. Readers never see it
    empty or part-written (a temp file linked into place), unlike a bare O_EXCL create."""
    path.parent.mkdir(mode=0o700, exist_ok=True)       # a shard removed by hand
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.claim.tmp")
    _write_synced(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this filesystem: an exclusive create, written at once.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        _write_synced(fd, data)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def _put_back(moved: Path, src: Path) -> None:
    """Undo _move_in after a failed enqueue (a rename: it needs no free space)."""
    try:
        if moved.exists() and not src.exists():
            os.replace(moved, src)
    except OSError as exc:
        log.error("cannot put %s back to %s: %s", moved, src, exc)


def _write_synced(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the open file ``fd``, fsync it and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def _remove_if_older(entry: os.DirEntry, cutoff: float) -> int:
    try:
        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
            return _unlink(entry.path)
    except OSError:
        pass
    return 0


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")

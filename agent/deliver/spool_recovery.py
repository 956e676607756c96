"""Start-up recovery: what a crash left half-done in the spool, completed or cleared.

Every step of the spool writes in an order that leaves, after a kill at any point, a
state this module can finish in the direction that keeps the call:

- ``tmp/<id>`` of an enqueue whose process died: published if complete (claiming its
  ledger key unless another call holds it), removed if it never got its record;
- a call in ``calls/`` without a readable ``state.json``: rebuilt from its record and
  audio (``ready``), or parked ``state_unreadable`` when it may have been part-uploaded;
- the ledger and a call's state disagreeing (a crash between the two writes of a step):
  the ledger is made to agree (``_reconcile``).

These are methods of ``Spool`` (a mixin: they work on the spool's own state table and
ledger, which ``spool.py`` owns), kept apart so that ``spool.py`` reads as the queue.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from agent.deliver import spool_files as files
from agent.deliver.spool_ledger import FINAL_LEDGER_KINDS, LITTER_AGE_S, Ledger, parse_entry
from agent.deliver.spool_state import (ACTIVE_STATES, DELIVERED, DONE_STATES, PARKED, SKIPPED_UNANSWERED,
                                       UploadState, call_dir_state)

log = logging.getLogger("agent.deliver")


class SpoolRecovery:
    """Recovery steps of ``Spool`` (see the module docstring)."""

    # Spool's own state, which these steps complete (set by Spool.__init__).
    calls_dir: Path
    tmp_dir: Path
    ledger: Ledger
    counters: Counter
    retention_days: float
    _states: dict[str, UploadState]
    _lock: threading.RLock
    save_state: Callable[[UploadState], None]
    _publish: Callable[[str], None]
    _delete: Callable[[str], None]

    def _rebuild_state(self, call_id: str, *, unreadable: bool = False) -> UploadState | None:
        """A call in calls/ without a (readable) state. Never written: ``ready``. Unreadable
        (it may have been part-uploaded): ``parked:state_unreadable``, for an operator."""
        st = call_dir_state(self.calls_dir / call_id, call_id)
        if st is None:
            log.error("spool: call %s has neither a state nor a readable record: left as it is", call_id)
            return None
        if unreadable:
            st.update({"state": PARKED, "reason": "state_unreadable"})
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

    def _reconcile_one(self, call_id: str, st: UploadState) -> None:
        key = st["key"]
        path = self.ledger.path(key)
        line = self.ledger.entry_line(path) or self.ledger.entry_line(self.ledger.flat_path(key))
        kind, owner, _ = parse_entry(line or "")
        if line is None:
            # State without ledger: claim the key for this call so a replay does not enqueue it
            # again. The claim is exclusive: an uploader marking the call delivered meanwhile wins.
            if self.ledger.claim(key, call_id):
                kind = {SKIPPED_UNANSWERED: "skipped"}.get(st["state"], "delivered" if st["state"] in DONE_STATES
                                                           else "queued")
                if kind in FINAL_LEDGER_KINDS:
                    self.ledger.mark(key, kind, call_id)
                self.counters["deliver.spool.ledger_repaired"] += 1
                log.warning("spool: call %s had no ledger entry: now %s", call_id, kind)
            return
        if owner != call_id:
            return                # another call of the same key owns the entry: not ours to change
        if st["state"] in ACTIVE_STATES and kind == "delivered":
            # A crash between writing "delivered" to the ledger and to the state file.
            st = {**st, "state": DELIVERED, "delivered_at": st.get("delivered_at") or time.time()}
            self.save_state(st)
            if self.retention_days <= 0:
                self._delete(call_id)
        elif st["state"] == SKIPPED_UNANSWERED and kind == "queued":
            self.ledger.mark(key, "skipped", call_id)      # a crash right after the publish

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
                files.remove_if_older(e, time.time() - LITTER_AGE_S)     # not a call directory
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
        st = call_dir_state(work, call_id)
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
            files.write_atomic(work / "state.json", files.json_bytes(st))
        key = st["key"]
        path = self.ledger.path(key)
        try:
            kind, owner, _ = parse_entry(path.read_text().strip())
        except (FileNotFoundError, NotADirectoryError):
            kind, owner = "", ""
        if not (kind == "queued" and owner == call_id) and not self.ledger.claim(key, call_id):
            shutil.rmtree(work, ignore_errors=True)          # another call holds the key
            self.counters["deliver.spool.duplicate"] += 1
            log.info("spool: %s left by a crash is a duplicate of a known call: removed", call_id)
            return
        self._publish(call_id)
        if st["state"] == SKIPPED_UNANSWERED:
            self.ledger.mark(key, "skipped", call_id)
        self.counters["deliver.spool.recovered_publish"] += 1
        log.warning("spool: call %s left half-enqueued by a crash: published", call_id)


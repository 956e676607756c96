"""The uploader: drives spooled calls through the CallN protocol (API v1 or v2).

Owns the per-call state machine (ready → created → uploading → delivered |
delivered_unconfirmed | parked), back-off (per call, exponential with jitter),
the account-wide pauses (401 auth, 403 quota, 406 config) and retention.
It never blocks capture: it runs in its own threads over the durable spool,
persisting state after every step so a kill -9 anywhere resumes safely.
HTTP details live in ``client.py``; storage in ``spool.py``.

Back-off survives a restart: a call's attempts and next due time are kept in its
``state.json`` (``backoff``), the 403 quota pause in ``quota.json`` in the spool dir,
both as wall-clock times. The first pass after start honours them, clamped to the
longest wait this uploader could have chosen itself (a clock that jumped must not
park a call for years). The 401 and 406 stops are not kept: a restart is how an
operator says the credentials or the URL were fixed.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from agent.config import ApiSection
from agent.deliver import client as cl
from agent.deliver.decide import CHUNK, LAST_CHUNK, POST, Action, Decision, decide
from agent.deliver.spool import (ACTIVE_STATES, CREATED, DELIVERED, DELIVERED_UNCONFIRMED,
                                 PARKED, READY, UPLOADING, Spool, UploadState)
from agent.deliver.spool_files import write_atomic
from agent.errors import AgentError, ConfigError
from agent.killpoints import kill_point

log = logging.getLogger("agent.deliver")

def _io_text(exc: OSError) -> str:
    """'ENOSPC No space left on device: /path' for logs and /health."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    return f"{name} {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _reread_credentials(api: ApiSection) -> ApiSection:
    """Default credential source after a 401: the environment or the password file, again."""
    password = os.environ.get("CALLN_PASSWORD", "")
    if not password and api.password_file:
        try:
            password = Path(api.password_file).read_text().strip()
        except OSError:
            password = api.password
    username = os.environ.get("CALLN_API_USERNAME", api.username)
    return dataclasses.replace(api, username=username, password=password or api.password)


class Uploader:
    def __init__(self, spool: Spool, api_config: ApiSection, *, counters: Counter | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[], float] = random.random,
                 wall: Callable[[], float] | None = None,
                 reload_api: Callable[[], ApiSection] | None = None,
                 transport: Any = None,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 300.0,
                 quota_backoff_s: float = 3 * 3600.0, auth_recheck_s: float = 60.0,
                 auth_retry_s: float = 900.0, poll_s: float = 1.0,
                 retention_check_s: float = 3600.0) -> None:
        cl.check_url(api_config.url)  # ConfigError at start-up for http://
        if api_config.format not in ("mp3", "wav"):
            raise ConfigError(f"[api] format {api_config.format!r}: expected mp3 or wav")
        if api_config.version not in (1, 2):
            raise ConfigError(f"[api] version {api_config.version!r}: expected 1 or 2")
        if api_config.chunk_bytes < 1:
            raise ConfigError("[api] chunk_bytes must be positive")
        cl.trust_context(api_config.ca_bundle)   # ConfigError at start-up for an unusable bundle
        self.spool = spool
        self.api = api_config
        self.counters: Counter = counters if counters is not None else spool.counters
        self._clock, self._sleep, self._rng = clock, sleep, rng
        if wall is None:
            # Persisted times are wall-clock. With an injected clock (tests) the wall clock
            # follows it, so back-off written and read by one uploader stays consistent.
            if clock is time.monotonic:
                wall = time.time
            else:
                offset = time.time() - clock()
                wall = lambda: clock() + offset  # noqa: E731
        self._wall = wall
        self._reload_api = reload_api or (lambda: _reread_credentials(self.api))
        self._transport = transport
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.quota_backoff_s = quota_backoff_s
        self.auth_recheck_s, self.auth_retry_s = auth_recheck_s, auth_retry_s
        self.poll_s, self.retention_check_s = poll_s, retention_check_s
        self._kill = kill_point   # crash tests: CALLN_TEST_KILL_AT (agent/killpoints.py)
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._backoff: dict[str, tuple[int, float]] = {}   # id -> (attempts, due at clock())
        self._restored = False     # persisted back-off (calls' states, quota.json) read yet
        self._restore_lock = threading.Lock()
        self._client: cl.CallnClient | None = None
        self.auth_failed = False
        self.auth_reason = ""
        self._auth_check_at = 0.0
        self._auth_retry_at = 0.0
        self.quota_until: float | None = None
        self.quota_reason = ""
        self.config_error = ""
        self.local_io_error = ""   # the last spool I/O failure of a call, until a step succeeds
        self.upkeep_io_error = ""  # the last failure of refresh / purge / prune, until one succeeds
        self._next_refresh = 0.0
        self._next_purge = 0.0
        self._lock_fd: int | None = None
        self._stop = threading.Event()        # the running threads' stop signal (new per start)
        self._never = threading.Event()       # foreground calls (run_once/run_until_idle) never stop
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def _acquire_spool_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.spool.dir / "uploader.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentError(f"another uploader is already running on spool {self.spool.dir}") from None
        self._lock_fd = fd

    def _get_client(self) -> cl.CallnClient:
        if self._client is None:
            self._client = cl.CallnClient(
                self.api.url, self.api.username, self.api.password,
                ca_bundle=self.api.ca_bundle or None, connect_timeout_s=self.api.connect_timeout_s,
                read_timeout_s=self.api.read_timeout_s, write_timeout_s=self.api.write_timeout_s,
                transport=self._transport, version=self.api.version)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def start_thread(self) -> None:
        """Upload in the background, ``max_in_flight`` calls at a time."""
        self._acquire_spool_lock()
        self._stop = stop = threading.Event()
        for i in range(max(1, self.api.max_in_flight)):
            t = threading.Thread(target=self._worker, args=(stop,), name=f"calln-upload-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        self._threads.clear()
        self.close()

    def wake(self) -> None:
        """Look for new calls at the next opportunity (the engine calls this after enqueue)."""
        self._next_refresh = 0.0

    def _worker(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                did = self._run_once(stop)
            except Exception:  # never let one bad call kill the upload thread
                log.exception("upload worker error")
                self.counters["deliver.upload.worker_error"] += 1
                did = False
            if not did:
                wait = min(self.poll_s, max(0.05, self._next_wake() - self._clock()))
                stop.wait(wait)

    # ------------------------------------------------------------------ scheduling
    def _paused(self) -> bool:
        """Account-wide stops. Also where a 401 pause re-checks the credentials."""
        now = self._clock()
        if self.config_error:
            return True
        if self.quota_until is not None:
            if now < self.quota_until:
                return True
            log.info("quota back-off over; trying again")
            self.quota_until = None
            self._save_quota(None)
        if self.auth_failed:
            if now < self._auth_check_at:
                return True
            with self._lock:
                if not self.auth_failed or now < self._auth_check_at:
                    return self.auth_failed
                try:
                    new = self._reload_api()
                except Exception as exc:  # a broken password file must not kill the thread
                    log.error("re-reading credentials failed: %s", exc)
                    new = self.api
                changed = (new.username, new.password) != (self.api.username, self.api.password)
                if changed or now >= self._auth_retry_at:
                    log.warning("retrying upload after 401 (%s)",
                                "credentials changed" if changed else "pause over")
                    self.api = new
                    if self._client is not None:
                        self._client.close()
                        self._client = None
                    self.auth_failed = False
                    return False
                self._auth_check_at = now + self.auth_recheck_s
                return True
        return False

    def _next_due(self) -> str | None:
        now = self._clock()
        ids = self.spool.ids_in_state(ACTIVE_STATES)
        with self._lock:
            for call_id in ids:
                if call_id in self._claimed:
                    continue
                b = self._backoff.get(call_id)
                if b is not None and b[1] > now:
                    continue
                self._claimed.add(call_id)
                return call_id
        return None

    def _next_wake(self) -> float:
        now = self._clock()
        times = [now + self.poll_s]
        if self.quota_until is not None:
            times.append(self.quota_until)
        if self.auth_failed:
            times.append(self._auth_check_at)
        with self._lock:
            times.extend(due for _, due in self._backoff.values())
        return min(times)

    def _housekeeping(self) -> None:
        now = self._clock()
        try:
            if now >= self._next_refresh:
                self._next_refresh = now + self.poll_s
                self.spool.refresh()
            if now >= self._next_purge:
                self._next_purge = now + self.retention_check_s
                self.spool.purge_expired()
                self.spool.ledger.prune()     # one shard of the dedup ledger per pass
        except OSError as exc:
            # A full or failing disk under the spool's own upkeep: counted and reported like
            # a call's I/O fault, tried again at the next pass (poll_s / retention_check_s).
            self.counters["deliver.upload.local_io_error"] += 1
            self.upkeep_io_error = _io_text(exc)
            log.error("spool upkeep failed (%s); trying again later", self.upkeep_io_error)
        else:
            self.upkeep_io_error = ""

    def run_once(self) -> bool:
        """Drive one due call as far as it will go. Returns whether any request was made."""
        return self._run_once(self._never)

    def _run_once(self, stop: threading.Event) -> bool:
        self._acquire_spool_lock()
        if not self._restored:
            with self._restore_lock:
                if not self._restored:
                    self._restore_backoff()
        if self._paused():
            return False
        call_id = self._next_due()
        if call_id is None:
            self._housekeeping()
            call_id = self._next_due()
            if call_id is None:
                return False
        try:
            return self._drive(call_id, stop)
        finally:
            with self._lock:
                self._claimed.discard(call_id)

    def run_until_idle(self, deadline_s: float | None = None) -> bool:
        """Upload until nothing is pending or retryable. False at the deadline (clock seconds
        from now) or, with no deadline, as soon as an account-wide stop (401/406) holds."""
        start = self._clock()
        self._next_refresh = 0.0
        while True:
            did = self.run_once()
            if not did:
                self._next_refresh = 0.0
                self._housekeeping()
                if self.spool.pending_count() == 0:
                    return True
                if self.config_error or (deadline_s is None and self.auth_failed):
                    return False
                now = self._clock()
                if deadline_s is not None and now - start >= deadline_s:
                    return False
                wake = self._next_wake()
                if deadline_s is not None:
                    wake = min(wake, start + deadline_s)
                self._sleep(max(0.001, wake - now))

    # ------------------------------------------------------------------ one call
    def _drive(self, call_id: str, stop: threading.Event) -> bool:
        stepped = False
        while not stop.is_set():
            try:
                state = self.spool.state_of(call_id)
            except KeyError:
                break
            if state["state"] not in ACTIVE_STATES or self._paused():
                break
            stepped = True
            with self._lock:
                backoff_before = self._backoff.get(call_id)
            try:
                go_on = self._step(state)
            except OSError as exc:
                # The spool (state, ledger, audio) failed under us: ENOSPC, EIO. A fault like
                # any other: back off, count, report; the state on disk is the last good one,
                # and progress that could not be saved is no progress (the back-off grows).
                with self._lock:
                    if backoff_before is not None:
                        self._backoff[call_id] = backoff_before
                self._local_io_fault(state, exc)
                break
            self.local_io_error = ""
            if not go_on:
                break
        return stepped

    def _local_io_fault(self, st: UploadState, exc: OSError) -> None:
        self.counters["deliver.upload.local_io_error"] += 1
        self.local_io_error = _io_text(exc)
        self._fail_backoff(st, persist=False)
        log.error("call %s: spool I/O failed (%s); backing off, the call stays spooled",
                  st["id"], self.local_io_error)

    def problems(self) -> list[str]:
        """What keeps uploads from working now, for /health (empty when nothing does)."""
        out = []
        if self.config_error:
            out.append(f"uploads stopped: {self.config_error}")
        if self.auth_failed:
            out.append(f"uploads stopped: credentials refused (401 {self.auth_reason})")
        if self.local_io_error:
            out.append(f"uploads backing off: spool I/O failed ({self.local_io_error})")
        if self.upkeep_io_error:
            out.append(f"spool upkeep failing: {self.upkeep_io_error}")
        return out

    # ------------------------------------------------------------------ back-off
    @property
    def _max_call_delay_s(self) -> float:
        """The longest per-call wait _fail_backoff can choose (maximum times the jitter)."""
        return self.backoff_max_s * 1.5

    def _fail_backoff(self, st: UploadState, *, persist: bool = True) -> None:
        """Back the call off, in memory and in its state file (wall clock, for a restart).
        A state file that cannot be written leaves the back-off in memory only."""
        call_id = st["id"]
        with self._lock:
            attempts = self._backoff.get(call_id, (0, 0.0))[0] + 1
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempts - 1, 30))
            delay *= 0.5 + self._rng()  # jitter: spread retries of many calls apart
            self._backoff[call_id] = (attempts, self._clock() + delay)
        if not persist:
            return
        st["backoff"] = {"attempts": attempts, "due_wall": self._wall() + delay}
        try:
            self.spool.save_state(st)
        except OSError as exc:
            self.counters["deliver.upload.local_io_error"] += 1
            log.error("call %s: cannot persist its back-off (%s): kept in memory", call_id, exc)

    def _ok(self, st: UploadState) -> None:
        """The call made progress: forget its back-off (persisted by the caller's next save)."""
        with self._lock:
            self._backoff.pop(st["id"], None)
        st["backoff"] = None

    def _restore_backoff(self) -> None:
        """Honour the back-off an earlier run persisted: per call and the 403 quota pause."""
        now, wall = self._clock(), self._wall()
        restored = 0
        for call_id in self.spool.ids_in_state(ACTIVE_STATES):
            try:
                b = self.spool.state_of(call_id).get("backoff")
            except KeyError:
                continue
            if not isinstance(b, dict):
                continue
            try:
                attempts = max(0, int(b.get("attempts", 0)))
                wait = float(b.get("due_wall", 0.0)) - wall
            except (TypeError, ValueError):
                continue
            if not math.isfinite(wait):
                wait = self._max_call_delay_s
            wait = min(max(0.0, wait), self._max_call_delay_s)   # a clock that jumped
            with self._lock:
                if call_id not in self._backoff:
                    # The attempts go on counting, so the next failure waits longer still.
                    self._backoff[call_id] = (attempts, now + wait)
                    restored += wait > 0
        if restored:
            self.counters["deliver.upload.backoff_restored"] += restored
            log.info("%d calls still backing off from before the restart", restored)
        q = self._load_quota()
        if q is not None:
            until_wall, reason = q
            wait = until_wall - wall
            if not math.isfinite(wait):
                wait = self.quota_backoff_s
            wait = min(wait, self.quota_backoff_s)
            if wait > 0:
                self.quota_until = now + wait
                self.quota_reason = reason
                self.counters["deliver.upload.quota_restored"] += 1
                log.warning("CallN quota back-off from before the restart (%s): uploads paused "
                            "for another %.0f s", reason, wait)
            else:
                self._save_quota(None)
        self._restored = True

    def _load_quota(self) -> tuple[float, str] | None:
        try:
            data = json.loads(self.spool.quota_file.read_bytes())
            return float(data["until_wall"]), str(data.get("reason", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("%s unreadable: ignored", self.spool.quota_file)
            return None

    def _save_quota(self, until_wall: float | None) -> None:
        try:
            if until_wall is None:
                self.spool.quota_file.unlink(missing_ok=True)
            else:
                write_atomic(self.spool.quota_file, json.dumps(
                    {"until_wall": until_wall, "reason": self.quota_reason}).encode())
        except OSError as exc:  # the pause still holds in memory
            log.error("cannot persist the quota back-off in %s: %s", self.spool.quota_file, exc)

    def _step(self, st: UploadState) -> bool:
        """One request for the call. Returns True to continue with the same call at once."""
        audio = self.spool.audio_path_of(st)
        if audio is None or not audio.exists():
            self._park(st, "audio_missing")
            return False
        if st["state"] == READY:
            return self._create(st, audio)
        return self._send_chunk(st, audio)

    def _create(self, st: UploadState, audio: Path) -> bool:
        call_id = st["id"]
        if st.get("total_chunks") is None:
            # The plan is fixed once and saved before anything is sent.
            size = audio.stat().st_size
            st["chunk_bytes"] = self.api.chunk_bytes
            st["audio_size"] = size
            st["total_chunks"] = max(1, math.ceil(size / self.api.chunk_bytes))
            if not st.get("content_type"):
                st["content_type"] = "audio/wav" if audio.suffix == ".wav" else "audio/mpeg"
            st["gzip"] = st["content_type"] == "audio/wav"
            self.spool.save_state(st)
        try:
            record = self.spool.record_of(call_id)
        except (FileNotFoundError, ValueError) as exc:
            self._park(st, f"record_unreadable: {exc}")
            return False
        out = self._get_client().create_call(record)
        self._kill("after_create_response")
        d = decide(POST, out, bool(st.get("last_chunk_attempted")))
        if d.action is Action.DELIVERED:
            # v2 answered 200: the server stored the call and wants no audio.
            self._ok(st)
            self.spool.mark_done(st, DELIVERED)
            self.counters["deliver.upload.delivered"] += 1
            self.counters["deliver.upload.no_audio_needed"] += 1
            log.info("call %s delivered without audio (the server needs none)", call_id)
            return False
        if d.action is Action.NEXT:
            st.update({"state": CREATED, "tempcallid": out.tempcallid, "next_chunk": 1,
                       "last_chunk_attempted": d.last_chunk_uncertain})
            self._ok(st)
            self.spool.save_state(st)
            self._kill("after_create_state")
            self.counters["deliver.upload.calls_created"] += 1
            return True
        return self._failure(st, out, d)

    def _send_chunk(self, st: UploadState, audio: Path) -> bool:
        """Send chunk ``next_chunk`` of the saved plan."""
        call_id = st["id"]
        n, total = int(st["next_chunk"]), int(st["total_chunks"])
        chunk_bytes = int(st["chunk_bytes"])
        step = LAST_CHUNK if n >= total else CHUNK
        uncertain_before = bool(st.get("last_chunk_attempted"))
        if step == LAST_CHUNK and not uncertain_before:
            # Saved BEFORE the last chunk goes out: a crash while it is on the wire is uncertain.
            st["last_chunk_attempted"] = True
            self.spool.save_state(st)
            self._kill("after_last_chunk_flag")
        with open(audio, "rb") as fh:
            fh.seek((n - 1) * chunk_bytes)
            data = fh.read(chunk_bytes)
        self._kill("before_chunk")
        out = self._get_client().put_audio(st["tempcallid"], n, total, data, st["content_type"],
                                           gzip=bool(st.get("gzip")))
        self.counters["deliver.upload.chunks_sent"] += 1
        self._kill("after_last_chunk_response" if step == LAST_CHUNK else "after_chunk_response")
        d = decide(step, out, uncertain_before)
        if d.action is Action.DELIVERED:
            self._ok(st)
            if not out.complete:
                self.counters["deliver.upload.last_chunk_not_complete"] += 1
            self.spool.mark_done(st, DELIVERED)
            self._kill("after_delivered")
            self.counters["deliver.upload.delivered"] += 1
            log.info("call %s delivered (%d chunks)", call_id, total)
            return False
        if d.action is Action.NEXT:
            self._ok(st)
            st.update({"state": UPLOADING, "next_chunk": n + 1, "last_chunk_attempted": d.last_chunk_uncertain})
            self.spool.save_state(st)
            return True
        if d.action is Action.DELIVERED_UNCONFIRMED:
            self._ok(st)
            st["last_chunk_attempted"] = d.last_chunk_uncertain
            self.spool.mark_done(st, DELIVERED_UNCONFIRMED)
            self.counters["deliver.upload.delivered_unconfirmed"] += 1
            log.warning("call %s: last chunk re-sent after an uncertain answer got 404: "
                        "counted as delivered (unconfirmed)", call_id)
            return False
        if d.action is Action.RESTART:
            restarts = int(st.get("restarts", 0)) + 1
            st.update({"state": READY, "tempcallid": None, "next_chunk": 1,
                       "last_chunk_attempted": d.last_chunk_uncertain, "restarts": restarts})
            self.spool.save_state(st)
            self.counters["deliver.upload.expired_restart"] += 1
            log.info("call %s: temp id expired at chunk %d/%d, starting again", call_id, n, total)
            if restarts >= 3:
                self._fail_backoff(st)  # a server that expires every id must not make us spin
                return False
            return True
        return self._failure(st, out, d)

    def _failure(self, st: UploadState, out: cl.Outcome, d: Decision) -> bool:
        """Carry out a decision that ends this call's turn (back-off, park, account stops)."""
        call_id = st["id"]
        if bool(st.get("last_chunk_attempted")) != d.last_chunk_uncertain and d.action is not Action.PARK:
            # (a park saves the call's state itself)
            st["last_chunk_attempted"] = d.last_chunk_uncertain
            if d.action is not Action.BACKOFF:      # _fail_backoff saves it
                self.spool.save_state(st)
        if d.action is Action.BACKOFF:
            self.counters["deliver.upload.transient"] += 1
            self._fail_backoff(st)
            log.info("call %s: transient failure (%s), backing off", call_id, out.reason)
            return False
        if d.action is Action.PARK:
            self._park(st, out.reason, uncertain=d.last_chunk_uncertain)
            return False
        if d.action is Action.STOP_AUTH:
            with self._lock:
                if not self.auth_failed:
                    self.counters["deliver.upload.auth_failed"] += 1
                    now = self._clock()
                    self.auth_failed = True
                    self.auth_reason = out.reason
                    self._auth_check_at = now + self.auth_recheck_s
                    self._auth_retry_at = now + self.auth_retry_s
            log.error("CallN API refused the credentials of user %r (401): all uploading stopped, "
                      "calls stay spooled; fix the username/password", self.api.username)
            return False
        if d.action is Action.PAUSE_QUOTA:
            self.counters["deliver.upload.quota"] += 1
            self.quota_until = self._clock() + self.quota_backoff_s
            self.quota_reason = out.reason
            self._save_quota(self._wall() + self.quota_backoff_s)
            log.error("CallN quota reached (%s): uploads paused for %.0f s", out.reason, self.quota_backoff_s)
            return False
        # STOP_CONFIG
        self.counters["deliver.upload.config_error"] += 1
        if out.tls_error:
            self.counters["deliver.upload.tls_error"] += 1
        self.config_error = out.reason or f"HTTP {out.status}"
        log.error("CallN API configuration error (%s): uploading stopped", self.config_error)
        return False

    def _park(self, st: UploadState, reason: str, *, uncertain: bool = False) -> None:
        if uncertain:
            # The last chunk may already be stored: keep the temp id and the plan, so that
            # `spool retry` re-sends that chunk (a 404 then means delivered) instead of a POST.
            st.update({"state": PARKED, "reason": f"{reason} (after an uncertain last chunk)",
                       "last_chunk_attempted": True})
        else:
            st.update({"state": PARKED, "reason": reason, "tempcallid": None, "next_chunk": 1,
                       "last_chunk_attempted": False})
        self._ok(st)
        self.spool.save_state(st)
        self.counters["deliver.upload.parked"] += 1
        log.warning("call %s parked: %s", st["id"], reason)

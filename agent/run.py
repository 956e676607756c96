"""``calln-agent run`` (the live capture daemon) and ``calln-agent check-config``.

Owns the process layout of a running agent and its signals:

* the **capture process** (spawned): packet sockets → Engine (SIP + the RTP fast
  path, the same engine as replay) → a bounded render queue → Recorder (its own
  pool of worker processes) → SpoolSink. Engine time is packet time; when the tap
  is quiet for ``idle_advance_s`` it follows the wall clock, so a call without BYE
  still ends by timeout. It reports counters and drop statistics to the parent
  once a second over a pipe.
* the **supervisor** (this process): the Uploader threads over the spool, the
  metrics/health HTTP server, SIGTERM (stop capture, every call in progress ends
  with reason ``shutdown`` and is spooled, then a bounded wait for uploads) and
  SIGHUP (reload what is safe: [api] and [metrics]; other changes are logged as
  needing a restart).

Does not own: capture mechanics (agent.capture.live), protocol logic, delivery logic.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import multiprocessing
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from agent.calls.record import CallRecord

log = logging.getLogger("agent.run")

STATS_EVERY_S = 1.0
READY_TIMEOUT_S = 60.0
# Keys that SIGHUP applies at once; everything else needs a restart.
RELOADABLE_SECTIONS = ("api", "metrics")


# ---------------------------------------------------------------------- logging

class JsonFormatter(logging.Formatter):
    """One JSON object per line (log shippers parse it without regexes)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage(), "pid": record.process}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(json_format: bool, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


# ---------------------------------------------------------------------- capture process

NO_MEDIA_QUEUE_FACTOR = 64     # calls without media may wait this many times the render limit


class RenderQueue:
    """Bounded hand-over from the engine to the Recorder. When ``limit`` calls with media are
    waiting for or in rendering, or for the spool, the capture loop waits (counted as
    back-pressure): the kernel ring absorbs the pause, and a finished call is never dropped.

    Calls without media (answered dialogs that never carried RTP: a PBX or a scanner can end
    thousands of them in one second) cost no render, only their spool write (1-2 ms of CPU
    each here, their fsyncs shared by a batch: agent/spool_handoff.py). They are counted
    apart, up to ``NO_MEDIA_QUEUE_FACTOR`` times the limit, a small record each in memory: a
    burst of them never holds the capture loop while the spool writes them (bench/burst_live.py:
    10,000 of them held it ~160 s when they shared the limit)."""

    def __init__(self, recorder, limit: int, counters) -> None:
        self.recorder = recorder
        self.limit = max(1, limit)
        self.counters = counters
        self.in_flight = 0
        self._by_media = {True: 0, False: 0}          # in flight, by "has a media log"
        self._no_media: dict[str, int] = {}          # callid -> calls in flight without media
        self._cond = threading.Condition()

    def __call__(self, finished) -> None:
        media = finished.media_log is not None
        limit = self.limit if media else self.limit * NO_MEDIA_QUEUE_FACTOR
        with self._cond:
            if self._by_media[media] >= limit:
                self.counters["recorder.backpressure"] += 1
                while self._by_media[media] >= limit:
                    self._cond.wait(1.0)
            self._by_media[media] += 1
            self.in_flight += 1
            if not media:
                callid = finished.record.get("callid")
                self._no_media[callid] = self._no_media.get(callid, 0) + 1
        self.recorder(finished)

    def done(self, record) -> None:
        """``record``'s call was passed on (spooled or held)."""
        with self._cond:
            callid = record.get("callid")
            media = callid not in self._no_media
            if not media:
                self._no_media[callid] -= 1
                if not self._no_media[callid]:
                    del self._no_media[callid]
            self._by_media[media] -= 1
            self.in_flight -= 1
            self._cond.notify_all()


def _call_line(record: CallRecord) -> str:
    return (f"call ended callid={record.get('callid')} caller={record.get('callerphone') or '?'} "
            f"callee={record.get('destinationphone') or '?'} answered={bool(record.get('answered'))} "
            f"reason={record.get('end_reason')} duration_ms={record.get('duration_ms')}")


def capture_main(config: Config, interfaces: list[str], conn, stop_event, log_json: bool,
                 log_level: int, parent_pid: int | None = None) -> None:
    """Entry point of the capture process (spawned: it inherits no threads or sockets).
    It dies with the supervisor: orphaned, it would go on capturing beside a restarted agent."""
    from agent.lifecycle import die_with_parent

    die_with_parent(parent_pid)
    setup_logging(log_json, log_level)
    stopping = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the supervisor decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        _capture_loop(config, interfaces, conn, stop_event, stopping)
    except AgentError as exc:
        log.error("capture: %s", exc)
        conn.send({"error": str(exc)})
        sys.exit(2)


def _capture_loop(config: Config, interfaces: list[str], conn, stop_event, stopping) -> None:
    from agent.capture.live import open_sources
    from agent.counters import new_counters
    from agent.deliver.spool import Spool
    from agent.delivery import SpoolSink, private_workdir
    from agent.media.quality import observe_call
    from agent.media.srtp import observe_srtp
    from agent.pipeline.assembly import build_pipeline, uploaded_legs_only
    from agent.spool_handoff import SpoolHandoff

    cap = config.capture
    counters = new_counters()
    sources = open_sources(interfaces, cap) if interfaces else []     # a HEP listener alone is valid
    hep = _open_hep(cap, counters)
    # Only enqueues: recovery belongs to the supervisor, whose uploader may be delivering and
    # deleting the very calls a second recovery here would re-save (a restart under load).
    spool = Spool(Path(config.spool.dir), retention_days=config.spool.retention_days,
                  ledger_days=config.spool.ledger_days, counters=counters, recover=False)
    work = private_workdir(Path(config.spool.dir), "capture")
    sink = SpoolSink(spool, config)
    queue: RenderQueue

    def on_spooled(rendered) -> None:
        log.info("call spooled callid=%s audio=%s", rendered.record.get("callid"),
                 "yes" if rendered.audio_path else rendered.no_audio_reason or "no")
        queue.done(rendered.record)

    # The recorder's thread only queues a rendered call; the hand-off's thread spools them in
    # batches (agent/spool_handoff.py), and the render queue counts each call until then.
    handoff = SpoolHandoff(sink.put_many, on_spooled)

    def on_rendered(rendered) -> None:
        try:
            if rendered.audio_path is not None:
                counters["recorder.recordings"] += 1
            observe_call(rendered.record, counters, config.quality.mos_below)   # before it is spooled
            observe_srtp(rendered.record, counters)
            handoff(rendered)
        except BaseException:
            queue.done(rendered.record)
            raise

    def on_finished(finished) -> None:
        reason = finished.record.get("end_reason") or "unknown"
        counters[f"calls.end_reason.{reason}"] += 1
        log.info(_call_line(finished.record))
        queue(finished)

    def route(recorder):
        nonlocal queue
        queue = RenderQueue(recorder, cap.max_render_queue, counters)
        return on_finished

    # SIGTERM here means: finish and spool (the workers do not stop on it).
    pipeline = build_pipeline(config, on_rendered, work=work, counters=counters, render_if=uploaded_legs_only,
                              stop_on_signals=False, route=route)
    recorder, engine = pipeline.recorder, pipeline.engine
    feed = engine.feed_batch          # one ring block at a time, the path replay takes
    poller = select.poll()
    by_fd = {}
    for src in sources:
        poller.register(src.fileno(), select.POLLIN | select.POLLERR)
        by_fd[src.fileno()] = src
    if hep is not None:
        poller.register(hep.fileno(), select.POLLIN)
    names = [s.interface for s in sources] + ([hep.name] if hep is not None else [])
    log.info("capturing on %s", ", ".join(names))
    conn.send({"ready": True, "interfaces": names})
    idle_ns = int(cap.idle_advance_s * 1e9)
    last_packet_mono = time.monotonic()
    last_packet_wall = time.time()
    next_stats = time.monotonic()
    reported_drops = (0, 0)
    frames = nbytes = 0
    try:
        while not stopping.is_set() and not stop_event.is_set():
            ready = poller.poll(200)
            got = 0
            for fd, _ in ready:
                n, b = (hep.read(engine.feed_datagram) if hep is not None and fd == hep.fileno()
                        else by_fd[fd].read_batches(feed))
                got += n
                nbytes += b
            # Blocks may also be full without a wake-up (retire timer races): sweep all.
            if not ready:
                for src in sources:
                    n, b = src.read_batches(feed)
                    got += n
                    nbytes += b
            now_mono = time.monotonic()
            if got:
                frames += got
                last_packet_mono = now_mono
                last_packet_wall = time.time()
            elif now_mono - last_packet_mono >= cap.idle_advance_s:
                # A quiet tap must not freeze engine time: timeouts still run (after every frame
                # already taken from the rings has reached the engine).
                for src in sources:
                    src.read_batches(feed, max_blocks=0, flush=True)
                engine.advance(time.time_ns() - idle_ns)
            if now_mono >= next_stats:
                next_stats = now_mono + STATS_EVERY_S
                reported_drops = _report(conn, sources, counters, engine, queue, frames, nbytes,
                                         last_packet_wall, reported_drops)
        log.info("capture stopping: finishing %d call(s) in progress", len(engine.tracker.calls))
        for src in sources:                     # what is already in the ring still counts
            n, b = src.read_batches(feed, max_blocks=1 << 20, flush=True)
            frames += n
            nbytes += b
        if hep is not None:                     # and what the HEP socket holds
            n, b = hep.read(engine.feed_datagram)
            frames += n
            nbytes += b
        engine.finish("shutdown")
        # waits for every render → spool; a disk fault gets half the shutdown budget to clear
        recorder.close(retry_for_s=cap.shutdown_timeout_s / 2)
        handoff.close()                         # every rendered call spooled (or held)
        sink.close()                            # calls held by a full spool: a last try, or named as lost
        engine.close()
    finally:
        _report(conn, sources, counters, engine, queue, frames, nbytes, last_packet_wall, reported_drops,
                final=True)
        for src in sources:
            src.close()
        if hep is not None:
            hep.close()
        shutil.rmtree(work, ignore_errors=True)
    log.info("capture stopped: %d frame(s), %d call(s) finished", frames, counters["calls.finished"])


def _open_hep(cap, counters):
    """The HEP listener of ``[capture] hep``, or None."""
    if not cap.hep:
        return None
    from agent.capture.hep import HepListener, parse_hep_listen
    return HepListener(parse_hep_listen(cap.hep), counters, cap.hep_auth_key.encode())


def _report(conn, sources, counters, engine, queue, frames, nbytes, last_packet_wall, reported,
            final: bool = False) -> tuple[int, int]:
    counters["capture.frames"] = frames
    counters["capture.bytes"] = nbytes
    ring = kernel = 0
    for src in sources:
        st = src.poll_stats()
        ring += st.ring_drops
        kernel += st.kernel_drops
    counters["capture.drops.ring"] = ring
    counters["capture.drops.kernel"] = kernel
    if (ring, kernel) != reported:
        log.warning("capture drops rose: ring %d (+%d), kernel %d (+%d)",
                    ring, ring - reported[0], kernel, kernel - reported[1])
    try:
        conn.send({"counters": dict(counters), "active_calls": len(engine.tracker.calls),
                   "ring_drops": ring, "kernel_drops": kernel, "render_queue": queue.in_flight,
                   "last_packet_wall": last_packet_wall, "final": final})
    except (BrokenPipeError, OSError):
        pass
    return ring, kernel


# ---------------------------------------------------------------------- supervisor

class Supervisor:
    def __init__(self, config: Config, config_path: str | None, interfaces: list[str], *,
                 log_json: bool, log_level: int, metrics_listen: str | None) -> None:
        from agent.counters import new_counters
        from agent.deliver.spool import Spool
        from agent.deliver.uploader import Uploader

        self.config = config
        self.config_path = config_path
        self.interfaces = interfaces
        self.log_json, self.log_level = log_json, log_level
        self.metrics_listen = config.metrics.listen if metrics_listen is None else metrics_listen
        self.upload_counters = new_counters()
        self.spool = Spool(Path(config.spool.dir), retention_days=config.spool.retention_days,
                           ledger_days=config.spool.ledger_days, counters=self.upload_counters)
        self.uploader = Uploader(self.spool, config.api, counters=self.upload_counters)
        self.capture_state: dict[str, Any] = {"counters": {}, "active_calls": 0, "ring_drops": 0,
                                              "kernel_drops": 0, "render_queue": 0,
                                              "last_packet_wall": time.time()}
        self.started_wall = time.time()
        self._fail_since: float | None = None
        self._delivered_seen = 0
        self._failures_seen = 0
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.proc = None
        self.metrics = None

    # -- metrics
    def snapshot(self):
        from agent.metrics import Snapshot

        state = self.capture_state
        counters = dict(state["counters"])
        for k, v in self.upload_counters.items():
            counters[k] = counters.get(k, 0) + v
        try:
            free_mb = shutil.disk_usage(self.spool.dir).free / 1e6
        except OSError:
            free_mb = -1.0
        return Snapshot(counters=counters, active_calls=state["active_calls"],
                        ring_drops=state["ring_drops"], kernel_drops=state["kernel_drops"],
                        render_queue=state["render_queue"], spool_states=self.spool.summary(),
                        spool_oldest_undelivered_s=self.spool.oldest_undelivered_age_s(),
                        spool_free_mb=free_mb,
                        seconds_since_packet=max(0.0, time.time() - state["last_packet_wall"]),
                        upload_failing_s=(time.monotonic() - self._fail_since) if self._fail_since else 0.0,
                        capture_alive=bool(self.proc is not None and self.proc.is_alive()),
                        up_since_s=time.time() - self.started_wall,
                        upload_problems=tuple(self.uploader.problems()))

    def limits(self):
        from agent.metrics import HealthLimits
        m = self.config.metrics
        return HealthLimits(no_packets_s=m.health_no_packets_s, upload_failing_s=m.health_upload_failing_s,
                            min_free_mb=m.health_min_free_mb)

    def _track_upload_health(self) -> None:
        c = self.upload_counters
        delivered = c["deliver.upload.delivered"] + c["deliver.upload.delivered_unconfirmed"]
        failures = sum(c[k] for k in ("deliver.upload.transient", "deliver.upload.auth_failed",
                                      "deliver.upload.quota", "deliver.upload.config_error"))
        u = self.uploader
        blocked = u.auth_failed or u.quota_until is not None or bool(u.config_error)
        if delivered > self._delivered_seen and not blocked:
            self._fail_since = None
        elif (failures > self._failures_seen or blocked) and self._fail_since is None:
            self._fail_since = time.monotonic()
        self._delivered_seen, self._failures_seen = delivered, failures

    # -- lifecycle
    def run(self) -> int:
        ctx = multiprocessing.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        self.stop_event = ctx.Event()
        self.proc = ctx.Process(target=capture_main, name="calln-capture",
                                args=(self.config, self.interfaces, send, self.stop_event,
                                      self.log_json, self.log_level, os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        # Uploads first: a spool already locked by another agent must fail before any capture
        # process exists (a started capture child would keep this process from exiting).
        self.uploader.start_thread()
        self.proc.start()
        send.close()
        self.recv = recv
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if recv.poll(0.2):
                msg = recv.recv()
                if "error" in msg:
                    self.proc.join(5)
                    raise AgentError(msg["error"])
                if msg.get("ready"):
                    break
            if not self.proc.is_alive():
                raise AgentError(f"capture process exited ({self.proc.exitcode}) before it was ready")
            if self._stop.is_set() or time.monotonic() > deadline:
                self._stop_capture()
                raise AgentError("capture did not start in time")
        status = 0
        try:
            # Inside the try: a metrics address already in use must still stop capture cleanly
            # (calls in progress are spooled) and exit with a clear error, never hang.
            if self.metrics_listen:
                from agent.metrics import MetricsServer
                try:
                    self.metrics = MetricsServer(self.metrics_listen, self.snapshot, self.limits)
                except OSError as exc:
                    status = 2
                    raise AgentError(f"[metrics] listen {self.metrics_listen}: {exc.strerror}") from None
                self.metrics.start()
                log.info("metrics on http://%s:%d/metrics (health: /health)", *self.metrics.address)
            log.info("agent running: interfaces %s, spool %s, api %s", ", ".join(self.interfaces),
                     self.config.spool.dir, self.config.api.url)
            while not self._stop.is_set():
                self._drain(0.5)
                self._track_upload_health()
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if not self.proc.is_alive():
                    log.error("capture process died (exit %s): stopping so the service manager "
                              "restarts the agent", self.proc.exitcode)
                    status = 1
                    break
        finally:
            status = self._shutdown(status)
        return status

    def _drain(self, timeout_s: float) -> None:
        try:
            while self.recv.poll(timeout_s):
                msg = self.recv.recv()
                if "counters" in msg:
                    self.capture_state = msg
                timeout_s = 0
        except (EOFError, OSError):
            time.sleep(timeout_s)

    def _stop_capture(self) -> None:
        self.stop_event.set()
        budget = self.config.capture.shutdown_timeout_s
        deadline = time.monotonic() + budget
        while self.proc.is_alive() and time.monotonic() < deadline:
            self._drain(0.2)
        if self.proc.is_alive():
            log.error("capture did not finish within %.0f s: terminating it (calls not yet "
                      "spooled are lost)", budget)
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        self._drain(0)

    def _shutdown(self, status: int) -> int:
        started = time.monotonic()
        log.info("stopping: ending calls in progress (reason shutdown) and spooling them")
        self._stop_capture()
        # Spooled calls are safe; give the uploader what is left of the budget to send them.
        budget = max(0.0, self.config.capture.shutdown_timeout_s - (time.monotonic() - started))
        deadline = time.monotonic() + min(budget, 30.0)
        self.spool.refresh()
        self.uploader.wake()
        while time.monotonic() < deadline and not self.uploader.auth_failed:
            self.spool.refresh()
            if self.spool.pending_count() == 0:
                break
            time.sleep(0.2)
        self.uploader.stop()
        if self.metrics is not None:
            self.metrics.stop()
        pending = self.spool.pending_count()
        log.info("stopped; %d call(s) left in the spool for the next start", pending)
        return status

    def reload(self) -> None:
        """SIGHUP: apply [api] and [metrics] at once; log what needs a restart."""
        from agent.deliver.uploader import Uploader

        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload: configuration rejected, keeping the running one: %s", exc)
            return
        restart_keys = []
        for f in dataclasses.fields(Config):
            if f.name in RELOADABLE_SECTIONS:
                continue
            old_s, new_s = getattr(self.config, f.name), getattr(new, f.name)
            for g in dataclasses.fields(old_s):
                if getattr(old_s, g.name) != getattr(new_s, g.name):
                    restart_keys.append(f"{f.name}.{g.name}")
        if new.api != self.config.api:
            try:
                uploader = Uploader(self.spool, new.api, counters=self.upload_counters)
            except ConfigError as exc:
                log.error("reload: [api] rejected, keeping the running one: %s", exc)
                new = dataclasses.replace(new, api=self.config.api)
            else:
                self.uploader.stop()
                self.uploader = uploader
                self.uploader.start_thread()
                log.info("reload: [api] applied (uploader restarted)")
        if new.metrics.log_json != self.config.metrics.log_json and not self.log_json:
            setup_logging(new.metrics.log_json, self.log_level)
        if new.metrics.listen != self.config.metrics.listen:
            restart_keys.append("metrics.listen")
            new = dataclasses.replace(new, metrics=dataclasses.replace(new.metrics,
                                                                        listen=self.config.metrics.listen))
        # The capture process keeps the configuration it started with.
        self.config = dataclasses.replace(self.config, api=new.api, metrics=new.metrics)
        if restart_keys:
            log.warning("reload: these changes need a restart to apply: %s", ", ".join(restart_keys))
        log.info("configuration reloaded")


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    interfaces = list(args.interface or config.capture.interfaces)
    if not interfaces and not config.capture.hep:
        raise ConfigError("no capture interface: set [capture] interfaces (or hep) or pass --interface")
    log_json = bool(args.log_json or config.metrics.log_json)
    level = logging.DEBUG if getattr(args, "debug", False) else logging.INFO
    setup_logging(log_json, level)
    sup = Supervisor(config, args.config, interfaces, log_json=log_json, log_level=level,
                     metrics_listen=args.metrics_listen)
    return sup.run()


# ---------------------------------------------------------------------- check-config

STA_UNSYNC = 0x0040
TIME_ERROR = 5


def clock_synchronised() -> bool | None:
    """adjtimex(2) read-only: None when it cannot be asked."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name or "libc.so.6", use_errno=True)
    except OSError:
        return None
    buf = ctypes.create_string_buffer(512)       # struct timex, modes = 0: read only
    state = libc.adjtimex(buf)
    if state < 0:
        return None
    status = ctypes.c_int.from_buffer(buf, 40).value if ctypes.sizeof(ctypes.c_long) == 8 else \
        ctypes.c_int.from_buffer(buf, 20).value
    return state != TIME_ERROR and not status & STA_UNSYNC


def check_config(config: Config, interfaces: list[str]) -> list[tuple[str, str]]:
    """(level, message) pairs; level is ok / warn / fail."""
    from agent.capture.live import build_filter, compile_filter, interface_exists
    from agent.deliver.client import check_url, probe_tls

    out: list[tuple[str, str]] = []
    try:
        check_url(config.api.url)
        out.append(("ok", f"API URL {config.api.url} uses https"))
        out.append(probe_tls(config.api.url, config.api.ca_bundle, config.api.connect_timeout_s))
    except ConfigError as exc:
        out.append(("fail", str(exc)))
    if config.api.username and config.api.password:
        out.append(("ok", f"API credentials present (user {config.api.username!r})"))
    else:
        missing = [n for n, v in (("[api] username", config.api.username),
                                  ("password (CALLN_PASSWORD or [api] password_file)", config.api.password))
                   if not v]
        out.append(("fail", "API credentials missing: " + ", ".join(missing)))
    if not interfaces and not config.capture.hep:
        out.append(("fail", "no capture interface ([capture] interfaces or --interface, or [capture] hep)"))
    if config.capture.hep:
        out.append(("ok", f"HEP listener {config.capture.hep}"
                    + (" with auth key" if config.capture.hep_auth_key else "")))
    for name in interfaces:
        out.append(("ok", f"interface {name} exists") if interface_exists(name)
                   else ("fail", f"interface {name} does not exist"))
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.close()
        out.append(("ok", "packet capture allowed (CAP_NET_RAW)"))
    except PermissionError:
        # a HEP listener alone needs no capture privilege
        out.append(("fail" if interfaces else "warn", "packet capture not allowed: needs CAP_NET_RAW (+CAP_NET_ADMIN)"))
    try:
        insns = compile_filter(build_filter(config.capture), snaplen=config.capture.snaplen)
        out.append(("ok", f"capture filter compiles ({len(insns)} instructions)") if insns is not None
                   else ("warn", "tcpdump not installed: capture will run without a kernel filter"))
    except ConfigError as exc:
        out.append(("fail", str(exc)))
    spool = Path(config.spool.dir)
    probe_dir = spool if spool.exists() else spool.parent
    try:
        probe_dir.mkdir(parents=True, exist_ok=True)
        probe = probe_dir / f".calln-check-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
        free_mb = shutil.disk_usage(probe_dir).free / 1e6
        level = "ok" if free_mb >= config.spool.min_free_mb else "warn"
        out.append((level, f"spool {spool} writable ({free_mb:,.0f} MB free)"))
    except OSError as exc:
        out.append(("fail", f"spool {spool} not writable: {exc.strerror or exc}"))
    from agent.private import loose_spool_modes
    for line in loose_spool_modes(spool):
        out.append(("warn", f"spool not private: {line} (chmod -R go-rwx {spool})"))
    synced = clock_synchronised()
    if synced is None:
        out.append(("warn", "cannot tell whether the clock is synchronised (adjtimex failed)"))
    elif synced:
        out.append(("ok", "system clock synchronised (NTP)"))
    else:
        out.append(("fail", "system clock not synchronised: call times would be wrong "
                            "(enable NTP: timedatectl set-ntp true, chrony or systemd-timesyncd)"))
    if config.metrics.listen:
        from agent.metrics import parse_listen
        try:
            parse_listen(config.metrics.listen)
            out.append(("ok", f"metrics will listen on {config.metrics.listen}"))
        except ValueError as exc:
            out.append(("fail", str(exc)))
    return out


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.versions import version_lines
    for line in version_lines():
        print(f"INFO {line}")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"FAIL configuration: {exc}")
        return 1
    interfaces = list(args.interface or config.capture.interfaces)
    results = check_config(config, interfaces)
    for level, message in results:
        print(f"{level.upper():4} {message}")
    failed = sum(1 for level, _ in results if level == "fail")
    print("configuration OK" if not failed else f"{failed} problem(s) found")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="capture live from interfaces and deliver calls (the daemon)",
        description="Capture SIP and RTP live from a SPAN/mirror interface, record every call and "
        "deliver it to the CallN API through the spool. SIGTERM finishes calls in progress; SIGHUP "
        "re-reads [api] and [metrics].",
        epilog="examples:\n"
               "  calln-agent --config /etc/calln-agent/agent.toml run            interfaces from the config\n"
               "  calln-agent --config agent.toml run -i eth1 -i eth2             two mirror ports\n"
               "  calln-agent --config agent.toml run --metrics-listen 0.0.0.0:9731 --log-json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--interface", action="append",
                   help="capture on this interface (repeatable; default: [capture] interfaces)")
    p.add_argument("--metrics-listen", help="HOST:PORT for /metrics and /health (default: [metrics] "
                                            "listen; empty string = off)")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)
    p = subparsers.add_parser(
        "check-config", help="check configuration, privileges, spool and clock",
        description="Check a deployment before starting it: the configuration, the API URL and "
        "credentials, the interfaces, capture privileges, the filter, the spool and the clock. "
        "Prints the versions that decide output first. Exit 0 when all is well.",
        epilog="examples:\n"
               "  calln-agent --config /etc/calln-agent/agent.toml check-config\n"
               "  CALLN_CONFIG=agent.toml calln-agent check-config -i eth1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--interface", action="append", help="interface to check (default: config)")
    p.set_defaults(func=cmd_check_config)

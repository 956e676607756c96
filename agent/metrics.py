"""Observability of a running agent: Prometheus text exposition and a health endpoint.

Owns: turning a snapshot of the agent's state (counters of the capture process and
the uploader, ring statistics, spool summary) into the Prometheus text format,
deciding health (no packets, uploads failing, disk low), and a small stdlib
``http.server`` on a configurable local address serving ``/metrics`` and
``/health``. Does not own: collecting the numbers (agent.run supplies a snapshot
function) or any capture logic. Never exposes credentials or audio.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from agent.media.quality import HISTOGRAMS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Snapshot:
    """Everything /metrics and /health show, taken at one moment."""
    counters: Mapping[str, int] = field(default_factory=dict)   # dotted names, all processes
    active_calls: int = 0
    ring_drops: int = 0
    kernel_drops: int = 0
    render_queue: int = 0
    spool_states: Mapping[str, int] = field(default_factory=dict)
    spool_oldest_undelivered_s: float = 0.0
    spool_free_mb: float = -1.0
    seconds_since_packet: float = 0.0
    upload_failing_s: float = 0.0
    capture_alive: bool = True
    up_since_s: float = 0.0
    upload_problems: tuple[str, ...] = ()   # Uploader.problems(): stops and local I/O faults


@dataclass(frozen=True, slots=True)
class HealthLimits:
    no_packets_s: float = 300.0
    upload_failing_s: float = 900.0
    min_free_mb: int = 1024


# Voice quality histograms: one observation per call direction with audio (media/quality.py).
_QUALITY_HELP = {
    "mos": ("calln_call_mos", "Estimated MOS (G.107 E-model, adaptive jitter buffer) per call direction."),
    "loss": ("calln_call_loss_percent", "RTP packet loss per call direction, percent."),
    "jitter": ("calln_call_jitter_max_milliseconds", "Highest RFC 3550 interarrival jitter per call direction, ms."),
}


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sum_prefix(counters: Mapping[str, int], *prefixes: str) -> int:
    return sum(v for k, v in counters.items() if k.startswith(prefixes))


def render_metrics(snap: Snapshot) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    c = snap.counters
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            num = repr(float(value)) if isinstance(value, float) else str(int(value))
            lines.append(f"{name}{{{lab}}} {num}" if lab else f"{name} {num}")

    def histogram(metric_name: str, help_text: str, name: str, bounds: tuple[float, ...]) -> None:
        """A Prometheus histogram from the per-bucket counters ``quality.observe_call`` keeps."""
        lines.append(f"# HELP {metric_name} {help_text}")
        lines.append(f"# TYPE {metric_name} histogram")
        total = 0
        for i, bound in enumerate((*bounds, float("inf"))):
            total += c.get(f"quality.{name}.b{i}", 0)
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            lines.append(f'{metric_name}_bucket{{le="{le}"}} {total}')
        lines.append(f"{metric_name}_sum {c.get(f'quality.{name}.sum_milli', 0) / 1000!r}")
        lines.append(f"{metric_name}_count {total}")

    metric("calln_packets_total", "counter", "Frames handed to the engine.", [({}, c.get("capture.frames", 0))])
    metric("calln_bytes_total", "counter", "Bytes of the frames handed to the engine.",
           [({}, c.get("capture.bytes", 0))])
    parser = _sum_prefix(c, "net.skip.", "sip.skip.", "rtp.skip.")
    metric("calln_drops_total", "counter", "Packets lost or skipped, by where.",
           [({"kind": "kernel"}, snap.kernel_drops), ({"kind": "ring"}, snap.ring_drops),
            ({"kind": "parser"}, parser)])
    metric("calln_active_calls", "gauge", "Calls in progress.", [({}, snap.active_calls)])
    reasons = sorted((k[len("calls.end_reason."):], v) for k, v in c.items() if k.startswith("calls.end_reason."))
    metric("calln_calls_finished_total", "counter", "Calls ended, by end reason.",
           [({"reason": r}, v) for r, v in reasons] or [({"reason": "bye"}, 0)])
    metric("calln_recordings_written_total", "counter", "Recordings rendered and spooled.",
           [({}, c.get("recorder.recordings", 0))])
    metric("calln_render_queue", "gauge", "Finished calls waiting for or in rendering.",
           [({}, snap.render_queue)])
    metric("calln_render_backpressure_total", "counter", "Times the capture loop waited for renderers.",
           [({}, c.get("recorder.backpressure", 0))])
    metric("calln_uploads_total", "counter", "Upload outcomes.",
           [({"result": "delivered"}, c.get("deliver.upload.delivered", 0)
             + c.get("deliver.upload.delivered_unconfirmed", 0)),
            ({"result": "retried"}, c.get("deliver.upload.transient", 0)
             + c.get("deliver.upload.expired_restart", 0)),
            ({"result": "parked"}, c.get("deliver.upload.parked", 0))])
    faults = (("transient", "deliver.upload.transient"), ("auth", "deliver.upload.auth_failed"),
              ("quota", "deliver.upload.quota"), ("config", "deliver.upload.config_error"),
              ("tls", "deliver.upload.tls_error"), ("local_io", "deliver.upload.local_io_error"),
              ("expired", "deliver.upload.expired_restart"),
              ("unconfirmed", "deliver.upload.delivered_unconfirmed"))
    metric("calln_upload_faults_total", "counter", "Upload faults by kind (tls and local_io: "
           "certificate not verified, spool write failed; unconfirmed: 404 after an uncertain "
           "last chunk, counted as delivered).",
           [({"kind": kind}, c.get(name, 0)) for kind, name in faults])
    metric("calln_spool_calls", "gauge", "Calls in the spool, by state.",
           [({"state": s}, n) for s, n in sorted(snap.spool_states.items())] or [({"state": "ready"}, 0)])
    metric("calln_spool_oldest_undelivered_seconds", "gauge", "Age of the oldest call not yet delivered.",
           [({}, float(snap.spool_oldest_undelivered_s))])
    metric("calln_spool_free_megabytes", "gauge", "Free space on the spool's filesystem.",
           [({}, float(snap.spool_free_mb))])
    metric("calln_spool_held_calls", "gauge", "Finished calls held in memory: the spool cannot be written.",
           [({}, c.get("deliver.spool.held", 0))])
    metric("calln_spool_io_errors_total", "counter", "Writes to the spool that failed (ENOSPC, EIO, ...).",
           [({}, c.get("deliver.spool.io_error", 0))])
    metric("calln_calls_lost_total", "counter", "Finished calls given up because the spool could not be written.",
           [({}, c.get("deliver.spool.lost", 0))])
    metric("calln_recording_io_errors_total", "counter",
           "Recordings that could not be written (ENOSPC, EDQUOT, EIO), every try.",
           [({}, c.get("recorder.io_errors", 0))])
    metric("calln_recordings_retrying", "gauge", "Calls whose recording waits for another try: the disk failed.",
           [({}, c.get("recorder.retrying", 0))])
    metric("calln_recordings_lost_total", "counter",
           "Calls whose audio was given up: the recording could not be written after every try.",
           [({}, c.get("recorder.audio_lost", 0))])
    for name, _key, bounds in HISTOGRAMS:
        histogram(*_QUALITY_HELP[name], name, bounds)
    metric("calln_calls_mos_below_total", "counter", "Calls marked: a direction's MOS below [quality] mos_below.",
           [({}, c.get("quality.mos_below", 0))])
    metric("calln_seconds_since_last_packet", "gauge", "Seconds since the capture saw a packet.",
           [({}, float(snap.seconds_since_packet))])
    metric("calln_capture_up", "gauge", "1 while the capture process runs.", [({}, int(snap.capture_alive))])
    # Every other named counter, for diagnosis (what was skipped and why).
    metric("calln_events_total", "counter", "The agent's internal event counters.",
           [({"name": k}, v) for k, v in sorted(c.items()) if v and not k.startswith("quality.")])
    return "\n".join(lines) + "\n"


def health(snap: Snapshot, limits: HealthLimits) -> tuple[bool, list[str]]:
    """(healthy, reasons when not)."""
    reasons = []
    if not snap.capture_alive:
        reasons.append("capture process not running")
    if limits.no_packets_s > 0 and snap.seconds_since_packet > limits.no_packets_s:
        reasons.append(f"no packets for {snap.seconds_since_packet:.0f} s")
    if limits.upload_failing_s > 0 and snap.upload_failing_s > limits.upload_failing_s:
        reasons.append(f"uploads failing for {snap.upload_failing_s:.0f} s")
    reasons.extend(snap.upload_problems)
    if snap.spool_free_mb >= 0 and snap.spool_free_mb < limits.min_free_mb:
        reasons.append(f"spool disk low ({snap.spool_free_mb:.0f} MB free)")
    held = snap.counters.get("deliver.spool.held", 0)
    if held:
        reasons.append(f"spool not writable: {held} finished call(s) held in memory")
    lost = snap.counters.get("deliver.spool.lost", 0)
    if lost:
        reasons.append(f"{lost} call(s) lost: the spool could not be written (names in the log)")
    retrying = snap.counters.get("recorder.retrying", 0)
    if retrying:
        reasons.append(f"recordings not writable: {retrying} call(s) waiting to be rendered again")
    audio_lost = snap.counters.get("recorder.audio_lost", 0)
    if audio_lost:
        reasons.append(f"{audio_lost} call(s) lost their audio: the recording could not be written "
                       "(names in the log)")
    return not reasons, reasons


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9731' / '[::1]:9731' / ':9731' → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"[metrics] listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """Serves /metrics and /health from ``snapshot()`` in a daemon thread."""

    def __init__(self, listen: str, snapshot: Callable[[], Snapshot],
                 limits: Callable[[], HealthLimits]) -> None:
        # Imported here: every command reads [metrics] listen, only the daemon serves it
        # (http.server pulls in email, ssl and http.client: ~15 ms of every CLI start).
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = parse_listen(listen)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                try:
                    snap = outer.snapshot()
                except Exception:                    # a metrics bug must not kill the agent
                    log.exception("metrics snapshot failed")
                    self.send_error(500)
                    return
                if path == "/metrics":
                    body = render_metrics(snap).encode()
                    code, ctype = 200, "text/plain; version=0.0.4; charset=utf-8"
                elif path in ("/health", "/healthz"):
                    ok, reasons = health(snap, outer.limits())
                    body = json.dumps({"status": "ok" if ok else "unhealthy", "reasons": reasons}).encode()
                    code, ctype = (200 if ok else 503), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.snapshot = snapshot
        self.limits = limits
        family_server = ThreadingHTTPServer
        if ":" in host:
            import socket

            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            family_server = V6
        self.server = family_server((host, port), Handler)
        self.server.daemon_threads = True
        self.address = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="calln-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

"""Metrics text, health decisions, the HTTP endpoint and check-config."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from agent.metrics import HealthLimits, MetricsServer, Snapshot, health, parse_listen, render_metrics

REPO = Path(__file__).resolve().parents[2]


def _snap(**kw) -> Snapshot:
    base = dict(counters={"capture.frames": 1200, "capture.bytes": 240000, "net.skip.unknown_ethertype": 3,
                          "sip.skip.malformed": 2, "calls.end_reason.bye": 5, "calls.end_reason.rejected:486": 1,
                          "recorder.recordings": 5, "deliver.upload.delivered": 4,
                          "deliver.upload.transient": 2, "deliver.upload.parked": 1},
                active_calls=7, ring_drops=11, kernel_drops=13, render_queue=2,
                spool_states={"ready": 1, "delivered": 4}, spool_oldest_undelivered_s=42.5,
                spool_free_mb=5000.0, seconds_since_packet=0.5)
    base.update(kw)
    return Snapshot(**base)


def test_prometheus_text_has_every_required_series() -> None:
    text = render_metrics(_snap())
    lines = set(text.splitlines())
    for expected in ("calln_packets_total 1200", "calln_bytes_total 240000",
                     'calln_drops_total{kind="kernel"} 13', 'calln_drops_total{kind="ring"} 11',
                     'calln_drops_total{kind="parser"} 5', "calln_active_calls 7",
                     'calln_calls_finished_total{reason="bye"} 5',
                     'calln_calls_finished_total{reason="rejected:486"} 1',
                     "calln_recordings_written_total 5", 'calln_uploads_total{result="delivered"} 4',
                     'calln_uploads_total{result="retried"} 2', 'calln_uploads_total{result="parked"} 1',
                     'calln_spool_calls{state="ready"} 1', "calln_spool_oldest_undelivered_seconds 42.5",
                     "# TYPE calln_packets_total counter", "# TYPE calln_active_calls gauge"):
        assert expected in lines, expected
    assert text.endswith("\n")


def test_health_reasons() -> None:
    limits = HealthLimits(no_packets_s=60, upload_failing_s=600, min_free_mb=1024)
    assert health(_snap(), limits) == (True, [])
    ok, reasons = health(_snap(seconds_since_packet=61, upload_failing_s=601, spool_free_mb=100,
                               capture_alive=False), limits)
    assert not ok
    assert reasons == ["capture process not running", "no packets for 61 s", "uploads failing for 601 s",
                       "spool disk low (100 MB free)"]
    assert health(_snap(seconds_since_packet=10**6), HealthLimits(no_packets_s=0))[0]


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9731") == ("127.0.0.1", 9731)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)


def test_http_endpoint_serves_metrics_and_health() -> None:
    state = {"snap": _snap()}
    server = MetricsServer("127.0.0.1:0", lambda: state["snap"], lambda: HealthLimits(no_packets_s=60))
    server.start()
    try:
        base = f"http://127.0.0.1:{server.address[1]}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert b"calln_active_calls 7" in resp.read()
        with urllib.request.urlopen(base + "/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok", "reasons": []}
        state["snap"] = _snap(seconds_since_packet=120)
        try:
            urllib.request.urlopen(base + "/health", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert json.loads(exc.read())["reasons"] == ["no packets for 120 s"]
    finally:
        server.stop()


def test_check_config_reports_each_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[api]\nurl = "http://insecure.invalid"\n[spool]\ndir = "{tmp_path}/spool"\n'
                   '[capture]\ninterfaces = ["calln-no-such0"]\n')
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(cfg), "check-config"],
                          capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    out = proc.stdout
    assert proc.returncode == 1
    assert "FAIL API credentials missing: [api] username" in out
    assert "FAIL interface calln-no-such0 does not exist" in out
    assert f"OK   spool {tmp_path}/spool writable" in out
    assert "https" in [line for line in out.splitlines() if "API" in line and "FAIL" in line][0]


def test_check_config_passes_on_a_good_config(tmp_path: Path, monkeypatch) -> None:
    from agent import run
    from agent.config import load_config
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[api]\nurl = "https://api.example"\nusername = "u"\n[spool]\ndir = "{tmp_path}/s"\n'
                   '[capture]\ninterfaces = ["lo"]\n')
    monkeypatch.setattr(run, "clock_synchronised", lambda: True)
    results = run.check_config(load_config(cfg, env={"CALLN_PASSWORD": "p"}), ["lo"])
    levels = {msg: level for level, msg in results}
    assert levels["API credentials present (user 'u')"] == "ok"
    assert levels["interface lo exists"] == "ok"
    assert levels["system clock synchronised (NTP)"] == "ok"
    import os
    if os.geteuid() == 0:
        assert [r for r in results if r[0] == "fail"] == []


def test_example_config_documents_every_key() -> None:
    import dataclasses
    import tomllib
    from agent.config import Config, load_config
    path = REPO / "deploy" / "agent.example.toml"
    text = path.read_text()
    raw = tomllib.loads(text)
    for section in dataclasses.fields(Config):
        keys = {f.name for f in dataclasses.fields(section.default_factory())} - {"password"}
        present = set(raw.get(section.name, {}))
        commented = {k for k in keys if f"# {k} =" in text}
        assert keys <= present | commented, (section.name, keys - present - commented)
    config = load_config(path, env={})
    assert config.metrics.listen == "127.0.0.1:9731"

"""A certificate that does not verify is a configuration fault (issue 14 item 9): uploads
stop at once, an ERROR names the CA problem, /health and check-config report it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent import run
from agent.config import load_config
from agent.deliver.client import probe_tls
from agent.deliver.spool import Spool
from agent.deliver.uploader import Uploader
from agent.errors import ConfigError
from agent.metrics import HealthLimits, Snapshot, health, render_metrics
from agent.receiver import ensure_certificates
from deliver_helpers import FakeTime, api_for, make_audio, make_record


def _other_ca(tmp_path: Path) -> str:
    ca, _, _ = ensure_certificates(tmp_path / "other-ca")
    return str(ca)


def test_wrong_ca_stops_uploads_with_an_error_naming_the_ca(tmp_path: Path, receiver, caplog) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        audio, _ = make_audio(tmp_path, i, 3000)
        spool.enqueue(make_record(i), audio, "audio/mpeg")
    wrong_ca = _other_ca(tmp_path)
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver, ca_bundle=wrong_ca), clock=ft.clock, sleep=ft.sleep)
    with caplog.at_level(logging.ERROR, logger="agent.deliver"):
        assert not up.run_until_idle(deadline_s=24 * 3600)   # stops: nothing to wait for
    up.close()
    assert ft.slept == 0                                     # not retried as a transient fault
    assert receiver.stats.get("created", 0) == 0 and spool.pending_count() == 3
    assert up.counters["deliver.upload.tls_error"] == 1
    assert up.counters["deliver.upload.transient"] == 0
    [err] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "certificate verify failed" in err.getMessage() and wrong_ca in err.getMessage()
    snap = Snapshot(counters=dict(up.counters), upload_problems=tuple(up.problems()))
    ok, reasons = health(snap, HealthLimits())
    assert not ok and "ca_bundle" in reasons[0]
    assert 'calln_upload_faults_total{kind="tls"} 1' in render_metrics(snap)


def test_system_trust_store_named_when_no_bundle_is_set(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    audio, _ = make_audio(tmp_path, 0, 100)
    spool.enqueue(make_record(0), audio, "audio/mpeg")
    up = Uploader(spool, api_for(receiver, ca_bundle=""))
    assert not up.run_until_idle(deadline_s=60)
    up.close()
    assert "system trust store" in up.config_error


def test_unloadable_ca_bundle_refused_at_start(tmp_path: Path, receiver) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for bundle in (str(junk), str(tmp_path / "missing.pem")):
        with pytest.raises(ConfigError, match="ca_bundle"):
            Uploader(Spool(tmp_path / "spool"), api_for(receiver, ca_bundle=bundle))


def test_probe_tls_for_check_config(tmp_path: Path, receiver) -> None:
    level, msg = probe_tls(receiver.url, str(receiver.ca_path))
    assert level == "ok" and "verified" in msg
    level, msg = probe_tls(receiver.url, _other_ca(tmp_path))
    assert level == "fail" and "certificate verify failed" in msg and "ca_bundle" in msg
    level, msg = probe_tls("https://127.0.0.1:1", str(receiver.ca_path), timeout_s=1)
    assert level == "warn" and "cannot reach" in msg


def test_check_config_fails_on_a_wrong_ca(tmp_path: Path, receiver) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[api]\nurl = "{receiver.url}"\nusername = "agent"\nca_bundle = "{_other_ca(tmp_path)}"\n'
                   f'[spool]\ndir = "{tmp_path}/s"\n')
    results = run.check_config(load_config(cfg, env={"CALLN_PASSWORD": "secret"}), ["lo"])
    [tls] = [(level, msg) for level, msg in results if "TLS" in msg]
    assert tls[0] == "fail" and "certificate verify failed" in tls[1]

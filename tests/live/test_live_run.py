"""``calln-agent run`` end to end on a veth pair: a capture is replayed into one end at its
own pace, the agent captures on the other and delivers to a local receiver on loopback."""

from __future__ import annotations

import io
import json
import signal
import socket
import time
import urllib.request
import wave
from pathlib import Path

import pytest

from agent.receiver import ReceiverServer

from _live_testlib import (PCAPS, AgentProcess, paced_by_timestamp, pcap_frames, require_root_netns,
                           send_frames, veth_pair, write_config)

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spooled_records(spool: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((spool / "calls").glob("*/record.json"))]


def _wav_seconds(audio: bytes) -> float:
    with wave.open(io.BytesIO(audio)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture
def receiver(tmp_path: Path):
    rx = ReceiverServer(tmp_path / "received", username="agent", password="secret")
    url, ca = rx.start()
    try:
        yield rx, url, ca
    finally:
        rx.stop()


def test_live_call_is_delivered_with_metrics(tmp_path: Path, receiver) -> None:
    require_root_netns()
    rx, url, ca = receiver
    port = _free_port()
    cfg = write_config(tmp_path / "agent.toml", url=url, ca=ca, spool=tmp_path / "spool")
    records = pcap_frames(PCAPS / "sipp_g711a.pcap")
    with veth_pair() as (a, b):
        agent = AgentProcess(cfg, [b], tmp_path / "agent.log", "--metrics-listen", f"127.0.0.1:{port}")
        try:
            agent.wait_ready()
            send_frames(a, paced_by_timestamp(records))
            time.sleep(1.5)                                    # one stats report
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                metrics = resp.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                healthy = json.loads(resp.read())
        finally:
            status = agent.stop()
    log = agent.log_text()
    assert status == 0, log
    assert f"calln_packets_total {len(records)}" in metrics
    assert 'calln_drops_total{kind="ring"} 0' in metrics
    assert healthy == {"status": "ok", "reasons": []}
    calls = rx.stored_calls()
    assert len(calls) == 1, log
    m = calls[0].meta
    assert (m["callerphone"], m["destinationphone"]) == ("sipp", "service")
    assert (m["callermacaddress"], m["destinationmacaddress"]) == ("02000A4D0001", "02000A4D0002")
    assert (m["callermediaendpoint"], m["destinationmediaendpoint"]) == ("10.77.0.1:6000", "10.77.0.2:6000")
    assert m["callerdtmf"] == "1"
    assert 6.5 <= _wav_seconds(calls[0].audio) <= 8.5
    (rec,) = _spooled_records(tmp_path / "spool")
    assert rec["end_reason"] == "bye"
    assert "call ended callid=1-14692@10.77.0.1 caller=sipp callee=service answered=True reason=bye" in log
    assert "secret" not in log


def test_sigterm_mid_call_spools_and_delivers_it_as_shutdown(tmp_path: Path, receiver) -> None:
    require_root_netns()
    rx, url, ca = receiver
    cfg = write_config(tmp_path / "agent.toml", url=url, ca=ca, spool=tmp_path / "spool")
    records = pcap_frames(PCAPS / "sipp_g711a.pcap")
    half = records[: len(records) // 2]                      # INVITE .. ACK and ~3 s of RTP
    with veth_pair() as (a, b):
        agent = AgentProcess(cfg, [b], tmp_path / "agent.log")
        try:
            agent.wait_ready()
            send_frames(a, paced_by_timestamp(half, speed=2.0))
            time.sleep(0.5)
            started = time.monotonic()
        finally:
            status = agent.stop()
    log = agent.log_text()
    assert status == 0, log
    assert time.monotonic() - started < 30
    (rec,) = _spooled_records(tmp_path / "spool")
    assert rec["end_reason"] == "shutdown" and rec["answered"]
    calls = rx.stored_calls()
    assert len(calls) == 1, log
    assert calls[0].meta["callerphone"] == "sipp"
    assert _wav_seconds(calls[0].audio) > 1.0


def test_quiet_tap_still_ends_a_call_without_bye(tmp_path: Path, receiver) -> None:
    require_root_netns()
    rx, url, ca = receiver
    cfg = write_config(tmp_path / "agent.toml", url=url, ca=ca, spool=tmp_path / "spool",
                       extra="[sip]\nrtp_timeout_s = 2.0\n")
    records = pcap_frames(PCAPS / "no_bye.pcap")
    with veth_pair() as (a, b):
        agent = AgentProcess(cfg, [b], tmp_path / "agent.log")
        try:
            agent.wait_ready()
            send_frames(a, paced_by_timestamp(records, speed=4.0))
            deadline = time.monotonic() + 15
            while "reason=rtp_timeout" not in agent.log_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            ended_before_stop = "reason=rtp_timeout" in agent.log_text()
        finally:
            status = agent.stop()
    assert status == 0
    assert ended_before_stop, agent.log_text()


def test_sighup_applies_fixed_credentials_and_names_restart_keys(tmp_path: Path, receiver) -> None:
    """SIGHUP reloads what is safe: a call spooled while the API refused the credentials
    (401) is delivered once the corrected [api] section is reloaded; a changed [capture] key is
    reported as needing a restart."""
    require_root_netns()
    rx, url, ca = receiver
    cfg = write_config(tmp_path / "agent.toml", url=url, ca=ca, spool=tmp_path / "spool")
    good = cfg.read_text()
    cfg.write_text(good.replace('username = "agent"', 'username = "wrong"'))
    records = pcap_frames(PCAPS / "sipp_g711a.pcap")
    with veth_pair() as (a, b):
        agent = AgentProcess(cfg, [b], tmp_path / "agent.log")
        try:
            agent.wait_ready()
            send_frames(a, paced_by_timestamp(records, speed=4.0))
            deadline = time.monotonic() + 60
            while not _spooled_records(tmp_path / "spool") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _spooled_records(tmp_path / "spool"), agent.log_text()
            time.sleep(2.0)                          # the uploader tries and gets 401
            assert rx.stored_calls() == []
            cfg.write_text(good.replace("buffer_mb = 16", "buffer_mb = 32"))
            agent.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while not rx.stored_calls() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            status = agent.stop()
    log = agent.log_text()
    assert status == 0, log
    calls = rx.stored_calls()
    assert len(calls) == 1, log
    assert calls[0].meta["callerphone"] == "sipp"
    assert "configuration reloaded" in log
    assert "capture.buffer_mb" in log and "need a restart" in log

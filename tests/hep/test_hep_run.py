"""`calln-agent run` with a HEP listener and no capture interface (a valid deployment: a cloud
PBX with no SPAN port): the call of pcaps/hep_basic_udp.pcap, sent live over UDP with an auth
key, is delivered to a local receiver, with the audio of its SPAN twin sample for sample."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.net.hep import encode_hep3, parse_hep3, to_datagram
from agent.receiver import ReceiverServer
from tests.conftest import PCAPS, REPO
from tests.hep.test_hep_listener import _hep_messages
from tests.live._live_testlib import AgentProcess, write_config

pytestmark = pytest.mark.slow            # a whole agent: supervisor, capture process, workers

KEY = "hep-k3y-not-in-logs"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keyed_messages_now() -> list[bytes]:
    """The capture's HEP messages re-sent as a live sender would: capture times moved to now
    (the engine's idle clock follows the wall clock), the auth key added."""
    c = Counter()
    dgrams = [to_datagram(parse_hep3(m, c), c, fallback_ts_ns=0) for m in _hep_messages()]
    shift_ns = (time.time_ns() - dgrams[-1].ts_ns) // 1000 * 1000 - 1_000_000_000
    return [encode_hep3(src_ip=d.src_ip, dst_ip=d.dst_ip, src_port=d.src_port, dst_port=d.dst_port,
                        ts_ns=d.ts_ns + shift_ns, payload=d.payload, auth_key=KEY.encode(),
                        proto_type=1 if 5060 in (d.src_port, d.dst_port) else 4)
            for d in dgrams]


def _pcm(wav_bytes: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_run_with_only_a_hep_listener_delivers_the_span_twin(tmp_path: Path, monkeypatch):
    rx = ReceiverServer(tmp_path / "received", username="agent", password="secret")
    url, ca = rx.start()
    port = _free_udp_port()
    cfg = write_config(tmp_path / "agent.toml", url=url, ca=ca, spool=tmp_path / "spool")
    cfg.write_text(cfg.read_text().replace("[capture]\n", f'[capture]\nhep = "udp:127.0.0.1:{port}"\n'))
    monkeypatch.setenv("CALLN_HEP_AUTH_KEY", KEY)
    try:
        agent = AgentProcess(cfg, [], tmp_path / "agent.log")
        try:
            agent.wait_ready()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i, m in enumerate(_keyed_messages_now()):
                    s.sendto(m, ("127.0.0.1", port))
                    if i % 50 == 49:
                        time.sleep(0.01)          # loopback: no need to pace, only not to overrun
                s.sendto(b"HEP3\x00\x06", ("127.0.0.1", port))     # malformed: counted, skipped
            deadline = time.monotonic() + 60
            while not rx.stored_calls() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            status = agent.stop()
        calls = rx.stored_calls()
    finally:
        rx.stop()
    log = agent.log_text()
    assert status == 0, log
    assert "capturing on hep udp:127.0.0.1:" in log
    assert KEY not in log
    assert len(calls) == 1, log
    m = calls[0].meta
    assert (m["callerphone"], m["destinationphone"]) == ("1001", "1002")
    assert (m["callermediaendpoint"], m["destinationmediaendpoint"]) == ("10.0.0.10:40000", "10.0.0.20:50000")
    assert m["callermacaddress"] == m["destinationmacaddress"] == ""

    out = tmp_path / "span"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_")}
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(cfg), "replay", "-q",
                           "--out", str(out), "--format", "wav", "--workers", "1",
                           str(PCAPS / "basic_udp.pcap")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (span_wav,) = out.glob("*.wav")
    got, want = _pcm(calls[0].audio), _pcm(span_wav.read_bytes())
    assert len(want) > 8000 * 2                          # > 2 s of audio
    assert np.array_equal(got, want)

"""Start-up with a full spool is race-free: the daemon restarted 20 times (SIGTERM or
SIGKILL) with calls queued, more enqueued beside it and uploads in flight, never crashes,
and every call arrives exactly once. (It once died within a second: the capture process's
spool set-up re-saved the state of a call the uploader had just delivered and deleted.)"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import pytest

from agent.deliver.spool import Spool
from agent.receiver import Faults, ReceiverServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deliver"))
from _live_testlib import AgentProcess, require_root_netns, veth_pair, write_config  # noqa: E402
from deliver_helpers import make_audio, make_record  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.slow]

RESTARTS = 20


def test_restart_with_calls_queued_and_uploads_in_flight(tmp_path: Path) -> None:
    require_root_netns()
    rng = random.Random(5)
    rx = ReceiverServer(tmp_path / "rx", cert_dir=tmp_path / "certs", username="agent", password="secret",
                        seed=3, faults=Faults(slow_ms=15))
    url, ca = rx.start()
    spool_dir = tmp_path / "spool"
    cfg = write_config(tmp_path / "agent.toml", url=url, ca=ca, spool=spool_dir)
    # a short shutdown so a SIGTERM leaves uploads unfinished; 0 retention: delivered calls are
    # deleted at once (the deletion is what the old start-up raced with)
    text = cfg.read_text().replace("shutdown_timeout_s = 60", "shutdown_timeout_s = 1")
    cfg.write_text(text.replace("retention_days = 1", "retention_days = 0").replace(
        "chunk_bytes = 65536", "chunk_bytes = 4096"))
    expected: dict[str, bytes] = {}
    next_i = 0

    def enqueue(n: int) -> None:
        nonlocal next_i
        spool = Spool(spool_dir, retention_days=0, recover=False)     # beside the daemon, as capture does
        for _ in range(n):
            path, data = make_audio(tmp_path, next_i, rng.choice([3000, 9000, 20000]))
            assert spool.enqueue(make_record(next_i), path, "audio/mpeg")
            expected[make_record(next_i)["callerphone"]] = data
            next_i += 1

    enqueue(27)
    kills = terms = 0
    try:
        with veth_pair() as (_a, b):
            for i in range(RESTARTS):
                agent = AgentProcess(cfg, [b], tmp_path / f"agent{i}.log")
                try:
                    agent.wait_ready()
                    enqueue(rng.randint(1, 3))
                    time.sleep(rng.uniform(0.1, 0.8))          # uploads in flight
                    assert agent.proc.poll() is None, agent.log_text()
                finally:
                    if rng.random() < 0.5:
                        agent.kill()
                        kills += 1
                    else:
                        assert agent.stop(60) == 0, agent.log_text()
                        terms += 1
                log = agent.log_text()
                assert "Traceback" not in log and "capture process died" not in log, log
            agent = AgentProcess(cfg, [b], tmp_path / "final.log")
            try:
                agent.wait_ready()
                deadline = time.monotonic() + 120
                while Spool(spool_dir, recover=False).pending_count() and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                assert agent.stop(60) == 0, agent.log_text()
    finally:
        rx.stop()
    stored = rx.stored_calls()
    phones = sorted(c.meta["callerphone"] for c in stored)
    print(f"restarts: {RESTARTS} ({kills} SIGKILL, {terms} SIGTERM), calls: {len(expected)}, "
          f"stored: {len(stored)}, distinct: {len(set(phones))}")
    assert phones == sorted(expected), "every call stored exactly once"
    assert all(c.audio == expected[c.meta["callerphone"]] for c in stored)

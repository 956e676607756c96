"""Crash safety: the uploader killed with SIGKILL anywhere, restarted, again and again.

Every call must be stored by the receiver exactly once, with its exact bytes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.deliver.spool import DELIVERED, DELIVERED_UNCONFIRMED, Spool
from agent.receiver import Faults, ReceiverServer
from deliver_helpers import make_audio, make_record

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("deliver_crash_worker.py")
POINTS = ["after_create_response", "after_create_state", "after_last_chunk_flag", "before_chunk",
          "after_chunk_response", "after_last_chunk_response", "after_delivered"]


def _start(spool_dir: Path, rx: ReceiverServer, kill_at: str | None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CALLN_TEST_KILL_AT", None)
    if kill_at:
        env["CALLN_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, str(WORKER), str(spool_dir), rx.url, str(rx.ca_path)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_anywhere_every_call_stored_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(20240501)
    rx = ReceiverServer(tmp_path / "rx", password="secret", seed=7,
                        faults=Faults(slow_ms=4, fail_rate=0.05, drop_rate=0.05))
    rx.start()
    spool_dir = tmp_path / "spool"
    expected: dict[str, bytes] = {}
    next_i = 0

    def add_calls(n: int) -> None:
        nonlocal next_i
        spool = Spool(spool_dir, retention_days=1.0)
        for _ in range(n):
            size = rng.choice([100, 4096, 9000, 4 * 4096 + 5])
            path, data = make_audio(tmp_path, next_i, size)
            assert spool.enqueue(make_record(next_i), path, "audio/mpeg")
            expected[make_record(next_i)["callerphone"]] = data
            next_i += 1

    add_calls(6)
    kills = 0
    hook_kills = {p: 0 for p in POINTS}
    try:
        for it in range(40):
            if kills >= 22:
                break
            if Spool(spool_dir, retention_days=1.0).pending_count() == 0:
                add_calls(3)
            if it < 2 * len(POINTS) or (it >= 22 and it % 2):
                # named points first (each twice, in order), so the crucial ones are always hit
                point = POINTS[it % len(POINTS)] if it < 2 * len(POINTS) else rng.choice(POINTS)
                count = 1 if point == "after_last_chunk_response" else rng.randint(1, 3)
                proc = _start(spool_dir, rx, f"{point}:{count}")
            else:
                point = None
                proc = _start(spool_dir, rx, None)
                time.sleep(rng.uniform(0.3, 0.8))  # lands anywhere: start-up, mid-request, fsync
                proc.send_signal(signal.SIGKILL)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                if point:
                    hook_kills[point] += 1
            else:
                assert proc.returncode == 0, err.decode()
        assert kills >= 20
        assert hook_kills["after_last_chunk_response"] >= 2, (hook_kills, kills, it)
        # Final run without kills: everything completes.
        proc = _start(spool_dir, rx, None)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    finally:
        rx.stop()

    stored = rx.stored_calls()
    phones = sorted(c.meta["callerphone"] for c in stored)
    assert phones == sorted(expected), "every call stored exactly once"
    for c in stored:
        assert c.audio == expected[c.meta["callerphone"]]
    states = Spool(spool_dir, retention_days=1.0).summary()
    assert set(states) <= {DELIVERED, DELIVERED_UNCONFIRMED}
    assert sum(states.values()) == len(expected)
    # a kill between the last chunk's 200 and the state write ends as "unconfirmed"
    assert states.get(DELIVERED_UNCONFIRMED, 0) >= 1

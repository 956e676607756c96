"""Local I/O faults while uploading (issue 14 item 4): a spool write that fails with ENOSPC
backs off like any other fault, is counted and reported, never kills the upload thread,
never spins, and never stores a call twice. The OSError is injected at the spool's write
seam (``spool_files.write_atomic``), so state, back-off and ledger writes all fail as on a full disk.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from agent.deliver import spool_files
from agent.deliver.spool import DELIVERED, DELIVERED_UNCONFIRMED, Spool
from agent.deliver.uploader import Uploader
from agent.metrics import HealthLimits, Snapshot, health, render_metrics
from deliver_helpers import FakeTime, api_for, make_audio, make_record


class FullDisk:
    """``write_atomic`` that fails with ENOSPC while ``full`` (for paths matching ``where``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str = "") -> None:
        self.full = False
        self.refused = 0
        self.where = where
        real = spool_files.write_atomic

        def write_atomic(path: Path, data: bytes, **how: bool) -> None:
            if self.full and self.where in str(path):
                self.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real(path, data, **how)
        monkeypatch.setattr(spool_files, "write_atomic", write_atomic)


def _one_call(tmp_path: Path, size: int = 2 * 4096) -> tuple[Spool, str, bytes]:
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    audio, data = make_audio(tmp_path, 0, size)
    return spool, spool.enqueue(make_record(0), audio, "audio/mpeg"), data


def test_state_save_after_post_fails_backs_off_then_delivers_once(
        tmp_path: Path, receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch)
    spool, call_id, data = _one_call(tmp_path)
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, rng=lambda: 0.5)
    state = spool.state_of(call_id)
    state.update(total_chunks=2, chunk_bytes=4096, audio_size=len(data), gzip=False)
    spool.save_state(state)                       # the chunk plan is on disk; then the disk fills
    disk.full = True
    assert not up.run_until_idle(deadline_s=3600)  # one hour of a full disk
    posts_while_full = receiver.stats["created"]
    # Exponential back-off, 1 s doubling to 300 s: about 9 POSTs in the first 511 s, then
    # one per 300 s. Before the fix: 7 POSTs in one second, on and on.
    assert 15 <= posts_while_full <= 20
    assert up.counters["deliver.upload.local_io_error"] >= posts_while_full
    snap = Snapshot(counters=dict(up.counters), upload_problems=tuple(up.problems()))
    ok, reasons = health(snap, HealthLimits())
    assert not ok and any("ENOSPC" in r for r in reasons)
    assert 'calln_upload_faults_total{kind="local_io"}' in render_metrics(snap)
    assert receiver.stored_calls() == []
    disk.full = False
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    [stored] = receiver.stored_calls()
    assert stored.audio == data
    assert spool.get(call_id).state == DELIVERED
    assert up.problems() == []


def test_ledger_full_after_the_last_chunk_never_uploads_twice(
        tmp_path: Path, receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stored the call; marking it delivered fails. The re-send gets 404."""
    disk = FullDisk(monkeypatch, where="/ledger/")
    spool, call_id, data = _one_call(tmp_path)
    disk.full = True
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, rng=lambda: 0.5)
    assert up.run_once()
    assert disk.refused == 1 and len(receiver.stored_calls()) == 1
    disk.full = False
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    [stored] = receiver.stored_calls()
    assert stored.audio == data
    assert spool.get(call_id).state == DELIVERED_UNCONFIRMED
    assert receiver.stats["created"] == 1


def test_upload_thread_survives_a_full_disk_without_spinning(
        tmp_path: Path, receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch)
    spool, call_id, data = _one_call(tmp_path)
    state = spool.state_of(call_id)
    state.update(total_chunks=2, chunk_bytes=4096, audio_size=len(data), gzip=False)
    spool.save_state(state)
    disk.full = True
    up = Uploader(spool, api_for(receiver), rng=lambda: 0.5, backoff_base_s=1.0, poll_s=0.05)
    up.start_thread()
    try:
        time.sleep(1.5)                          # real time: retries at 0 s and 1 s, then 3 s
        assert receiver.stats["created"] <= 2
        assert all(t.is_alive() for t in up._threads)
        assert any("ENOSPC" in p for p in up.problems())
        disk.full = False
        deadline = time.monotonic() + 15
        while not receiver.stored_calls() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        up.stop()
    [stored] = receiver.stored_calls()
    assert stored.audio == data
    assert up.counters["deliver.upload.worker_error"] == 0
    assert threading.active_count() < 50


def test_spool_upkeep_failing_is_reported_not_raised(tmp_path: Path, receiver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO while the uploader rescans the spool: replay --deliver must not die of it."""
    spool, call_id, data = _one_call(tmp_path)
    failing = {"on": True}
    real_refresh = spool.refresh

    def refresh(**kw: object) -> None:
        if failing["on"]:
            raise OSError(errno.EIO, "Input/output error", str(spool.calls_dir))
        real_refresh(**kw)
    monkeypatch.setattr(spool, "refresh", refresh)
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    up.run_once()                          # the call is delivered; the rescan after it fails
    assert not up.run_once()
    assert any(p.startswith("spool upkeep failing: EIO") for p in up.problems())
    assert up.counters["deliver.upload.local_io_error"] >= 1
    failing["on"] = False
    assert up.run_until_idle(deadline_s=60)
    up.close()
    assert up.problems() == []
    [stored] = receiver.stored_calls()
    assert stored.audio == data and spool.get(call_id).state == DELIVERED

"""Every half-done step of the spool, killed at deterministically (CALLN_TEST_KILL_AT), is
completed at the next start in the direction that keeps the call: the call is then stored
by the receiver exactly once, and enqueueing it again (a replay run again) is a duplicate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.deliver.spool import (DELIVERED, PARKED, READY, SKIPPED_UNANSWERED, Incoming, Spool, call_key)
from agent.deliver.uploader import Uploader
from deliver_helpers import api_for, make_audio, make_record

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("deliver_crash_worker.py")


def _run(*args: str, kill_at: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CALLN_TEST_KILL_AT", None)
    if kill_at:
        env["CALLN_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(WORKER), *args], env=env, cwd=ROOT,
                          capture_output=True, timeout=60)


def _ledger_line(spool: Spool, record: dict) -> str:
    return spool.ledger.path(call_key(record)).read_text().split()[0]


def _deliver(spool: Spool, rx) -> None:
    up = Uploader(spool, api_for(rx), backoff_base_s=0.01, backoff_max_s=0.05, poll_s=0.01)
    assert up.run_until_idle(deadline_s=30)
    up.close()


# (kill point, what the crash left, answered)
ENQUEUE_WINDOWS = [
    ("spool_audio_moved", "tmp/<id> with record and audio, no state, no claim", True),
    ("spool_tmp_written", "complete tmp/<id>, no claim", True),
    ("spool_claimed", "claim 'queued <id>' without publish", True),
    ("spool_published", "published, ledger still 'queued'", True),
    ("spool_published", "skipped call published, ledger still 'queued'", False),
]


@pytest.mark.parametrize("point,left,answered", ENQUEUE_WINDOWS, ids=[f"{p}-{a}" for p, _, a in ENQUEUE_WINDOWS])
def test_kill_during_enqueue_keeps_the_call(tmp_path: Path, receiver, point, left, answered) -> None:
    spool_dir = tmp_path / "spool"
    audio, data = make_audio(tmp_path, 1, 9000)
    args = ["enqueue", str(spool_dir), str(audio), "1"] + ([] if answered else ["unanswered"])
    proc = _run(*args, kill_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not audio.exists()                     # the recording is inside the spool now
    if point != "spool_published":
        assert list((spool_dir / "tmp").iterdir()) and not list((spool_dir / "calls").iterdir()), left

    spool = Spool(spool_dir, retention_days=1.0)  # start-up recovery
    record = make_record(1, answered=answered)
    assert not list((spool_dir / "tmp").iterdir())
    [entry] = spool.list()
    assert entry.state == (READY if answered else SKIPPED_UNANSWERED)
    assert _ledger_line(spool, record) == ("queued" if answered else "skipped")
    again, _ = make_audio(tmp_path, 2, 100)
    assert spool.enqueue(record, again, "audio/mpeg") is None       # a replay: duplicate
    if answered:
        assert (entry.audio_path.stat().st_mode & 0o777) == 0o600
        _deliver(spool, receiver)
        [stored] = receiver.stored_calls()
        assert stored.audio == data and stored.meta["callerphone"] == record["callerphone"]
        assert spool.summary() == {DELIVERED: 1}
        assert spool.counters["deliver.spool.recovered_publish"] == (point != "spool_published")


# A batch of three calls (Spool.enqueue_many: built, synced, claimed, published together),
# killed at (point, pass): what the crash left, and which calls it had taken in.
BATCH_WINDOWS = [
    ("spool_audio_moved", 2, "call 0 complete, call 1 without its state, call 2 untouched", 2),
    ("spool_tmp_written", 1, "three complete tmp/ entries, no claim", 3),
    ("spool_claimed", 1, "three claims, nothing published", 3),
    ("spool_published", 2, "calls 0 and 1 published, call 2 claimed in tmp/", 3),
]


@pytest.mark.parametrize("point,n,left,taken", BATCH_WINDOWS, ids=[f"{p}:{n}" for p, n, _, _ in BATCH_WINDOWS])
def test_kill_during_a_batch_enqueue_keeps_every_call(tmp_path: Path, receiver, point, n, left, taken) -> None:
    spool_dir = tmp_path / "spool"
    audio = [make_audio(tmp_path, i, 5000 + i) for i in range(3)]
    proc = _run("enqueue-batch", str(spool_dir), *(str(path) for path, _ in audio), kill_at=f"{point}:{n}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [path.exists() for path, _ in audio] == [i >= taken for i in range(3)], left

    spool = Spool(spool_dir, retention_days=1.0)  # start-up recovery
    assert not list((spool_dir / "tmp").iterdir())
    assert [e.state for e in spool.list()] == [READY] * taken, left
    records = [make_record(i) for i in range(3)]
    assert all(_ledger_line(spool, r) == "queued" for r in records[:taken])
    # The caller enqueues again what it still holds (a replay run again: every call): the calls
    # the spool took in are duplicates, the others go in now.
    again = [Incoming(r, path if path.exists() else make_audio(tmp_path, 10 + i, 100)[0], "audio/mpeg")
             for i, (r, (path, _)) in enumerate(zip(records, audio))]
    done, error = spool.enqueue_many(again)
    assert error is None and [d is None for d in done] == [i < taken for i in range(3)]
    _deliver(spool, receiver)
    assert sorted(c.audio for c in receiver.stored_calls()) == sorted(data for _, data in audio)
    assert spool.counters["deliver.spool.recovered_publish"] == (taken - (point == "spool_published") * 2)


@pytest.mark.parametrize("point", ["spool_ledger_delivered", "spool_delete_renamed"])
def test_kill_while_finishing_a_delivery_stores_once(tmp_path: Path, receiver, point) -> None:
    spool_dir = tmp_path / "spool"
    audio, data = make_audio(tmp_path, 1, 9000)
    record = make_record(1)
    Spool(spool_dir).enqueue(record, audio, "audio/mpeg")
    proc = _run(str(spool_dir), receiver.url, str(receiver.ca_path), "0", kill_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    spool = Spool(spool_dir, retention_days=0.0)
    assert spool.list() == [] and not list((spool_dir / "tmp").iterdir())
    assert _ledger_line(spool, record) == "delivered"
    _deliver(spool, receiver)
    assert [c.audio for c in receiver.stored_calls()] == [data]
    assert spool.enqueue(record, make_audio(tmp_path, 2, 100)[0], "audio/mpeg") is None


def test_published_call_without_state_is_rebuilt_ready(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    audio, data = make_audio(tmp_path, 1, 5000)
    call_id = spool.enqueue(make_record(1), audio, "audio/mpeg")
    (spool.calls_dir / call_id / "state.json").unlink()
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    assert spool.get(call_id).state == READY
    _deliver(spool, receiver)
    assert [c.audio for c in receiver.stored_calls()] == [data]


def test_unreadable_state_is_parked_for_the_operator(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    call_id = spool.enqueue(make_record(1), make_audio(tmp_path, 1, 5000)[0], "audio/mpeg")
    (spool.calls_dir / call_id / "state.json").write_bytes(b"\x00garbage")
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    entry = spool.get(call_id)
    assert (entry.state, entry.reason) == (PARKED, "state_unreadable")
    spool.retry(call_id)
    assert spool.get(call_id).state == READY


def test_state_without_ledger_entry_is_claimed_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    record = make_record(1)
    spool.enqueue(record, make_audio(tmp_path, 1, 5000)[0], "audio/mpeg")
    spool.ledger.path(call_key(record)).unlink()
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    assert _ledger_line(spool, record) == "queued"
    assert spool.counters["deliver.spool.ledger_repaired"] == 1
    assert spool.enqueue(record, make_audio(tmp_path, 2, 100)[0], "audio/mpeg") is None


def test_an_enqueue_in_progress_is_left_alone_by_recovery(tmp_path: Path) -> None:
    """Recovery in another process must not publish or remove a call still being built."""
    import fcntl
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    work = spool.tmp_dir / "0000000000000001-abcdabcd"
    work.mkdir()
    (work / "record.json").write_text('{"callid": "x", "answered": true}')
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # flock locks are per open file: a second open in this process conflicts like another process
        Spool(tmp_path / "spool", retention_days=1.0)
        assert work.exists() and not list(spool.calls_dir.iterdir())
    finally:
        os.close(fd)


def test_working_areas_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A killed replay's media logs must not be appended to by the next run (a 3 s call came
    out as a one-hour recording) nor left on disk."""
    from agent.delivery import private_workdir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "work" / f"replay-{dead.pid}" / "media"
    stale.mkdir(parents=True)
    (stale / "call.media").write_bytes(b"old audio")
    mine = private_workdir(tmp_path, "replay")
    assert mine == tmp_path / "work" / f"replay-{os.getpid()}"
    assert not stale.parent.exists()
    mine.mkdir()
    assert private_workdir(tmp_path, "capture").parent == mine.parent and mine.exists()

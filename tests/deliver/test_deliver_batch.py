"""Calls spooled in batches (``Spool.enqueue_many``, ``SpoolSink.put_many``, ``SpoolHandoff``):
one fsync of calls/ per batch, a disk fault part-way keeps the calls before it and gives the
others back untouched, and every call handed off is passed on exactly once. The crash
windows of a batch are in test_deliver_windows.py."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest

from agent.config import Config
from agent.deliver import spool_files
from agent.deliver.spool import READY, Incoming, Spool
from agent.delivery import SpoolSink
from agent.recorder import Rendered
from agent.spool_handoff import SpoolHandoff
from deliver_helpers import make_audio, make_record


def _calls(tmp_path: Path, n: int) -> list[tuple[Incoming, bytes]]:
    out = []
    for i in range(n):
        path, data = make_audio(tmp_path, i, 1000 + i)
        out.append((Incoming(make_record(i), path, "audio/mpeg"), data))
    return out


def test_a_batch_fsyncs_the_calls_directory_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    synced: list[Path] = []
    real = spool_files.fsync_dir
    monkeypatch.setattr(spool_files, "fsync_dir", lambda p: (synced.append(Path(p)), real(p))[1])
    calls = _calls(tmp_path, 20)
    done, error = spool.enqueue_many([c for c, _ in calls])
    assert error is None and len(done) == 20 and all(done)
    assert synced.count(spool.calls_dir) == 1                      # one enqueue at a time: 20
    assert len([p for p in synced if p.parent == spool.tmp_dir]) == 20   # each call's own directory
    assert {e.record["callid"]: (e.state, e.audio_path.read_bytes()) for e in spool.list()} == {
        c.record["callid"]: (READY, data) for c, data in calls}
    again, _ = spool.enqueue_many([c for c, _ in _calls(tmp_path, 20)])
    assert again == [None] * 20                                    # every key claimed


def test_a_disk_fault_part_way_keeps_the_calls_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    real = spool_files.write_atomic
    written = []

    def write_atomic(path: Path, data: bytes, **how: bool) -> None:
        if path.name == "record.json":
            written.append(path)
            if len(written) == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data, **how)
    monkeypatch.setattr(spool_files, "write_atomic", write_atomic)
    calls = _calls(tmp_path, 5)
    done, error = spool.enqueue_many([c for c, _ in calls])
    assert len(done) == 2 and all(done) and error is not None and error.errno == errno.ENOSPC
    assert [c.audio_path.exists() for c, _ in calls] == [False, False, True, True, True]
    assert [c.audio_path.read_bytes() for c, _ in calls[2:]] == [data for _, data in calls[2:]]
    assert not list(spool.tmp_dir.iterdir())
    assert sorted(e.record["callid"] for e in spool.list()) == ["call-0@pbx", "call-1@pbx"]
    monkeypatch.setattr(spool_files, "write_atomic", real)
    done, error = spool.enqueue_many([c for c, _ in calls[2:]])    # space again: the rest go in
    assert error is None and all(done) and len(spool.list()) == 5


def test_the_sink_holds_what_a_batch_could_not_spool_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    sink = SpoolSink(spool, Config(), retry_base_s=60)
    refuse = {"call-3@pbx"}
    real = spool.enqueue_many

    def enqueue_many(calls):             # the spool fails at a refused call, as at a full disk
        k = next((i for i, c in enumerate(calls) if c.record["callid"] in refuse), len(calls))
        done, _ = real(calls[:k])
        return done, (OSError(errno.EIO, "I/O error") if k < len(calls) else None)
    monkeypatch.setattr(spool, "enqueue_many", enqueue_many)
    rendered = [Rendered(record=c.record, audio_path=c.audio_path, no_audio_reason="") for c, _ in _calls(tmp_path, 5)]
    sink.put_many(rendered)
    assert sink.enqueued == 3 and sink.held == 2 and spool.counters["deliver.spool.io_error"] == 1
    assert [r.audio_path.exists() for r in rendered] == [False, False, False, True, True]
    refuse.clear()
    assert sink.close(wait_s=1) == [] and sink.enqueued == 5 and len(spool.list()) == 5


def test_the_handoff_passes_every_call_on_once_in_batches(caplog: pytest.LogCaptureFixture) -> None:
    batches: list[list[str]] = []
    passed: list[str] = []
    release = threading.Event()

    def put_many(calls: list[Rendered]) -> None:
        release.wait(5)                  # the first batch is slow: the next calls gather meanwhile
        batches.append([r.record["callid"] for r in calls])
        if "boom" in batches[-1]:
            raise ValueError("a bug")

    handoff = SpoolHandoff(put_many, lambda r: passed.append(r.record["callid"]))
    calls = [Rendered(record=make_record(i, callid=f"c{i}"), audio_path=None, no_audio_reason="") for i in range(5)]
    handoff(calls[0])
    for r in calls[1:]:
        handoff(r)
    release.set()
    caplog.set_level(logging.ERROR, logger="agent.spool_handoff")
    handoff(Rendered(record=make_record(9, callid="boom"), audio_path=None, no_audio_reason=""))
    handoff.close()
    assert [c for b in batches for c in b] == ["c0", "c1", "c2", "c3", "c4", "boom"]
    assert len(batches) < 6                                        # calls queued together, spooled together
    assert passed == ["c0", "c1", "c2", "c3", "c4", "boom"]        # the failed batch too: never stuck
    assert "spooling failed" in caplog.text and "callid=boom" in caplog.text
    with pytest.raises(RuntimeError):
        handoff(calls[0])

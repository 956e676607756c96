"""End to end: spool → uploader → receiver over HTTPS with the generated CA."""

from __future__ import annotations

from pathlib import Path

from agent.deliver.client import API_FIELDS
from agent.deliver.spool import Spool
from agent.deliver.uploader import Uploader
from deliver_helpers import FakeTime, api_for, make_audio, make_record


def test_end_to_end_multiple_chunks(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    expected = {}
    for i, size in enumerate([10_000, 4096, 1, 20_000]):
        path, data = make_audio(tmp_path, i, size)
        rec = make_record(i)
        assert spool.enqueue(rec, path, "audio/mpeg") is not None
        expected[rec["callerphone"]] = (rec, data)
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=60)
    up.close()
    stored = receiver.stored_calls()
    assert sorted(call.meta["callerphone"] for call in stored) == sorted(expected)
    for call in stored:
        rec, data = expected[call.meta["callerphone"]]
        assert call.meta == {k: rec[k] for k in API_FIELDS}
        assert call.audio == data
        assert call.content_type == "audio/mpeg"
    assert spool.counters["deliver.upload.delivered"] == 4
    assert spool.counters["deliver.upload.chunks_sent"] == 3 + 1 + 1 + 5
    assert spool.pending_count() == 0
    assert spool.list() == []  # retention 0: delivered calls are deleted

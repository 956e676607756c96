"""A spool written by the first version still loads and delivers.

The files are laid out by hand exactly as that version wrote them: a flat ledger
(``ledger/<sha256>``, lines without a time or summary), ``state.json`` without the fields
added since (``audio_size``, ``gzip``, ``last_chunk_attempted``, ``backoff``) and records
without the fields added since (``telephonyplatform``, ``upload``, ``leg_of``, ``quality``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.deliver.client import api_fields
from agent.deliver.ledger_view import delivered_calls
from agent.deliver.spool import DELIVERED, PARKED, READY, Spool, call_key
from agent.deliver.uploader import Uploader
from deliver_helpers import FakeTime, api_for, make_record

# The state keys the first version wrote (agent/deliver/spool.py of commit 01a08af).
OLD_STATE_KEYS = ("id", "key", "state", "reason", "tempcallid", "next_chunk", "total_chunks",
                  "chunk_bytes", "restarts", "enqueued_at", "delivered_at", "audio_file", "content_type")


def _old_call(spool_dir: Path, call_id: str, record: dict, audio: bytes | None, state: str,
              reason: str = "", ledger: str = "queued") -> None:
    call_dir = spool_dir / "calls" / call_id
    call_dir.mkdir(parents=True)
    (call_dir / "record.json").write_text(json.dumps(record, sort_keys=True))
    if audio is not None:
        (call_dir / "audio.mp3").write_bytes(audio)
    st = {"id": call_id, "key": call_key(record), "state": state, "reason": reason,
          "tempcallid": None, "next_chunk": 1, "total_chunks": None, "chunk_bytes": None,
          "restarts": 0, "enqueued_at": 1714557700.0, "delivered_at": None,
          "audio_file": "audio.mp3" if audio is not None else None,
          "content_type": "audio/mpeg" if audio is not None else ""}
    assert tuple(st) == OLD_STATE_KEYS
    (call_dir / "state.json").write_text(json.dumps(st, sort_keys=True))
    flat = hashlib.sha256(call_key(record).encode()).hexdigest()
    (spool_dir / "ledger").mkdir(exist_ok=True)
    (spool_dir / "ledger" / flat).write_text(f"{ledger} {call_id}\n")


def test_a_spool_of_the_first_version_loads_and_delivers(tmp_path: Path, receiver) -> None:
    spool_dir = tmp_path / "spool"
    for sub in ("calls", "tmp"):
        (spool_dir / sub).mkdir(parents=True)
    ready_rec, parked_rec, done_rec = make_record(1), make_record(2), make_record(3)
    ready_audio, parked_audio = b"\xff\xfb" + bytes(range(200)) * 20, b"\xff\xfb" + bytes(300)
    _old_call(spool_dir, "0000000000000001-aaaaaaaa", ready_rec, ready_audio, READY)
    _old_call(spool_dir, "0000000000000002-bbbbbbbb", parked_rec, parked_audio, PARKED, "400 bad field")
    _old_call(spool_dir, "0000000000000003-cccccccc", done_rec, ready_audio, DELIVERED, ledger="delivered")

    spool = Spool(spool_dir, retention_days=30.0)

    parked = spool.get("0000000000000002-bbbbbbbb")
    assert (parked.state, parked.reason, parked.record) == (PARKED, "400 bad field", parked_rec)
    assert (parked.raw_state["gzip"], parked.raw_state["last_chunk_attempted"], parked.raw_state["backoff"],
            parked.raw_state["audio_size"]) == (False, False, None, None)
    assert spool.counters["deliver.spool.unreadable_state"] == 0
    assert spool.counters["deliver.spool.ledger_migrated"] == 3      # flat entries moved into shards
    assert spool.enqueue(done_rec, None, None) is None                # delivered before the upgrade
    assert spool.pending_count() == 1

    spool.retry("0000000000000002-bbbbbbbb")
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=600)
    up.close()
    stored = {c.meta["callerphone"]: c for c in receiver.stored_calls()}
    assert sorted(stored) == sorted([ready_rec["callerphone"], parked_rec["callerphone"]])
    for rec, audio in ((ready_rec, ready_audio), (parked_rec, parked_audio)):
        got = stored[rec["callerphone"]]
        assert (got.meta, got.audio) == (api_fields(rec), audio)

    # The old delivered call was past retention (enqueued in 2024): purged, and its ledger line
    # of that version carries no summary. The two delivered now keep theirs.
    listed = {c.id: (c.state, c.record and c.record["callerphone"]) for c in delivered_calls(spool_dir)}
    assert listed == {"0000000000000001-aaaaaaaa": (DELIVERED, ready_rec["callerphone"]),
                      "0000000000000002-bbbbbbbb": (DELIVERED, parked_rec["callerphone"]),
                      "0000000000000003-cccccccc": (None, None)}


def test_a_state_file_that_is_json_but_not_a_state_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    rec = make_record(4)
    _old_call(spool_dir, "0000000000000004-dddddddd", rec, b"\xff\xfb" + bytes(100), READY)
    (spool_dir / "calls" / "0000000000000004-dddddddd" / "state.json").write_text('["ready"]')
    spool = Spool(spool_dir)
    e = spool.get("0000000000000004-dddddddd")
    assert (e.state, e.reason, e.record) == (PARKED, "state_unreadable", rec)
    assert spool.counters["deliver.spool.unreadable_state"] == 1

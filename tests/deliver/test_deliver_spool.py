"""The spool on its own: atomic enqueue, ledger dedup, states, retention, operator commands."""

from __future__ import annotations

import argparse
import io
import json
import stat
import time
import wave
from pathlib import Path

import pytest

from agent.deliver import commands
from agent.deliver.spool import (DELIVERED, PARKED, READY, SKIPPED_UNANSWERED, Spool, call_key,
                                 silence_wav)
from agent.deliver.uploader import Uploader
from agent.errors import AgentError
from deliver_helpers import api_for, make_audio, make_record


def test_enqueue_moves_audio_and_writes_durably(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    path, data = make_audio(tmp_path, 0, 1234)
    rec = make_record(0)
    call_id = spool.enqueue(rec, path, "audio/mpeg")
    assert not path.exists()                                  # moved (same filesystem)
    e = spool.get(call_id)
    assert e.state == READY and e.audio_path.read_bytes() == data and e.record == rec
    assert e.key == "call-0@pbx|ft0|1714557600000000000|0" == call_key(rec)
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    again = Spool(tmp_path / "spool")                         # a restart sees the same
    assert [x.id for x in again.list()] == [call_id] and again.pending_count() == 1


def test_unanswered_skipped_and_no_audio_parked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    skipped = spool.enqueue(make_record(1, answered=False), None, None)
    parked = spool.enqueue(make_record(2, no_audio_reason="encrypted"), None, None)
    silent = spool.enqueue(make_record(3), None, None, upload_no_audio=True)
    assert spool.get(skipped).state == SKIPPED_UNANSWERED
    assert (spool.get(parked).state, spool.get(parked).reason) == (PARKED, "no_audio:encrypted")
    e = spool.get(silent)
    assert e.state == READY and e.content_type == "audio/wav"
    with wave.open(io.BytesIO(e.audio_path.read_bytes())) as w:
        assert (w.getnframes(), w.getframerate(), w.getnchannels()) == (8000, 8000, 1)
    assert spool.summary() == {SKIPPED_UNANSWERED: 1, PARKED: 1, READY: 1}
    assert spool.counters["deliver.spool.skipped_unanswered"] == 1
    assert spool.counters["deliver.spool.parked_no_audio"] == 1
    assert spool.enqueue(make_record(1, answered=False), None, None) is None   # still deduped
    assert spool.retry_parked() == 0          # no audio: stays parked
    with pytest.raises(AgentError):
        spool.retry(parked)
    assert spool.pending_count() == 1
    wanted = spool.enqueue(make_record(4, answered=False), make_audio(tmp_path, 4, 10)[0], None,
                           upload_unanswered=True)
    assert spool.get(wanted).state == READY and spool.pending_count() == 2


def test_no_audio_silence_upload_reaches_receiver(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    spool.enqueue(make_record(3), None, None, upload_no_audio=True)
    up = Uploader(spool, api_for(receiver))
    assert up.run_until_idle(deadline_s=30)
    up.close()
    [c] = receiver.stored_calls()
    assert c.audio == silence_wav() and c.content_type == "audio/wav"


def test_retention_keeps_then_purges_delivered_never_undelivered(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool", retention_days=2.0)
    path, _ = make_audio(tmp_path, 0, 100)
    done = spool.enqueue(make_record(0), path, "audio/mpeg")
    bad = spool.enqueue(make_record(1, startdatetimeutc="yesterday"), make_audio(tmp_path, 1, 100)[0], None)
    up = Uploader(spool, api_for(receiver))
    assert up.run_until_idle(deadline_s=30)
    up.close()
    assert spool.get(done).state == DELIVERED and spool.get(bad).state == PARKED
    assert spool.purge_expired(time.time() + 86400) == 0
    assert spool.purge_expired(time.time() + 3 * 86400) == 1
    assert [e.id for e in spool.list()] == [bad]                # undelivered stays forever
    assert spool.oldest_undelivered_age_s(time.time() + 100) >= 100
    assert spool.enqueue(make_record(0), make_audio(tmp_path, 2, 5)[0], None) is None  # ledger


def test_crash_between_ledger_and_state_is_reconciled(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    call_id = spool.enqueue(make_record(0), make_audio(tmp_path, 0, 10)[0], "audio/mpeg")
    st = spool.state_of(call_id)
    spool.ledger.mark(st["key"], "delivered", call_id)         # then "crash" before the state write
    kept = Spool(tmp_path / "spool", retention_days=1)
    assert kept.get(call_id).state == DELIVERED and kept.pending_count() == 0
    spool.ledger.mark(st["key"], "delivered", call_id)
    spool.save_state(st)                                       # back to "ready" on disk
    again = Spool(tmp_path / "spool")                          # retention 0: delivered, then deleted
    assert again.list() == [] and again.pending_count() == 0


def test_stale_claim_from_crashed_enqueue_does_not_block(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rec = make_record(0)
    spool.ledger.path(call_key(rec)).write_text("queued 0000-gone\n")
    assert spool.enqueue(rec, make_audio(tmp_path, 0, 10)[0], None) is not None


def test_uploader_thread_delivers_beside_enqueue(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    up = Uploader(spool, api_for(receiver, max_in_flight=3), poll_s=0.05)
    up.start_thread()
    other = Uploader(spool, api_for(receiver))
    with pytest.raises(AgentError):          # one uploader per spool
        other.run_once()
    other.close()
    datas = {}
    for i in range(6):
        path, data = make_audio(tmp_path, i, 9000)
        spool.enqueue(make_record(i), path, "audio/mpeg")
        datas[make_record(i)["callerphone"]] = data
        up.wake()
    deadline = time.monotonic() + 20
    while len(receiver.stored_calls()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    up.stop()
    # the engine's pattern: stop the threads, then finish in the foreground
    path, data = make_audio(tmp_path, 6, 9000)
    spool.enqueue(make_record(6), path, "audio/mpeg")
    datas[make_record(6)["callerphone"]] = data
    assert up.run_until_idle(deadline_s=20)
    up.close()
    stored = receiver.stored_calls()
    assert sorted(c.meta["callerphone"] for c in stored) == sorted(datas)
    assert all(c.audio == datas[c.meta["callerphone"]] for c in stored)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    sub = parser.add_subparsers(dest="command")
    commands.register(sub)
    return parser.parse_args(argv)


def test_spool_commands(tmp_path: Path, capsys) -> None:
    spool = Spool(tmp_path / "spool")
    parked = spool.enqueue(make_record(1, startdatetimeutc="x"), make_audio(tmp_path, 1, 10)[0], None)
    st = spool.state_of(parked)
    st.update(state=PARKED, reason="400 invalid startdatetimeutc")
    spool.save_state(st)
    d = str(tmp_path / "spool")
    args = _cli(["spool", "--dir", d, "list", "--json"])
    assert args.func(args) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["state"] == PARKED and json.loads(line)["reason"] == "400 invalid startdatetimeutc"
    args = _cli(["spool", "--dir", d, "show", parked])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["state"]["state"] == PARKED
    args = _cli(["spool", "--dir", d, "retry", "--parked"])
    assert args.func(args) == 0
    assert Spool(tmp_path / "spool").get(parked).state == READY
    args = _cli(["spool", "--dir", d, "show", "nope"])
    assert args.func(args) == 1
    args = _cli(["receiver", "--port", "0", "--fail-rate", "0.3", "--quota", "5"])
    assert (args.host, args.fail_rate, args.quota) == ("127.0.0.1", 0.3, 5)

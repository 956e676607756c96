"""Uploader against a faulty receiver: every call stored exactly once, nothing lost."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agent.deliver.client import API_FIELDS
from agent.deliver.spool import DELIVERED_UNCONFIRMED, PARKED, Spool
from agent.deliver.uploader import Uploader
from agent.errors import ConfigError
from agent.receiver import Faults
from deliver_helpers import FakeTime, api_for, make_audio, make_record


def _spool_calls(tmp_path: Path, sizes: list[int], **spool_kw) -> tuple[Spool, dict[str, tuple[dict, bytes]]]:
    spool = Spool(tmp_path / "spool", **spool_kw)
    expected = {}
    for i, size in enumerate(sizes):
        path, data = make_audio(tmp_path, i, size)
        rec = make_record(i)
        assert spool.enqueue(rec, path, "audio/mpeg")
        expected[rec["callerphone"]] = (rec, data)
    return spool, expected


def _assert_stored_once(receiver, expected: dict[str, tuple[dict, bytes]]) -> None:
    stored = receiver.stored_calls()
    phones = [c.meta["callerphone"] for c in stored]
    assert sorted(phones) == sorted(expected), "each call stored exactly once"
    for c in stored:
        rec, data = expected[c.meta["callerphone"]]
        assert c.meta == {k: rec[k] for k in API_FIELDS}
        assert c.audio == data


def test_failure_rate_and_dropped_connections(tmp_path: Path, receiver) -> None:
    receiver.faults = Faults(fail_rate=0.3, drop_rate=0.2)
    spool, expected = _spool_calls(tmp_path, [9000, 4096, 12_289, 100, 8192, 30_000])
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=24 * 3600)
    up.close()
    _assert_stored_once(receiver, expected)
    assert receiver.stats.get("fail", 0) > 0
    assert receiver.stats.get("drop_before", 0) + receiver.stats.get("drop_after", 0) > 0
    assert spool.counters["deliver.upload.transient"] > 0
    assert ft.slept > 0  # it backed off instead of spinning
    c = spool.counters
    assert c["deliver.upload.delivered"] + c["deliver.upload.delivered_unconfirmed"] == 6


def test_first_five_requests_fail(tmp_path: Path, receiver) -> None:
    receiver.faults = Faults(fail_first=5)
    spool, expected = _spool_calls(tmp_path, [5000, 5000])
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, rng=lambda: 0.5)
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    _assert_stored_once(receiver, expected)
    assert spool.counters["deliver.upload.transient"] == 5
    # per-call exponential back-off, jitter factor 1.0: the first call waits 1+2+4+8+16 at most
    assert 0 < ft.slept <= 31


def test_401_stops_everything_then_fixed_credentials_resume(tmp_path: Path, receiver) -> None:
    spool, expected = _spool_calls(tmp_path, [5000, 3000, 7000])
    ft = FakeTime()
    creds = {"password": "wrong"}
    api = api_for(receiver, password="wrong")
    up = Uploader(spool, api, clock=ft.clock, sleep=ft.sleep, auth_recheck_s=60,
                  reload_api=lambda: dataclasses.replace(api, password=creds["password"]))
    assert up.run_once()
    assert up.auth_failed
    created_before = receiver.stats.get("created", 0)
    assert not up.run_once()            # stopped: no request is made while credentials are wrong
    assert receiver.stats.get("created", 0) == created_before == 0
    assert spool.pending_count() == 3   # everything stays spooled

    def fix(t: FakeTime) -> None:
        if t.slept >= 300:
            creds["password"] = "secret"
    ft.on_sleep = fix
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    assert not up.auth_failed
    _assert_stored_once(receiver, expected)
    assert spool.counters["deliver.upload.auth_failed"] == 1


def test_quota_backs_off_for_hours_then_resumes(tmp_path: Path, receiver) -> None:
    receiver.set_quota(1)
    spool, expected = _spool_calls(tmp_path, [5000, 3000, 7000])
    ft = FakeTime()

    def lift(t: FakeTime) -> None:
        if t.slept >= 5 * 3600:
            receiver.set_quota(None)
    ft.on_sleep = lift
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, quota_backoff_s=3 * 3600)
    assert up.run_until_idle(deadline_s=48 * 3600)
    up.close()
    _assert_stored_once(receiver, expected)
    assert spool.counters["deliver.upload.quota"] == 2      # at t=0 and t=3 h; lifted at 5 h
    assert receiver.stats["quota"] == 2
    assert 6 * 3600 <= ft.slept < 7 * 3600


def test_tempcallid_expired_mid_upload_restarts_from_step_one(tmp_path: Path, receiver) -> None:
    receiver.faults = Faults(expire_after_chunks=2)
    spool, expected = _spool_calls(tmp_path, [5 * 4096, 4 * 4096 - 7])
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    _assert_stored_once(receiver, expected)
    assert receiver.stats["expired"] == 2
    assert spool.counters["deliver.upload.expired_restart"] == 2
    assert receiver.stats["created"] == 4


def test_lost_answer_to_last_chunk_is_delivered_unconfirmed(tmp_path: Path, receiver) -> None:
    receiver.faults = Faults(drop_last_chunk_response=1)
    spool, expected = _spool_calls(tmp_path, [3 * 4096], retention_days=1.0)
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    _assert_stored_once(receiver, expected)
    assert spool.counters["deliver.upload.delivered_unconfirmed"] == 1
    [entry] = spool.list()
    assert entry.state == DELIVERED_UNCONFIRMED
    assert receiver.stats["not_found"] == 1
    assert receiver.stats["created"] == 1   # never started again from step 1


def test_invalid_date_parked_then_retry_parked_delivers(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    path, data = make_audio(tmp_path, 0, 5000)
    rec = make_record(0, startdatetimeutc="2024-13-45 99:00:00")
    call_id = spool.enqueue(rec, path, "audio/mpeg")
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=3600)   # parked counts as "nothing more to do"
    e = spool.get(call_id)
    assert e.state == PARKED and e.reason == "400 invalid startdatetimeutc"
    assert receiver.stored_calls() == []
    # the operator fixes the record, then: calln-agent spool retry --parked
    rec_path = spool.calls_dir / call_id / "record.json"
    fixed = json.loads(rec_path.read_text())
    fixed["startdatetimeutc"] = "2024-05-01 10:00:00"
    rec_path.write_text(json.dumps(fixed))
    assert Spool(tmp_path / "spool").retry_parked() == 1   # another process, as the CLI is
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    [stored] = receiver.stored_calls()
    assert stored.meta["startdatetimeutc"] == "2024-05-01 10:00:00" and stored.audio == data


def test_unknown_number_405_parked_with_reason(tmp_path: Path, receiver) -> None:
    receiver.unknown_phones = {"61390000000"}
    spool = Spool(tmp_path / "spool")
    path, _ = make_audio(tmp_path, 0, 100)
    call_id = spool.enqueue(make_record(0, callerphone="61390000000"), path, "audio/mpeg")
    up = Uploader(spool, api_for(receiver))
    assert up.run_until_idle(deadline_s=30)
    up.close()
    e = spool.get(call_id)
    assert e.state == PARKED
    assert e.reason == "405 reseller account has no clients with that phone number 61390000000"


def test_http_url_refused_at_start_and_plain_port_answers_406(tmp_path: Path) -> None:
    import httpx
    from agent.receiver import ReceiverServer

    with pytest.raises(ConfigError):
        Uploader(Spool(tmp_path / "spool"), api_for_url("http://127.0.0.1:1"))
    rx = ReceiverServer(tmp_path / "rx", plain_port=0)
    rx.start()
    try:
        r = httpx.post(rx.plain_url + "/api/call", json={})
        assert (r.status_code, r.text) == (406, "SSL must be used")
    finally:
        rx.stop()


def api_for_url(url: str):
    from agent.config import ApiSection
    return ApiSection(url=url, username="a", password="b")


def test_wav_is_gzipped_and_stored_exactly(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    path, data = make_audio(tmp_path, 0, 10_000, ext="wav")
    spool.enqueue(make_record(0), path, "audio/wav")
    up = Uploader(spool, api_for(receiver))
    assert up.run_until_idle(deadline_s=30)
    up.close()
    [c] = receiver.stored_calls()
    assert c.content_type == "audio/wav" and c.audio == data


def test_same_record_twice_uploads_once(tmp_path: Path, receiver) -> None:
    spool = Spool(tmp_path / "spool")
    rec = make_record(7)
    p1, data = make_audio(tmp_path, 1, 3000)
    p2, _ = make_audio(tmp_path, 2, 3000)
    assert spool.enqueue(rec, p1, "audio/mpeg") is not None
    assert spool.enqueue(dict(rec), p2, "audio/mpeg") is None      # still queued
    up = Uploader(spool, api_for(receiver))
    assert up.run_until_idle(deadline_s=30)
    p3, _ = make_audio(tmp_path, 3, 3000)
    assert Spool(tmp_path / "spool").enqueue(dict(rec), p3, "audio/mpeg") is None  # delivered, deleted
    assert up.run_until_idle(deadline_s=30)
    up.close()
    [c] = receiver.stored_calls()
    assert c.audio == data
    assert spool.counters["deliver.spool.duplicate"] == 1

"""The dedup ledger over time (sharding, the flat layout of older versions, pruning) and
back-off that outlives a restart (per call after a 5xx, account-wide after a 403)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.deliver.spool import LEDGER_SHARDS, PARKED, READY, SKIPPED_UNANSWERED, Spool, call_key
from agent.deliver.ledger_view import delivered_calls
from agent.deliver.uploader import Uploader
from agent.errors import ConfigError
from agent.receiver import Faults
from deliver_helpers import FakeTime, api_for, make_audio, make_record

DAY = 86400.0


def _hash(rec: dict) -> str:
    return hashlib.sha256(call_key(rec).encode()).hexdigest()


def _shard_file(spool_dir: Path, rec: dict) -> Path:
    h = _hash(rec)
    return spool_dir / "ledger" / h[:2] / h[2:]


def _flat_files(spool_dir: Path) -> list[str]:
    return sorted(p.name for p in (spool_dir / "ledger").iterdir() if len(p.name) == 64)


def _deliver(spool: Spool, receiver, **kw) -> None:
    up = Uploader(spool, api_for(receiver), **kw)
    assert up.run_until_idle(deadline_s=30)
    up.close()


def _to_flat_layout(spool_dir: Path, *, legacy_mtime: float | None = None) -> None:
    """Rewrite a spool's ledger as versions before the sharding left it: ledger/<sha256>,
    lines without a time, no shard directories."""
    ledger = spool_dir / "ledger"
    for shard in LEDGER_SHARDS:
        d = ledger / shard
        for f in d.iterdir():
            kind, call_id = f.read_text().split()[:2]
            flat = ledger / (shard + f.name)
            flat.write_text(f"{kind} {call_id}\n")
            if legacy_mtime is not None:
                os.utime(flat, (legacy_mtime, legacy_mtime))
            f.unlink()
        d.rmdir()


# ---------------------------------------------------------------------------------- layout
def test_ledger_is_sharded_and_entries_carry_their_time(tmp_path: Path, receiver) -> None:
    d = tmp_path / "spool"
    spool = Spool(d)
    rec = make_record(0)
    call_id = spool.enqueue(rec, make_audio(tmp_path, 0, 5000)[0], "audio/mpeg")
    entry = _shard_file(d, rec)
    assert entry.read_text() == f"queued {call_id}\n"
    assert sorted(p.name for p in (d / "ledger").iterdir() if p.is_dir()) == list(LEDGER_SHARDS)
    assert _flat_files(d) == []
    before = time.time()
    _deliver(spool, receiver)
    kind, cid, ts, summary = entry.read_text().split(maxsplit=3)
    assert (kind, cid) == ("delivered", call_id) and before - 1 <= float(ts) <= time.time() + 1
    # the ledger outlives the call (retention_days 0 deleted it): it keeps who, when, and how
    assert not (d / "calls" / call_id).exists()
    assert json.loads(summary) == {"state": "delivered", "startdatetimeutc": rec["startdatetimeutc"],
                                   "callerphone": rec["callerphone"],
                                   "destinationphone": rec["destinationphone"]}
    [shown] = delivered_calls(d)
    assert (shown.id, shown.state, shown.record["callerphone"]) == (call_id, "delivered",
                                                                    rec["callerphone"])
    assert spool.enqueue(rec, make_audio(tmp_path, 1, 10)[0], None) is None
    assert len(receiver.stored_calls()) == 1


def test_concurrent_enqueues_of_one_call_one_wins(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    spools = [Spool(d), Spool(d)]           # as two processes would have
    for i in range(20):
        rec = make_record(i)
        paths = [make_audio(tmp_path, 100 * i + j, 50)[0] for j in range(2)]
        barrier = threading.Barrier(2)
        results: list[str | None] = [None, None]

        def go(j: int) -> None:
            barrier.wait()
            results[j] = spools[j].enqueue(dict(rec), paths[j], "audio/mpeg")
        threads = [threading.Thread(target=go, args=(j,)) for j in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, (i, results)
        assert _shard_file(d, rec).read_text() == f"queued {winners[0]}\n"
    assert Spool(d).pending_count() == 20


# ---------------------------------------------------------------------------------- upgrade
def test_flat_entries_of_an_older_version_are_honoured_after_upgrade(tmp_path: Path, receiver) -> None:
    d = tmp_path / "spool"
    spool = Spool(d)
    delivered_rec, waiting_rec = make_record(0), make_record(1)
    spool.enqueue(delivered_rec, make_audio(tmp_path, 0, 5000)[0], "audio/mpeg")
    _deliver(spool, receiver)                          # delivered, then deleted (retention 0)
    waiting_id = spool.enqueue(waiting_rec, make_audio(tmp_path, 1, 6000)[0], "audio/mpeg")
    _to_flat_layout(d)
    assert len(_flat_files(d)) == 2
    assert [c.meta["callerphone"] for c in receiver.stored_calls()] == [delivered_rec["callerphone"]]

    upgraded = Spool(d)                                # the new version starts
    assert _flat_files(d) == []
    assert upgraded.counters["deliver.spool.ledger_migrated"] == 2
    assert _shard_file(d, delivered_rec).read_text().startswith("delivered ")
    assert _shard_file(d, waiting_rec).read_text() == f"queued {waiting_id}\n"
    # the same capture replayed again: neither call is taken a second time
    assert upgraded.enqueue(delivered_rec, make_audio(tmp_path, 2, 5000)[0], "audio/mpeg") is None
    assert upgraded.enqueue(waiting_rec, make_audio(tmp_path, 3, 5000)[0], "audio/mpeg") is None
    _deliver(upgraded, receiver)
    stored = sorted(c.meta["callerphone"] for c in receiver.stored_calls())
    assert stored == sorted([delivered_rec["callerphone"], waiting_rec["callerphone"]])
    assert receiver.stats["created"] == 2


def test_flat_entry_not_yet_moved_is_still_looked_up(tmp_path: Path, receiver) -> None:
    d = tmp_path / "spool"
    spool = Spool(d)
    rec = make_record(0)
    spool.enqueue(rec, make_audio(tmp_path, 0, 5000)[0], "audio/mpeg")
    _deliver(spool, receiver)
    entry = _shard_file(d, rec)
    flat = d / "ledger" / _hash(rec)
    os.replace(entry, flat)                    # as if the migration had not reached it
    assert spool.enqueue(rec, make_audio(tmp_path, 1, 5000)[0], "audio/mpeg") is None
    # a crash between link and unlink of the migration: both names; the next open keeps one
    os.link(flat, entry)
    Spool(d)
    assert _flat_files(d) == [] and entry.read_text().startswith("delivered ")
    _deliver(spool, receiver)
    assert len(receiver.stored_calls()) == 1 and receiver.stats["created"] == 1


# ---------------------------------------------------------------------------------- pruning
def _write_entry(spool_dir: Path, h: str, line: str, mtime: float | None = None) -> Path:
    path = spool_dir / "ledger" / h[:2] / h[2:]
    path.write_text(line + "\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_prune_removes_old_final_entries_and_never_undelivered_calls(tmp_path: Path, receiver) -> None:
    d = tmp_path / "spool"
    spool = Spool(d, ledger_days=30)
    recs = {name: make_record(i) for i, name in enumerate(["delivered", "parked", "queued", "skipped"])}
    spool.enqueue(recs["delivered"], make_audio(tmp_path, 0, 3000)[0], "audio/mpeg")
    parked_id = spool.enqueue(dict(recs["parked"], startdatetimeutc="not a date"),
                              make_audio(tmp_path, 1, 3000)[0], "audio/mpeg")
    # parked via a real 400 before the undelivered "queued" call is even spooled
    _deliver(spool, receiver)
    assert spool.get(parked_id).state == PARKED
    queued_id = spool.enqueue(recs["queued"], make_audio(tmp_path, 2, 3000)[0], "audio/mpeg")
    skipped_id = spool.enqueue(dict(recs["skipped"], answered=False), None, None)
    assert spool.get(skipped_id).state == SKIPPED_UNANSWERED and spool.get(queued_id).state == READY
    old = time.time() - 100 * DAY
    legacy_old = _write_entry(d, "ab" + "1" * 62, "delivered 00-gone", mtime=old)   # older version
    legacy_new = _write_entry(d, "ab" + "2" * 62, "delivered 00-gone2")              # mtime: now
    stamped_old = _write_entry(d, "cd" + "3" * 62, f"skipped 00-gone3 {old:.0f}")    # mtime: now
    stamped_new = _write_entry(d, "cd" + "4" * 62, f"delivered 00-gone4 {time.time() - DAY:.0f}",
                               mtime=old)
    litter_old = _write_entry(d, "ef" + "5" * 62, "queued 00-crashed", mtime=time.time() - 7200)
    litter_new = _write_entry(d, "ef" + "6" * 62, "queued 00-enqueuing")

    assert spool.ledger.prune(shards=list(LEDGER_SHARDS)) == 2
    assert not legacy_old.exists() and not stamped_old.exists()     # judged by the entry's time
    assert legacy_new.exists() and stamped_new.exists()
    assert not litter_old.exists() and litter_new.exists()
    assert spool.counters["deliver.spool.ledger_pruned"] == 2
    assert spool.counters["deliver.spool.ledger_litter_removed"] == 1

    # 31 days on, every real entry is older than ledger_days: only the delivered call's goes;
    # calls still in the spool (parked, queued, skipped-but-kept) keep theirs, whatever the age.
    later = time.time() + 31 * DAY
    assert spool.ledger.prune(later, shards=list(LEDGER_SHARDS)) == 3   # + legacy_new, stamped_new
    assert not _shard_file(d, recs["delivered"]).exists()
    for name in ("parked", "queued", "skipped"):
        assert _shard_file(d, recs[name]).exists(), name
    far = time.time() + 10_000 * DAY
    assert spool.ledger.prune(far, shards=list(LEDGER_SHARDS)) == 0
    for name in ("parked", "queued", "skipped"):
        assert spool.enqueue(dict(recs[name]), make_audio(tmp_path, 10, 10)[0], None) is None, name
    # the delivered call is forgotten: the documented trade-off of a bounded ledger
    assert spool.enqueue(recs["delivered"], make_audio(tmp_path, 11, 10)[0], None) is not None
    assert spool.pending_count() == 2      # queued + the forgotten one again; parked stays parked
    assert spool.get(parked_id).state == PARKED


def test_ledger_days_zero_keeps_everything(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    spool = Spool(d, ledger_days=0)
    old = _write_entry(d, "ab" + "1" * 62, "delivered 00-gone", mtime=time.time() - 5000 * DAY)
    assert spool.ledger.prune(time.time() + 5000 * DAY, shards=list(LEDGER_SHARDS)) == 0
    assert old.exists()


def test_prune_walks_one_shard_per_pass_at_open_and_hourly(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    Spool(d, ledger_days=0)                        # lay out the shards, prune nothing
    stamp = time.time() - 10 * DAY
    for shard in LEDGER_SHARDS:
        _write_entry(d, shard + "0" * 62, f"delivered 00-{shard} {stamp:.0f}")

    def left() -> int:
        return sum(1 for s in LEDGER_SHARDS for _ in (d / "ledger" / s).iterdir())

    spool = Spool(d, ledger_days=1)                # open: one shard
    assert left() == 255 and spool.counters["deliver.spool.ledger_pruned"] == 1
    ft = FakeTime()
    up = Uploader(spool, api_for_unused(), clock=ft.clock, sleep=ft.sleep, wall=ft.wall,
                  retention_check_s=3600)
    assert up.run_until_idle(deadline_s=10)        # nothing to upload; maintenance runs once
    assert left() == 254
    ft.now += 600
    assert up.run_until_idle(deadline_s=10)
    assert left() == 254                           # not before the hour is over
    ft.now += 3000
    assert up.run_until_idle(deadline_s=10)
    assert left() == 253
    up.close()
    for _ in range(253):
        spool.ledger.prune()
    assert left() == 0 and spool.counters["deliver.spool.ledger_pruned"] == 256


def api_for_unused():
    from agent.config import ApiSection
    return ApiSection(url="https://127.0.0.1:9", username="a", password="b")


# ---------------------------------------------------------------------------------- back-off
def test_restart_after_5xx_backoff_does_not_retry_before_due(tmp_path: Path, receiver) -> None:
    receiver.faults = Faults(fail_first=1)
    d = tmp_path / "spool"
    spool = Spool(d)
    path, data = make_audio(tmp_path, 0, 5000)
    call_id = spool.enqueue(make_record(0), path, "audio/mpeg")
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, wall=ft.wall,
                  rng=lambda: 0.5, backoff_base_s=600, backoff_max_s=3600)
    assert up.run_once()
    assert receiver._requests == 1 and receiver.stats["fail_first"] == 1
    backoff = json.loads((d / "calls" / call_id / "state.json").read_text())["backoff"]
    assert backoff == {"attempts": 1, "due_wall": ft.wall() + 600}
    up.close()                                         # the agent stops ...

    ft2 = FakeTime(now=5.0, wall_at_start=ft.wall() + 60)   # ... and is back a minute later
    up2 = Uploader(Spool(d), api_for(receiver), clock=ft2.clock, sleep=ft2.sleep, wall=ft2.wall,
                   rng=lambda: 0.5, backoff_base_s=600, backoff_max_s=3600)
    assert not up2.run_once()
    assert receiver._requests == 1                     # quiet until the due time
    assert up2.run_until_idle(deadline_s=3600)
    up2.close()
    assert 540 <= ft2.slept < 545                      # the 600 s wait less the minute away
    [c] = receiver.stored_calls()
    assert c.audio == data and receiver.stats["created"] == 1


def test_restart_backoff_from_a_clock_far_ahead_is_clamped(tmp_path: Path, receiver) -> None:
    d = tmp_path / "spool"
    spool = Spool(d)
    call_id = spool.enqueue(make_record(0), make_audio(tmp_path, 0, 5000)[0], "audio/mpeg")
    st = spool.state_of(call_id)
    ft = FakeTime()
    st["backoff"] = {"attempts": 7, "due_wall": ft.wall() + 10 * 365 * DAY}   # the clock jumped
    spool.save_state(st)
    up = Uploader(Spool(d), api_for(receiver), clock=ft.clock, sleep=ft.sleep, wall=ft.wall,
                  backoff_max_s=300)
    assert not up.run_once() and receiver._requests == 0
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    assert 300 <= ft.slept <= 451                      # at most the longest wait it could choose
    assert len(receiver.stored_calls()) == 1


def test_restart_during_quota_backoff_stays_quiet(tmp_path: Path, receiver) -> None:
    receiver.set_quota(0)
    d = tmp_path / "spool"
    spool = Spool(d)
    path, data = make_audio(tmp_path, 0, 5000)
    spool.enqueue(make_record(0), path, "audio/mpeg")
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, wall=ft.wall,
                  quota_backoff_s=3 * 3600)
    assert up.run_once()
    assert receiver.stats["quota"] == 1 and up.quota_until is not None
    saved = json.loads((d / "quota.json").read_text())
    assert saved["until_wall"] == ft.wall() + 3 * 3600 and "quota" in saved["reason"]
    up.close()

    receiver.set_quota(None)                   # lifted server-side; the agent cannot know
    ft2 = FakeTime(now=1.0, wall_at_start=ft.wall() + 3600)  # restarted an hour later
    up2 = Uploader(Spool(d), api_for(receiver), clock=ft2.clock, sleep=ft2.sleep, wall=ft2.wall,
                   quota_backoff_s=3 * 3600)
    requests = receiver._requests
    assert not up2.run_once()
    assert receiver._requests == requests and up2.quota_until == pytest.approx(1.0 + 2 * 3600)
    assert up2.counters["deliver.upload.quota_restored"] == 1
    assert up2.run_until_idle(deadline_s=24 * 3600)
    up2.close()
    assert 2 * 3600 <= ft2.slept < 2 * 3600 + 5     # the two hours that were left, no less
    [c] = receiver.stored_calls()
    assert c.audio == data
    assert not (d / "quota.json").exists()            # over: a later restart is not paused


def test_quota_file_from_a_clock_far_ahead_is_clamped(tmp_path: Path, receiver) -> None:
    d = tmp_path / "spool"
    spool = Spool(d)
    spool.enqueue(make_record(0), make_audio(tmp_path, 0, 5000)[0], "audio/mpeg")
    ft = FakeTime()
    (d / "quota.json").write_text(json.dumps({"until_wall": ft.wall() + 400 * DAY, "reason": "x"}))
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep, wall=ft.wall,
                  quota_backoff_s=3 * 3600)
    assert not up.run_once() and receiver._requests == 0
    assert up.run_until_idle(deadline_s=48 * 3600)
    up.close()
    assert 3 * 3600 <= ft.slept < 3 * 3600 + 5
    assert len(receiver.stored_calls()) == 1


# ---------------------------------------------------------------------------------- config
def test_config_ledger_days(tmp_path: Path) -> None:
    assert load_config(None, env={}).spool.ledger_days == 400.0
    toml = tmp_path / "agent.toml"
    toml.write_text("[spool]\nledger_days = 30\n")
    assert load_config(toml, env={}).spool.ledger_days == 30.0
    assert load_config(toml, env={"CALLN_SPOOL_LEDGER_DAYS": "0"}).spool.ledger_days == 0.0
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="(?i)ledger_days"):
            load_config(None, env={"CALLN_SPOOL_LEDGER_DAYS": bad})

"""Disk full under the spool's working area: capture goes on, audio that cannot be written
is dropped (logged), nothing already there is damaged, and recording resumes with space.

Uses a 1 MiB tmpfs mounted for the test (root only; skipped otherwise)."""

from __future__ import annotations

import dataclasses

import errno
import hashlib
import logging
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from agent.config import Config
from agent.pipeline.engine import Engine
from agent.media.medialog import MediaLogWriter, read_media_log
from agent.media.render import render_recording

# These tests fill the disk for real (ENOSPC while writing); the [spool] min_free_mb floor,
# which would stop audio before that, is tested in tests/engine/test_engine_disk_floor.py.
NO_FLOOR = dataclasses.replace(Config(), spool=dataclasses.replace(Config().spool, min_free_mb=0))

from _hostile_lib import PCAPS, essentials, read_records, run_engine


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "spool"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=1000", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    """Fill the filesystem completely; returns the filler file."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_media_log_resumes_after_disk_full_without_torn_records(small_fs, caplog):
    caplog.set_level(logging.WARNING, logger="agent.media.medialog")
    path = small_fs / "call.media"
    w = MediaLogWriter(path, flush_bytes=10_000)
    for i in range(100):                       # ~18 kB: written
        w.append(0, i, i * 160, i, 0, False, b"a" * 160)
    w.flush()
    before = path.stat().st_size
    filler = _fill(small_fs)
    for i in range(100, 300):                  # disk full: these batches fail
        w.append(0, i, i * 160, i, 0, False, b"b" * 160)
    assert w.failed is not None and "No space" in w.failed
    assert path.stat().st_size == before       # the partial batch was cut off again
    filler.unlink()                            # space returns
    for i in range(300, 400):
        w.append(0, i, i * 160, i, 0, False, b"c" * 160)
    w.close()
    assert w.failed is None and w.failures == 1 and w.recoveries == 1
    seqs = [r[1] for r in read_media_log(path)]
    assert seqs[:100] == list(range(100)) and seqs[-100:] == list(range(300, 400))
    lost = 200 - (len(seqs) - 200)
    assert w.lost_at_failure + w.dropped == lost and lost > 0
    assert all(r[6] in (b"a" * 160, b"b" * 160, b"c" * 160) for r in read_media_log(path))
    text = caplog.text
    assert "cannot write media log" in text and "recording resumes" in text


def test_engine_on_a_full_disk_keeps_capturing_and_recovers(small_fs):
    work = small_fs / "work"
    work.mkdir()
    done = small_fs / "done"
    done.mkdir()
    old = done / "earlier-call.mp3"            # something already in the spool
    old.write_bytes(os.urandom(100_000))
    old_sha = _sha(old)
    filler = _fill(small_fs)

    want, _ = run_engine(PCAPS / "multi_call.pcap")
    rendered: dict[str, float] = {}
    records: list[dict] = []

    def on_finished(f):
        records.append(f.record)
        if f.media_log is not None and f.media_log.exists() and f.media_log.stat().st_size:
            res = render_recording(f.media_log, f.streams, small_fs.parent / f"{len(records)}.wav",
                                   fmt="wav")
            rendered[f.record["callid"]] = res.duration_ms
            f.media_log.unlink()

    counters: Counter = Counter()
    engine = Engine(NO_FLOOR, on_finished, counters=counters, workdir=work)
    recs = read_records(PCAPS / "multi_call.pcap")
    for ts, lt, frame in recs[:340]:           # call 1 ends (BYE) while the disk is full
        engine.feed(ts, lt, frame)
    filler.unlink()                            # space returns
    for ts, lt, frame in recs[340:]:
        engine.feed(ts, lt, frame)
    engine.finish()

    assert _sha(old) == old_sha                # the spool's content is untouched
    by_id = {r["callid"]: r for r in records}
    assert len(by_id) == 3
    for w in want:                             # signalling and stats are complete for all
        assert essentials(by_id[w["callid"]]) == essentials(w)
    c1, c2, c3 = (f"multi_call-000{i}@callntest.example" for i in (1, 2, 3))
    assert c1 not in rendered                  # its audio could not be written
    # Calls still running when space returned record again (they flush at their end).
    assert rendered[c2] > 1500 and rendered[c3] > 1500


def test_engine_counts_audio_dropped_on_full_disk(small_fs):
    work = small_fs / "work"
    work.mkdir()
    filler = _fill(small_fs)
    counters: Counter = Counter()
    engine = Engine(NO_FLOOR, lambda f: None, counters=counters, workdir=work)
    for ts, lt, frame in read_records(PCAPS / "basic_udp.pcap"):
        engine.feed(ts, lt, frame)
    engine.finish()
    filler.unlink()
    assert any(k.startswith("media.log") and v > 0 for k, v in counters.items()), dict(counters)


# ---------------------------------------------------------------- the spool itself full

def _rendered(tmp: Path, i: int, size: int = 3000):
    from agent.recorder import Rendered
    sys_path_deliver()
    from deliver_helpers import make_record
    audio = tmp / f"rendered-{i}.mp3"
    audio.write_bytes(os.urandom(size))
    record = dict(make_record(i), recording={"format": "mp3", "file": audio.name})
    return Rendered(record=record, audio_path=audio, no_audio_reason="")


def sys_path_deliver() -> None:
    import sys
    d = str(Path(__file__).resolve().parents[1] / "deliver")
    if d not in sys.path:
        sys.path.insert(0, d)


def _wait(predicate, timeout_s: float = 20.0) -> bool:
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def test_calls_finished_while_the_spool_is_full_are_held_then_spooled(small_fs, tmp_path, caplog):
    from agent.deliver.spool import READY, Spool
    from agent.delivery import SpoolSink
    from agent.metrics import HealthLimits, Snapshot, health

    spool = Spool(small_fs / "spool")
    sink = SpoolSink(spool, Config(), retry_base_s=0.05, retry_max_s=0.2)
    rendered = [_rendered(tmp_path, i) for i in range(3)]
    data = {r.record["callid"]: r.audio_path.read_bytes() for r in rendered}
    filler = _fill(small_fs)
    caplog.set_level(logging.ERROR, logger="agent.delivery")
    for r in rendered:
        sink(r)                                  # never raises: the call is held
    assert sink.held == 3 and spool.counters["deliver.spool.held"] == 3
    assert spool.counters["deliver.spool.io_error"] >= 1 and "not writable" in caplog.text
    assert all(r.audio_path.exists() for r in rendered)            # recordings kept where rendered
    assert not list(spool.calls_dir.iterdir()) and not list(spool.tmp_dir.iterdir())
    ok, reasons = health(Snapshot(counters=dict(spool.counters)), HealthLimits(min_free_mb=0))
    assert not ok and any("3 finished call(s) held" in r for r in reasons)
    filler.unlink()                              # space returns: the retry thread spools them
    assert _wait(lambda: sink.held == 0), sink.held
    spool.refresh()
    entries = spool.list()
    assert [e.state for e in entries] == [READY] * 3
    assert {e.record["callid"]: e.audio_path.read_bytes() for e in entries} == data
    assert sink.close(wait_s=0) == [] and spool.counters["deliver.spool.lost"] == 0


def test_held_calls_beyond_the_bound_or_at_exit_are_named_as_lost(small_fs, tmp_path, caplog):
    from agent.deliver.spool import Spool
    from agent.delivery import SpoolSink

    spool = Spool(small_fs / "spool")
    sink = SpoolSink(spool, Config(), hold_max=2, retry_base_s=60)
    _fill(small_fs)
    caplog.set_level(logging.ERROR, logger="agent.delivery")
    for i in range(3):
        sink(_rendered(tmp_path, i))
    assert sink.held == 2 and spool.counters["deliver.spool.lost"] == 1
    assert "call LOST" in caplog.text and "callid=call-0@pbx" in caplog.text
    lost = sink.close(wait_s=0)
    assert [n.split()[0] for n in lost] == ["callid=call-0@pbx", "callid=call-1@pbx", "callid=call-2@pbx"]
    assert spool.counters["deliver.spool.lost"] == 3 and spool.counters["deliver.spool.held"] == 0


def test_replay_deliver_on_a_full_spool_names_the_lost_calls_without_a_traceback(small_fs, tmp_path):
    import subprocess
    import sys
    from agent.deliver.spool import Spool
    from agent.receiver import ReceiverServer

    rx = ReceiverServer(tmp_path / "rx", cert_dir=tmp_path / "certs", username="agent", password="secret")
    url, ca = rx.start()
    try:
        spool_dir = small_fs / "spool"
        Spool(spool_dir)                         # an agent's spool, then the disk fills
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'[api]\nurl = "{url}"\nusername = "agent"\nca_bundle = "{ca}"\nformat = "wav"\n'
                       f'[spool]\ndir = "{spool_dir}"\nmin_free_mb = 0\n[recording]\nworkers = 1\n')
        env = dict(os.environ, CALLN_PASSWORD="secret", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        cmd = [sys.executable, "-m", "agent.cli", "--config", str(cfg), "replay",
               str(PCAPS / "multi_call.pcap"), "--deliver", "-q", "--deadline-s", "20"]
        filler = _fill(small_fs)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("call LOST") == 3 and "multi_call-0001@callntest.example" in proc.stderr
        assert rx.stored_calls() == []
        filler.unlink()                          # space back: the same replay delivers each call once
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        stored = rx.stored_calls()
        assert len(stored) == 3 and len({(c.meta["startdatetimeutc"], c.meta["callerphone"])
                                         for c in stored}) == 3
    finally:
        rx.stop()

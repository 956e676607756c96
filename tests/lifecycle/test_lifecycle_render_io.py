"""A recording that cannot be written (disk full) is a fault that backs off and tries again with
the call's media kept, not an audio loss; only after every try is the call named as lost. A
render that fails for its input fails at once. The disk is a tiny tmpfs, filled to the last byte."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from agent.config import Config, RecordingSection
from agent.counters import new_counters
from agent.metrics import Snapshot, health, render_metrics, HealthLimits
from agent.pipeline.engine import MediaMode
from agent.recorder import Recorder
from agent.replay import replay

from _lifecycle_lib import REPO, wait_for

PCAP = REPO / "pcaps" / "basic_udp.pcap"
CALLID = "basic_udp-0001@callntest.example"


@pytest.fixture()
def full_disk(tmp_path: Path):
    """(directory on a 1 MiB tmpfs with 0 bytes free, the filler file to delete to free it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "rec").mkdir(mode=0o700)
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(OSError):
            (mnt / "probe").write_bytes(b"\0" * 4096)
        (mnt / "probe").unlink(missing_ok=True)
        yield mnt / "rec", filler
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _recorder(out: Path, got: list, counters, fmt: str = "wav", **retry) -> Recorder:
    return Recorder(RecordingSection(), out, got.append, fmt=fmt, workers=1, stop_on_signals=False,
                    counters=counters, **retry)


def _replay_into(recorder: Recorder, work: Path, before_submit=None) -> None:
    sink = recorder if before_submit is None else (lambda finished: (before_submit(finished), recorder(finished)))
    replay([PCAP], Config(), sink, workdir=work, media=MediaMode.DEFERRED, progress=False)


def test_a_full_disk_under_the_recording_is_retried_until_space_returns(tmp_path: Path, full_disk) -> None:
    out, filler = full_disk
    got: list = []
    counters = new_counters()
    recorder = _recorder(out, got, counters, retries=50, retry_base_s=0.1, retry_max_s=0.5)
    try:
        _replay_into(recorder, tmp_path / "work")
        assert wait_for(lambda: counters["recorder.io_errors"] >= 2, 30), dict(counters)
        assert counters["recorder.retrying"] == 1 and not got          # held, not passed on
        assert list((tmp_path / "work").rglob("*.rtp")), "the media log was not kept for the retry"
        filler.unlink()                                                   # space returns
    finally:
        recorder.close()
    assert len(got) == 1, got
    rendered = got[0]
    assert rendered.record["callid"] == CALLID and rendered.audio_path is not None, rendered.record
    with wave.open(str(rendered.audio_path)) as w:
        assert w.getnframes() > 8000                                     # seconds of audio, not a stub
    assert rendered.record["recording"]["duration_ms"] > 1000
    assert counters["recorder.audio_lost"] == 0 and counters["recorder.retrying"] == 0
    assert not list((tmp_path / "work").rglob("*.rtp")), "the media log outlived its recording"
    assert sorted(p.name for p in out.iterdir()) == [rendered.audio_path.name]   # no partial left over


def test_a_disk_that_stays_full_loses_the_audio_by_name_after_every_try(tmp_path: Path, full_disk,
                                                                       caplog) -> None:
    out, _ = full_disk
    got: list = []
    counters = new_counters()
    recorder = _recorder(out, got, counters, retries=2, retry_base_s=0.05, retry_max_s=0.1)
    with caplog.at_level(logging.WARNING, logger="agent.recorder"):
        try:
            _replay_into(recorder, tmp_path / "work")
        finally:
            recorder.close()
    assert len(got) == 1 and got[0].audio_path is None
    assert got[0].record["no_audio_reason"] == "recording_lost:ENOSPC", got[0].record
    assert counters["recorder.io_errors"] == 3 and counters["recorder.audio_lost"] == 1, dict(counters)
    lost = [r for r in caplog.records if r.levelno == logging.ERROR and "LOST" in r.getMessage()]
    assert len(lost) == 1 and CALLID in lost[0].getMessage() and "ENOSPC" in lost[0].getMessage()
    retries = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 2                                            # backed off, never a spin
    assert not list((tmp_path / "work").rglob("*.rtp"))


def test_a_render_that_fails_for_its_input_is_passed_on_at_once(tmp_path: Path) -> None:
    """No retry for a failure that would repeat: here the encoder refuses the format."""
    got: list = []
    counters = new_counters()
    recorder = _recorder(tmp_path / "out", got, counters, fmt="ogg", retries=50, retry_base_s=10)
    try:
        _replay_into(recorder, tmp_path / "work")
    finally:
        recorder.close()                  # would wait out the 10 s back-off if it retried
    assert len(got) == 1 and got[0].audio_path is None
    assert got[0].record["no_audio_reason"].startswith("render_failed:"), got[0].record["no_audio_reason"]
    assert counters["recorder.io_errors"] == 0 and counters["recorder.audio_lost"] == 0


def test_render_faults_show_in_metrics_and_health() -> None:
    snap = Snapshot(counters={"recorder.io_errors": 5, "recorder.retrying": 1, "recorder.audio_lost": 2})
    text = render_metrics(snap)
    for line in ("calln_recording_io_errors_total 5", "calln_recordings_retrying 1",
                 "calln_recordings_lost_total 2"):
        assert line in text.splitlines(), line
    healthy, reasons = health(snap, HealthLimits())
    assert not healthy
    assert "recordings not writable: 1 call(s) waiting to be rendered again" in reasons
    assert any(r.startswith("2 call(s) lost their audio") for r in reasons), reasons



def test_a_shutdown_gives_up_waiting_retries_by_name(tmp_path: Path, full_disk, caplog) -> None:
    """The daemon cannot wait out the back-off when it stops (``close(retry_for_s)``: half its
    shutdown budget): a call still waiting is named as lost and passed on without audio."""
    import time

    out, _ = full_disk
    got: list = []
    counters = new_counters()
    recorder = _recorder(out, got, counters, retries=50, retry_base_s=30)
    with caplog.at_level(logging.WARNING, logger="agent.recorder"):
        _replay_into(recorder, tmp_path / "work")
        assert wait_for(lambda: counters["recorder.retrying"] == 1, 30), dict(counters)
        started = time.monotonic()
        recorder.close(retry_for_s=0.5)
    assert time.monotonic() - started < 20, "close waited out the 30 s back-off"
    assert len(got) == 1 and got[0].audio_path is None
    assert got[0].record["no_audio_reason"] == "recording_lost:ENOSPC", got[0].record
    assert counters["recorder.audio_lost"] == 1 and counters["recorder.retrying"] == 0
    assert any(r.levelno == logging.ERROR and "LOST" in r.getMessage() and CALLID in r.getMessage()
               for r in caplog.records)
    assert not list((tmp_path / "work").rglob("*.rtp"))

"""Recordings are private: 0600 files in 0700 directories the agent makes, spool audio 0600,
a group setting loosens to 0640 / 0750, a looser existing spool is warned about."""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import stat
from pathlib import Path

import pytest

from agent.config import Config, RecordingSection, load_config
from agent.deliver.spool import Spool
from agent.private import loose_spool_modes
from agent.recorder import Recorder, write_to_directory
from agent.pipeline.engine import MediaMode
from agent.replay import replay

import sys
from _lifecycle_lib import REPO, start_cli

sys.path.insert(0, str(REPO / "tests" / "deliver"))

PCAP = REPO / "pcaps" / "basic_udp.pcap"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _record_into(out: Path, settings: RecordingSection) -> list[Path]:
    recorder = Recorder(settings, out, write_to_directory(out, settings.group), fmt="wav", workers=1,
                        stop_on_signals=False)
    try:
        replay([PCAP], Config(), recorder, workdir=out.parent / "work", media=MediaMode.DEFERRED, progress=False)
    finally:
        recorder.close()
    return sorted(p for p in out.iterdir())


def test_recordings_and_records_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    os.umask(0o022)                              # the usual umask: it must not decide
    files = _record_into(tmp_path / "new" / "out", RecordingSection())
    assert {p.suffix for p in files} == {".wav", ".json"}
    assert {_mode(p) for p in files} == {0o600}
    assert _mode(tmp_path / "new" / "out") == 0o700


def test_a_named_group_may_read(tmp_path: Path) -> None:
    # root can give files any group: take one it is not in by default, so the chown shows
    others = [g for g in grp.getgrall() if g.gr_gid != os.getegid()] if os.geteuid() == 0 else []
    gid = others[0].gr_gid if others else os.getegid()
    group = grp.getgrgid(gid).gr_name
    files = _record_into(tmp_path / "out", RecordingSection(group=group))
    assert {_mode(p) for p in files} == {0o640} and {p.stat().st_gid for p in files} == {gid}
    assert _mode(tmp_path / "out") == 0o750


def test_unknown_group_is_refused_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text('[recording]\ngroup = "no-such-group-calln"\n')
    with pytest.raises(Exception, match="no group named"):
        load_config(cfg)


def test_cli_replay_out_files_are_private(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_cli("replay", str(PCAP), "--out", str(out), "--format", "mp3", "-q")
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    files = [p for p in out.iterdir() if p.is_file()]
    assert files and {_mode(p) for p in files} == {0o600}


def test_spool_audio_is_0600_and_a_loose_spool_is_warned_about(tmp_path: Path, caplog) -> None:
    from deliver_helpers import make_audio, make_record  # noqa: PLC0415 (tests/deliver helper)
    audio, _ = make_audio(tmp_path, 1, 5000)
    os.chmod(audio, 0o644)
    spool = Spool(tmp_path / "spool")
    call_id = spool.enqueue(make_record(1), audio, "audio/mpeg")
    assert _mode(spool.audio_path_of(spool.state_of(call_id))) == 0o600
    assert _mode(spool.dir) == 0o700 and loose_spool_modes(spool.dir) == []
    os.chmod(spool.dir, 0o755)
    caplog.set_level(logging.WARNING, logger="agent.deliver")
    Spool(tmp_path / "spool")
    assert "spool not private" in caplog.text and "drwxr-xr-x" in caplog.text


def test_check_config_warns_about_a_loose_spool(tmp_path: Path) -> None:
    from agent import run
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    os.chmod(spool, 0o755)
    config = dataclasses.replace(Config(), spool=dataclasses.replace(Config().spool, dir=str(spool)))
    results = run.check_config(config, ["lo"])
    assert any(level == "warn" and "spool not private" in msg for level, msg in results), results


def test_replay_out_from_the_command_line_makes_a_private_directory(tmp_path: Path) -> None:
    import subprocess
    out = tmp_path / "made" / "by" / "cli"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--workers", "1",
                    "--format", "wav", "--out", str(out), str(PCAP)],
                   check=True, env=env, capture_output=True, timeout=120)
    assert _mode(out) == 0o700
    files = sorted(out.iterdir())
    assert {p.suffix for p in files} == {".wav", ".json"} and {_mode(p) for p in files} == {0o600}

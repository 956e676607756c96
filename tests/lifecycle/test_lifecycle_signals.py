"""SIGINT and SIGTERM stop a command within seconds, with one line and no traceback: what
was finished is kept whole, nothing half-done is left behind."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from _lifecycle_lib import long_capture, start_cli, wait_for

STOP_BOUND_S = 20       # a hang detector only: the run below takes ~1 s on a loaded machine


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    return long_capture(tmp_path_factory.mktemp("cap") / "many.pcap")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_replay_out_and_keeps_what_was_finished(tmp_path: Path, capture: Path, sig) -> None:
    out = tmp_path / "out"
    proc = start_cli("replay", str(capture), "--out", str(out), "--format", "mp3", "--workers", "2", "-q")
    try:
        # some calls are finished and written, others are still to come
        assert wait_for(lambda: out.is_dir() and len(list(out.glob("*.json"))) >= 3, 60), "nothing written"
        assert proc.poll() is None, "the replay ended before the signal: capture too short"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=STOP_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert proc.returncode == 128 + sig and f"interrupted by {sig.name}" in text, (proc.returncode, text)
    records = sorted(out.glob("*.json"))
    assert 3 <= len(records) < 60
    for path in records:                      # every record kept has its whole recording
        record = json.loads(path.read_text())
        audio = out / record["recording"]["file"]
        assert audio.stat().st_size > 1000 and audio.with_suffix(".json") == path
    assert sorted(p.with_suffix(".json") for p in out.glob("*.mp3")) == records   # no audio without record
    assert not list(out.glob("*.part")) and not list(out.glob("*.pcm"))
    assert not [p for p in out.rglob("*") if p.suffix not in (".json", ".mp3") and p.is_file()]


def test_sigint_stops_replay_deliver_and_keeps_the_spool(tmp_path: Path, capture: Path) -> None:
    from agent.deliver.spool import Spool
    spool_dir = tmp_path / "spool"
    cfg = tmp_path / "agent.toml"
    # nothing listens on this port: uploads fail and back off, the spool keeps every call
    cfg.write_text(f'[api]\nurl = "https://127.0.0.1:9"\nusername = "agent"\nformat = "wav"\n'
                   f'[spool]\ndir = "{spool_dir}"\n[recording]\nworkers = 2\n')
    proc = start_cli("--config", str(cfg), "replay", str(capture), "--deliver", "-q",
                     env={"CALLN_PASSWORD": "secret"})
    try:
        assert wait_for(lambda: len(list((spool_dir / "calls").glob("*"))) >= 3, 60), "nothing spooled"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=STOP_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert "Traceback" not in text and proc.returncode == 130 and "interrupted by SIGINT" in text, text
    spool = Spool(spool_dir)
    entries = spool.list()
    assert len(entries) >= 3 and all(e.audio_path and e.audio_path.stat().st_size > 0 for e in entries), \
        [(e.state, e.reason, e.record.get("recording")) for e in entries if not e.audio_path]
    assert not list(spool.tmp_dir.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_inspect_waiting_on_stdin(sig) -> None:
    """A command waiting for input (``tcpdump ... | calln-agent inspect -``) stops too: 130 for
    SIGINT, 143 for SIGTERM, one line, no traceback."""
    import subprocess
    proc = start_cli("inspect", "-", stdin=subprocess.PIPE)
    try:
        assert not wait_for(lambda: proc.poll() is not None, 1.5), "inspect ended without input"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=STOP_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 128 + sig, (proc.returncode, text)
    assert "Traceback" not in text and f"interrupted by {sig.name}" in text, text

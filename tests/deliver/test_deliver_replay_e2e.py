"""Issue 4 proof through the agent's own pipeline: `replay --deliver` (engine → recorder →
spool → uploader → HTTPS receiver) stores each call exactly once, with the metadata the truth
file states and the same audio bytes `replay --out` writes for that call."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from agent.config import load_config
from agent.delivery import replay_and_deliver
from tests.conftest import PCAPS, REPO

CAPTURES = ("multi_call", "dtmf_rfc4733", "sipp_g711a")
TRUTH_FIELDS = ("callerphone", "callername", "destinationphone", "destinationname", "startdatetimeutc",
                "callermacaddress", "destinationmacaddress", "callermediaendpoint",
                "destinationmediaendpoint", "callerdtmf", "destinationdtmf")


def _config(tmp_path: Path, receiver, fmt: str):
    config = load_config(None, env={})
    return dataclasses.replace(
        config,
        api=dataclasses.replace(config.api, url=receiver.url, username="agent", password="secret",
                                ca_bundle=str(receiver.ca_path), format=fmt, chunk_bytes=8192),
        spool=dataclasses.replace(config.spool, dir=str(tmp_path / "spool")),
        agent=dataclasses.replace(config.agent, servername="tap-1", location="Test lab"),
    )


def _replay_out(capture: Path, out: Path, fmt: str) -> dict[str, bytes]:
    """callid -> recording bytes, from `replay --out` (the same code path, no delivery)."""
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(out),
                           "--format", fmt, str(capture)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, CALLN_CONFIG=""), timeout=300)
    assert proc.returncode == 0, proc.stderr
    audio = {}
    for meta in out.glob("*.json"):
        record = json.loads(meta.read_text())
        if record.get("recording"):
            audio[record["callid"]] = (out / record["recording"]["file"]).read_bytes()
    return audio


def test_replay_deliver_stores_every_call_once_with_truth_and_audio(tmp_path, receiver):
    captures = [PCAPS / f"{name}.pcap" for name in CAPTURES]
    truth = {}
    for name in CAPTURES:
        for call in json.loads((PCAPS / f"{name}.truth.json").read_text())["calls"]:
            truth[call["callid"]] = call
    config = _config(tmp_path, receiver, "mp3")
    for capture in captures:            # one at a time: the scenarios share addresses and times
        status, summary = replay_and_deliver([capture], config, deadline_s=120, progress=False)
        assert status == 0, summary
    stored = receiver.stored_calls()
    by_caller_start = {(c.meta["callerphone"], c.meta["startdatetimeutc"]): c for c in stored}
    assert len(stored) == len(truth) == len(by_caller_start)     # each call exactly once
    expected_audio: dict[str, bytes] = {}
    for capture in captures:
        expected_audio.update(_replay_out(capture, tmp_path / f"out-{capture.stem}", "mp3"))
    for callid, want in truth.items():
        got = by_caller_start[(want["callerphone"], want["startdatetimeutc"])]
        for field in TRUTH_FIELDS:
            if field in want:
                assert got.meta[field] == want[field], (callid, field)
        assert got.meta["servername"] == "tap-1" and got.meta["location"] == "Test lab"
        assert got.content_type == "audio/mpeg"
        assert got.audio == expected_audio[callid], callid    # byte for byte

    # Replaying the same captures again uploads nothing more (the delivered-ledger).
    for capture in captures:
        status, _ = replay_and_deliver([capture], config, deadline_s=60, progress=False)
        assert status == 0
    assert len(receiver.stored_calls()) == len(truth)

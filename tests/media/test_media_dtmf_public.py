"""DTMF on the public captures (../shared/pcaps/public) and the project's DTMF captures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PUBLIC = REPO / ".." / "shared" / "pcaps" / "public"


def inspect(path: Path, env=None) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "inspect", "--json", "-q", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def public(name: str) -> tuple[Path, dict]:
    path = PUBLIC / name
    if not path.is_file():
        pytest.skip("../shared/pcaps/public is not present")
    truth = json.loads((PUBLIC / "truth" / f"{name}.json").read_text())
    return path, truth


def test_sip_dtmf2_rfc2833_digits_on_the_caller_side() -> None:
    # 2502 (caller) calls 2504; the events flow 192.168.105.172 -> .110:4376, the port the
    # callee's SDP announced: media sent to the callee, i.e. the caller's key presses.
    path, truth = public("sip_dtmf2.pcap")
    rec = {r["callid"]: r for r in inspect(path)}["25672@192.168.105.110"]
    assert rec["callerdtmf"] == truth["summary"]["rfc2833_digits"] == "6789123"
    assert rec["destinationdtmf"] == ""
    assert {p["source"] for p in rec["dtmf"]} == {"rfc4733"}
    assert all(p["duration_ms"] == 120 for p in rec["dtmf"])


def test_dtmfsipinfo_digits() -> None:
    path, truth = public("dtmfsipinfo.pcap")
    (rec,) = inspect(path)
    assert rec["callerdtmf"] == truth["summary"]["sip_info_dtmf_digits"] == "1342"
    assert [p["source"] for p in rec["dtmf"]] == ["sip_info"] * 4


def test_fax_nse_event_is_not_a_digit() -> None:
    path, truth = public("fax-call-t38-ca-tdm-sip-fb-1.pcap")
    assert truth["summary"]["rfc2833_other_events"] == 1
    for rec in inspect(path):
        assert rec["callerdtmf"] == "" and rec["destinationdtmf"] == "", rec["callid"]


def test_redaction_blanks_digits(tmp_path: Path) -> None:
    import os

    cfg = tmp_path / "agent.toml"
    cfg.write_text("[recording]\nredact_dtmf_digits = true\n")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    if "--config" not in proc.stdout:
        pytest.skip("cli has no --config option")
    out = subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(cfg), "inspect",
                          "--json", "-q", str(REPO / "pcaps" / "dtmf_rfc4733.pcap")],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    if out.returncode != 0:
        pytest.skip(f"cli config handling differs: {out.stderr[-200:]}")
    (rec,) = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
    assert rec["callerdtmf"] == "" and rec["destinationdtmf"] == ""
    assert len(rec["dtmf"]) == 7 and all(p["digit"] == "" for p in rec["dtmf"])

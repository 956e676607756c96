"""The same quality whichever path sequenced the call: inspect (RTP taken as it arrives) and
replay --out (the raw media log sequenced in a worker, sequence_capture)."""

import json
import subprocess
import sys
from pathlib import Path

from bench.synth import write_calls
from tests.conftest import PCAPS, REPO, run_inspect


def test_recording_and_inspect_agree(tmp_path: Path) -> None:
    lossy = tmp_path / "lossy.pcap"
    write_calls(lossy, calls=2, concurrent=2, duration_s=10, loss=0.03, reorder=0.03, seed=11)
    captures = [PCAPS / "dtmf_rfc4733.pcap", PCAPS / "sipp_proxy_rtpengine.pcap", lossy]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", *map(str, captures), "--out", str(out),
                           "--format", "wav", "--workers", "1"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    recorded = {r["callid"]: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    inspected = {r["callid"]: r for r in run_inspect(*captures)}
    assert set(recorded) == set(inspected) and len(recorded) == 4
    lost = 0
    for callid, r in inspected.items():
        assert r["quality"] == recorded[callid]["quality"], callid
        assert [s.get("quality") for s in r["streams"]] == [s.get("quality") for s in recorded[callid]["streams"]]
        lost += sum(s["quality"]["lost"] for s in r["streams"] if "quality" in s)
    assert lost > 10                                  # the lossy calls really were lossy

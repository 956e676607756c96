"""Helpers shared by the capture-truth and tshark-oracle tests.

Owns: locating pcaps/ and its truth files, running ``agent.cli inspect --json`` on captures
(cached per capture for the test session), and comparing a call record with a truth entry.
Does not own any assertion policy beyond field equality; the tests decide what to check.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PCAPS_DIR = REPO_ROOT / "pcaps"
INSPECT_TIMEOUT_S = 120


def truth_files() -> list[Path]:
    return sorted(PCAPS_DIR.glob("*.truth.json"))


def load_truth(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def capture_of(truth_path: Path) -> Path:
    return PCAPS_DIR / load_truth(truth_path)["capture"]


def capture_files() -> list[Path]:
    return sorted(p for p in PCAPS_DIR.iterdir() if p.suffix in (".pcap", ".pcapng"))


def run_inspect(paths: list[Path | str]) -> list[dict]:
    """Run ``python -m agent.cli inspect --json PATHS`` and parse one JSON object per line."""
    cmd = [sys.executable, "-m", "agent.cli", "inspect", "--json", *map(str, paths)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=INSPECT_TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"inspect failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@functools.lru_cache(maxsize=None)
def inspect_cached(path: str) -> tuple[dict, ...]:
    """inspect --json of one capture, run once per test session."""
    return tuple(run_inspect([path]))


def _ssrc_int(value: object) -> int:
    if isinstance(value, str):
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    return int(value)  # type: ignore[arg-type]


def rtp_by_direction(record: dict) -> dict[int, tuple[int, set[int]]]:
    """direction -> (packets summed over the record's streams, set of SSRCs)."""
    out: dict[int, tuple[int, set[int]]] = {0: (0, set()), 1: (0, set())}
    for s in record.get("streams") or []:
        n, ssrcs = out.setdefault(int(s["direction"]), (0, set()))
        out[int(s["direction"])] = (n + int(s["packets"]), ssrcs | {_ssrc_int(s["ssrc"])})
    return out


def compare_call(record: dict, truth: dict) -> list[str]:
    """Every truth field of one call vs the agent's record; returns human-readable diffs."""
    diffs = []
    for key, want in truth.items():
        if key == "audio":
            by_dir = rtp_by_direction(record)
            for side, d in (("caller", 0), ("callee", 1)):
                got_n, got_ssrcs = by_dir.get(d, (0, set()))
                if got_n != want[f"{side}_rtp_packets"]:
                    diffs.append(f"{side} RTP packets (direction {d}): got {got_n}, "
                                 f"want {want[f'{side}_rtp_packets']}")
                if f"{side}_ssrcs" in want and got_ssrcs != set(want[f"{side}_ssrcs"]):
                    diffs.append(f"{side} SSRCs (direction {d}): got {sorted(got_ssrcs)}, "
                                 f"want {sorted(want[f'{side}_ssrcs'])}")
            continue
        if key not in record:
            diffs.append(f"{key}: missing from the record, want {want!r}")
        elif record[key] != want:
            diffs.append(f"{key}: got {record[key]!r}, want {want!r}")
    return diffs

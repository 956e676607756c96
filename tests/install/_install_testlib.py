"""Helpers of the install / command line tests: run calln-agent as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"


def cli(*args: str, cwd: Path | None = None, stdin: bytes | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``calln-agent ARGS`` from this checkout (PYTHONPATH), in ``cwd``; bytes out."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd or REPO, env=env,
                          input=stdin, capture_output=True, timeout=timeout)


def hostile_capture(tmp: Path) -> tuple[Path, str]:
    """display_names.pcap with the callee's display name replaced, byte for byte (the same
    length keeps every IP/UDP length right), by ESC ] 0 ; X BEL (set the window title) and
    U+202E (right-to-left override). Returns (capture, the hostile name)."""
    hostile = "\x1b]0;X\x07\u202e"
    data = (PCAPS / "display_names.pcap").read_bytes()
    assert len(hostile.encode()) == len(b"Bob Jones") and b"Bob Jones" in data
    path = tmp / "hostile.pcap"
    path.write_bytes(data.replace(b"Bob Jones", hostile.encode()))
    return path, hostile

"""Shared test fixtures: paths to the project's and the public captures, and inspect runners."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
PUBLIC = REPO.parent / "shared" / "pcaps" / "public"


def run_inspect(*paths: str | Path, env: dict | None = None) -> list[dict]:
    """Run ``calln-agent inspect --json`` exactly as a user would; return the call records."""
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "inspect", "--json", "-q",
                           *map(str, paths)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def public_dir() -> Path:
    if not PUBLIC.is_dir():
        pytest.skip("../shared/pcaps/public is not present (a user's clone)")
    return PUBLIC

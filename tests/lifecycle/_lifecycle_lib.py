"""Helpers of the lifecycle tests: a replay subprocess, a synthetic capture long enough to
interrupt, and the process tree read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def long_capture(path: Path, calls: int = 60) -> Path:
    """Many 20 s calls: a replay of it runs for several seconds on this machine."""
    sys.path.insert(0, str(REPO))
    from bench.synth import write_calls
    if not path.exists():
        write_calls(path, calls=calls, concurrent=20, duration_s=20)
    return path


def start_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.pop("CALLN_TEST_KILL_AT", None)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) of a live process, None when gone (zombies count as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (None if fields[0] in ("Z", "X") else (int(fields[1]), fields[0]))


def descendants(root: int) -> set[int]:
    """Every live process whose parent chain leads to ``root``."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                parents[int(name)] = st[0]
    out: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - out
        out |= frontier
    return out


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if _stat(p) is not None}


def wait_for(predicate, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return predicate()

"""Nothing survives its parent: a ``kill -9`` of the agent takes its forkserver, render
workers and resource tracker with it within 2 s (PR_SET_PDEATHSIG down the chain)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from _lifecycle_lib import alive, descendants, long_capture, start_cli, wait_for

ORPHAN_GRACE_S = 2.0


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    return long_capture(tmp_path_factory.mktemp("cap") / "many.pcap")


def test_sigkill_of_replay_leaves_no_descendant(tmp_path: Path, capture: Path) -> None:
    proc = start_cli("replay", str(capture), "--out", str(tmp_path / "out"), "--format", "mp3",
                     "--workers", "2", "-q")
    try:
        # forkserver + 2 workers + resource tracker: wait until the tree is complete
        kids = wait_for(lambda: (lambda d: d if len(d) >= 4 else None)(descendants(proc.pid)), 30)
        assert kids and len(kids) >= 4, f"tree never formed: {kids}"
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left = wait_for(lambda: not alive(kids), ORPHAN_GRACE_S) and set() or alive(kids)
        assert left == set(), f"{len(left)} of {len(kids)} descendants outlived the agent"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

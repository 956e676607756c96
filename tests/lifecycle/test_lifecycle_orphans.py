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


@pytest.mark.netns
def test_sigkill_of_run_leaves_no_descendant(tmp_path: Path) -> None:
    """The daemon: capture process, its forkserver, render workers, resource trackers."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))
    from _live_testlib import (PCAPS, AgentProcess, pcap_frames, require_root_netns, send_frames,
                               veth_pair, write_config)

    from agent.receiver import ensure_certificates

    require_root_netns()
    ca = ensure_certificates(tmp_path / "certs")[0]
    cfg = write_config(tmp_path / "agent.toml", url="https://127.0.0.1:9", ca=ca, spool=tmp_path / "spool")
    cfg.write_text(cfg.read_text().replace("workers = 1", "workers = 2"))
    with veth_pair() as (a, b):
        agent = AgentProcess(cfg, [b], tmp_path / "agent.log")
        try:
            agent.wait_ready()
            # a finished call makes the pool start its render workers (they start on demand)
            send_frames(a, (frame for _, frame in pcap_frames(PCAPS / "multi_call.pcap")))
            # resource tracker, capture process, forkserver, >= 1 render worker
            kids = wait_for(lambda: (lambda d: d if len(d) >= 4 else None)(descendants(agent.proc.pid)), 30)
            assert kids and len(kids) >= 4, f"tree never formed: {kids}\n{agent.log_text()}"
        finally:
            agent.kill()
        left = wait_for(lambda: not alive(kids), ORPHAN_GRACE_S) and set() or alive(kids)
    assert left == set(), f"{len(left)} of {len(kids)} descendants outlived the agent"


def test_a_stop_kills_hung_render_workers_and_no_other_child(tmp_path: Path) -> None:
    """After a stop's grace a render still running has its worker killed, found among this
    process's multiprocessing children (no private pool state); a child started before the
    recorder is left alone."""
    import multiprocessing
    import os
    import time

    from agent.config import RecordingSection
    from agent.recorder import ABORT_WAIT_S, Recorder

    bystander = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    bystander.start()
    recorder = Recorder(RecordingSection(), tmp_path / "out", lambda rendered: None, workers=1,
                        stop_on_signals=False)
    try:
        worker = recorder.pool.submit(os.getpid).result(timeout=60)
        hung = recorder.pool.submit(time.sleep, 600)          # a render that never ends
        recorder._futures[hung] = None
        assert wait_for(hung.running, 30), "the job never started"
        started = time.monotonic()
        recorder._abort()
        assert time.monotonic() - started < ABORT_WAIT_S + 20, "the stop waited for the hung render"
        assert not hung.cancelled(), "the render was cancelled before it ran: nothing was tested"
        assert wait_for(lambda: not alive({worker}), ORPHAN_GRACE_S), "the hung worker survived the stop"
        assert bystander.is_alive(), "a child the recorder did not start was killed"
    finally:
        bystander.kill()
        bystander.join()

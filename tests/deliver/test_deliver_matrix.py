"""The fault matrix (issue 14): every outcome at every step of an upload, against the
project's receiver with scripted faults. Each cell ends with the call stored exactly once,
or in a state an operator can see (parked with its reason, uploads stopped), and the
outcome shows in the metrics.

One call of three chunks (first, middle, last); the fault hits the first request of its
step once, then the server behaves. Every cell runs with API v1 and with v2. Back-off runs on a fake clock; only the "timeout"
cells wait for real (the client's read timeout is shrunk to 0.3 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.deliver.spool import Spool
from agent.deliver.uploader import Uploader
from agent.metrics import HealthLimits, Snapshot, health, render_metrics
from agent.receiver import FAULT_ACTIONS, FAULT_STEPS, FaultRule, Faults, ReceiverServer, phones_of
from deliver_helpers import FakeTime, api_for, make_audio, make_record

CHUNK_BYTES = 4096
AUDIO_BYTES = 3 * CHUNK_BYTES - 100      # three chunks: first, middle, last
READ_TIMEOUT_S = 0.3
HOLD_S = 0.8                             # the "timeout" fault holds the answer this long

# Final outcomes
DELIVERED = ("delivered", 1)                          # stored once, confirmed
UNCONFIRMED = ("delivered_unconfirmed", 1)            # stored once; the re-sent last chunk got 404
PARKED_413 = ("parked:413 Payload Too Large", 0)      # the operator lowers chunk_bytes, retries
STOPPED_CONFIG = ("ready+stopped:config", 0)          # uploads stopped, the call stays spooled

T, X, A, Q, P, C, U = ("deliver.upload.transient", "deliver.upload.expired_restart",
                       "deliver.upload.auth_failed", "deliver.upload.quota", "deliver.upload.parked",
                       "deliver.upload.config_error", "deliver.upload.delivered_unconfirmed")

# (step, outcome) -> (final outcome, the counter that saw the fault)
MATRIX: dict[tuple[str, str], tuple[tuple[str, int], str]] = {
    ("post", "no_answer"): (DELIVERED, T),
    ("post", "reset_before"): (DELIVERED, T),
    ("post", "reset_after"): (DELIVERED, T),
    ("post", "timeout"): (DELIVERED, T),
    ("post", "500_before"): (DELIVERED, T),
    ("post", "500_after"): (DELIVERED, T),     # an orphan temp id on the server, harmless
    ("post", "503"): (DELIVERED, T),
    ("post", "404_expired"): (STOPPED_CONFIG, C),  # POST /api/call 404: not the CallN API
    ("post", "401"): (DELIVERED, A),
    ("post", "403"): (DELIVERED, Q),
    ("post", "413"): (PARKED_413, P),

    ("first", "no_answer"): (DELIVERED, T),
    ("first", "reset_before"): (DELIVERED, T),
    ("first", "reset_after"): (DELIVERED, T),
    ("first", "timeout"): (DELIVERED, T),
    ("first", "500_before"): (DELIVERED, T),
    ("first", "500_after"): (DELIVERED, T),    # the re-sent chunk is a harmless repeat
    ("first", "503"): (DELIVERED, T),
    ("first", "404_expired"): (DELIVERED, X),  # step 1 again, new temp id
    ("first", "401"): (DELIVERED, A),
    ("first", "403"): (DELIVERED, Q),
    ("first", "413"): (PARKED_413, P),

    ("middle", "no_answer"): (DELIVERED, T),
    ("middle", "reset_before"): (DELIVERED, T),
    ("middle", "reset_after"): (DELIVERED, T),
    ("middle", "timeout"): (DELIVERED, T),
    ("middle", "500_before"): (DELIVERED, T),
    ("middle", "500_after"): (DELIVERED, T),
    ("middle", "503"): (DELIVERED, T),
    ("middle", "404_expired"): (DELIVERED, X),
    ("middle", "401"): (DELIVERED, A),
    ("middle", "403"): (DELIVERED, Q),
    ("middle", "413"): (PARKED_413, P),

    # The last chunk completes the call. Where the server stored it and the answer failed,
    # the re-send gets 404: delivered, unconfirmed (never a second upload).
    ("last", "no_answer"): (UNCONFIRMED, U),
    ("last", "reset_before"): (DELIVERED, T),      # not stored: the re-send completes it
    ("last", "reset_after"): (UNCONFIRMED, U),
    ("last", "timeout"): (UNCONFIRMED, U),
    ("last", "500_before"): (DELIVERED, T),
    ("last", "500_after"): (UNCONFIRMED, U),
    ("last", "503"): (DELIVERED, T),
    ("last", "404_expired"): (DELIVERED, X),       # first send of the last chunk: expired
    ("last", "401"): (DELIVERED, A),
    ("last", "403"): (DELIVERED, Q),
    ("last", "413"): (PARKED_413, P),
}


def test_matrix_covers_every_step_and_outcome() -> None:
    assert set(MATRIX) == {(s, a) for s in FAULT_STEPS for a in FAULT_ACTIONS}


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
@pytest.mark.parametrize(("step", "action"), sorted(MATRIX), ids=lambda v: str(v))
def test_fault_cell(tmp_path: Path, cert_dir: Path, step: str, action: str, version: int) -> None:
    (final, stored_expected), counter = MATRIX[(step, action)]
    rx = ReceiverServer(tmp_path / "rx", cert_dir=cert_dir, username="agent", password="secret",
                        faults=Faults(script=[FaultRule(step, action)], hold_s=HOLD_S))
    rx.start()
    try:
        spool = Spool(tmp_path / "spool", retention_days=1.0)     # keep done calls to look at
        audio, data = make_audio(tmp_path, 0, AUDIO_BYTES)
        rec = make_record(0)
        call_id = spool.enqueue(rec, audio, "audio/mpeg")
        ft = FakeTime()
        up = Uploader(spool, api_for(rx, chunk_bytes=CHUNK_BYTES, read_timeout_s=READ_TIMEOUT_S,
                                     version=version),
                      clock=ft.clock, sleep=ft.sleep, rng=lambda: 0.5,
                      quota_backoff_s=3600.0, auth_retry_s=900.0)
        finished = up.run_until_idle(deadline_s=24 * 3600)
        up.close()
        stored = rx.stored_calls()
    finally:
        rx.stop()

    assert rx.stats.get(f"fault.{step}.{action}") == 1, "the fault was applied"
    assert len(stored) == stored_expected
    for c in stored:
        assert c.audio == data and phones_of(c.meta) == (rec["callerphone"], rec["destinationphone"])
        assert ("caller" in c.meta) is (version == 2)      # the version spoken is the one stored
    entry = spool.get(call_id)
    assert spool.counters[counter] >= 1
    snap = Snapshot(counters=dict(spool.counters), spool_states=spool.summary(),
                    upload_problems=tuple(up.problems()))
    text = render_metrics(snap)
    ok, reasons = health(snap, HealthLimits())
    if final == STOPPED_CONFIG[0]:
        assert not finished and entry.state == "ready"
        assert up.config_error and any("uploads stopped" in r for r in reasons) and not ok
        assert 'calln_upload_faults_total{kind="config"} 1' in text
        return
    assert finished and ok
    if final.startswith("parked:"):
        assert (entry.state, entry.reason) == ("parked", final.partition(":")[2])
        assert 'calln_uploads_total{result="parked"} 1' in text
        assert 'calln_spool_calls{state="parked"} 1' in text
        return
    assert entry.state == final
    assert 'calln_uploads_total{result="delivered"} 1' in text
    assert f'calln_spool_calls{{state="{final}"}} 1' in text
    if final == UNCONFIRMED[0]:
        assert 'calln_upload_faults_total{kind="unconfirmed"} 1' in text
        assert rx.stats.get("created") == 1        # never started again from step 1

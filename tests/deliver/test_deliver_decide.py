"""The rule of the last chunk, as a pure function, and its state across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.deliver import client as cl
from agent.deliver.decide import CHUNK, LAST_CHUNK, POST, Action, decide
from agent.deliver.spool import DELIVERED_UNCONFIRMED, Spool
from agent.deliver.uploader import Uploader
from agent.receiver import FaultRule, Faults
from deliver_helpers import FakeTime, api_for, make_audio, make_record

LOST = cl.Outcome(cl.TRANSIENT, None, "ReadTimeout", response_lost=True)
NOT_SENT = cl.Outcome(cl.TRANSIENT, None, "connect: refused")
E500 = cl.Outcome(cl.TRANSIENT, 500, "500 Server Error")
E503 = cl.Outcome(cl.TRANSIENT, 503, "503 Service Unavailable")
E429 = cl.Outcome(cl.TRANSIENT, 429, "429 Too Many Requests")
E404 = cl.Outcome(cl.EXPIRED, 404, "Temporary callid not found")
E401 = cl.Outcome(cl.AUTH, 401, "Unauthorized")
OK = cl.Outcome(cl.OK, 200, complete=True)


@pytest.mark.parametrize(("outcome", "uncertain_after"), [
    (LOST, True), (E500, True), (E503, True),          # may have been stored
    (NOT_SENT, False), (E429, False), (E401, False),   # certainly not stored
])
def test_uncertain_outcomes_of_the_last_chunk(outcome: cl.Outcome, uncertain_after: bool) -> None:
    d = decide(LAST_CHUNK, outcome, False)
    assert d.last_chunk_uncertain is uncertain_after
    then = decide(LAST_CHUNK, E404, d.last_chunk_uncertain)
    assert then.action is (Action.DELIVERED_UNCONFIRMED if uncertain_after else Action.RESTART)


def test_uncertainty_is_kept_until_the_call_is_done() -> None:
    d = decide(LAST_CHUNK, E500, False)
    for definite in (NOT_SENT, E429, E401):     # later answers say nothing about the first send
        d = decide(LAST_CHUNK, definite, d.last_chunk_uncertain)
        assert d.last_chunk_uncertain
    assert decide(LAST_CHUNK, E404, d.last_chunk_uncertain).action is Action.DELIVERED_UNCONFIRMED
    assert decide(LAST_CHUNK, OK, True) == decide(LAST_CHUNK, OK, False)
    assert decide(LAST_CHUNK, OK, True).action is Action.DELIVERED


def test_404_before_the_last_chunk_always_restarts() -> None:
    assert decide(CHUNK, E404, False).action is Action.RESTART
    assert decide(CHUNK, E500, False).last_chunk_uncertain is False
    assert decide(POST, cl.Outcome(cl.OK, 200, tempcallid="t"), True).last_chunk_uncertain is False


def test_uncertain_last_chunk_survives_a_restart(tmp_path: Path, receiver) -> None:
    """500 after the server stored the call; the agent restarts before the re-send."""
    receiver.faults = Faults(script=[FaultRule("last", "500_after")])
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    audio, data = make_audio(tmp_path, 0, 2 * 4096)
    call_id = spool.enqueue(make_record(0), audio, "audio/mpeg")
    ft = FakeTime()
    first = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert first.run_once()                       # POST, chunk 1, chunk 2 -> 500, back-off
    first.close()
    assert spool.get(call_id).last_chunk_attempted
    restarted = Spool(tmp_path / "spool", retention_days=1.0)
    ft2 = FakeTime(wall_at_start=ft.wall() + 3600)
    second = Uploader(restarted, api_for(receiver), clock=ft2.clock, sleep=ft2.sleep)
    assert second.run_until_idle(deadline_s=3600)
    second.close()
    [stored] = receiver.stored_calls()
    assert stored.audio == data
    assert restarted.get(call_id).state == DELIVERED_UNCONFIRMED
    assert receiver.stats["created"] == 1 and receiver.stats["not_found"] == 1


def test_a_park_keeps_the_uncertainty() -> None:
    park = cl.Outcome(cl.PARK, 413, "413 Payload Too Large")
    assert decide(LAST_CHUNK, park, True).last_chunk_uncertain
    assert not decide(CHUNK, park, False).last_chunk_uncertain


def test_retry_of_a_call_parked_after_an_uncertain_last_chunk_never_posts_again(
        tmp_path: Path, receiver) -> None:
    """The server stores the call and answers 500; the re-sent last chunk is refused (413), so
    the call is parked. The operator's retry must re-send the last chunk (404: delivered,
    unconfirmed), not POST again: that would store the call twice."""
    receiver.faults = Faults(script=[FaultRule("last", "500_after"), FaultRule("last", "413")])
    spool = Spool(tmp_path / "spool", retention_days=1.0)
    audio, data = make_audio(tmp_path, 0, 2 * 4096)
    call_id = spool.enqueue(make_record(0), audio, "audio/mpeg")
    ft = FakeTime()
    up = Uploader(spool, api_for(receiver), clock=ft.clock, sleep=ft.sleep)
    assert up.run_until_idle(deadline_s=3600)
    parked = spool.get(call_id)
    assert parked.state == "parked" and "uncertain last chunk" in parked.reason
    spool.retry(call_id)
    assert up.run_until_idle(deadline_s=3600)
    up.close()
    [stored] = receiver.stored_calls()
    assert stored.audio == data
    assert spool.get(call_id).state == DELIVERED_UNCONFIRMED
    assert receiver.stats["created"] == 1

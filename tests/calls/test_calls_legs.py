"""ConversationGrouper: PBX legs linked into conversations, one upload per conversation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.calls.call import CALLEE, CALLER, Call, CallState
from agent.calls.legs import ConversationGrouper, group_all, link_reason, numbers_match
from agent.calls.macs import MacTable
from agent.calls.record import build_record
from agent.config import Config, SipSection
from agent.pipeline.finishing import FinishedCall
from agent.sip.uri import parse_name_addr
from tests.conftest import PCAPS, run_inspect

S = 1_000_000_000
CONFIG = Config()


def dialog(callid: str, frm: str, to: str, caller_sip: str, callee_sip: str, start_s: float,
           end_s: float | None, *, answered: bool = True, media: tuple = ((), ()),
           seen: tuple = (None, None), **extra) -> Call:
    call = Call(callid=callid, start_ts_ns=int(start_s * S), from_tag="f-" + callid)
    call.from_addr = parse_name_addr(f"<sip:{frm}@example>")
    call.to_addr = parse_name_addr(f"<sip:{to}@example>")
    call.parties[CALLER].sip_addr = caller_sip
    call.parties[CALLEE].sip_addr = callee_sip
    for side in (CALLER, CALLEE):
        call.parties[side].sdp_endpoints = list(media[side])
        call.parties[side].seen_endpoint = seen[side]
    if answered:
        call.answer_ts_ns = int((start_s + 1) * S)
    if end_s is not None:
        call.end_ts_ns = int(end_s * S)
        call.state = CallState.ENDED
        call.end_reason = "bye" if answered else "cancel"
    for key, value in extra.items():
        setattr(call, key, value)
    return call


def finished(call: Call) -> FinishedCall:
    return FinishedCall(call=call, record=build_record(call, CONFIG, MacTable()), media_log=None)


def uploads(out: list[FinishedCall]) -> list[str]:
    return [f.call.callid for f in out if f.record["upload"]]


def b2bua_pair(end_s: float = 20.0) -> tuple[Call, Call]:
    a = dialog("A", "1001", "1002", "10.0.0.10:5060", "10.0.0.1:5060", 0.0, end_s,
               media=([("10.0.0.10", 40000)], [("10.0.0.1", 30000)]),
               seen=(("10.0.0.10", 40000), ("10.0.0.1", 30000)))
    b = dialog("B", "1001", "1002", "10.0.0.1:5060", "10.0.0.20:5060", 0.05, end_s + 0.01,
               media=([("10.0.0.1", 30002)], [("10.0.0.20", 50000)]),
               seen=(("10.0.0.1", 30002), ("10.0.0.20", 50000)))
    return a, b


def test_b2bua_pair_one_upload_linked_by_pbx_rule() -> None:
    a, b = b2bua_pair()
    assert link_reason(a, b) == "pbx"
    out = group_all([finished(b), finished(a)])
    assert [f.call.callid for f in out] == ["A", "B"]
    assert uploads(out) == ["A"]
    assert {f.record["conversation_id"] for f in out} == {"A"}
    assert out[1].record["leg_of"] == "A" and out[1].record["leg"] == 1
    assert out[0].record["leg_of"] == "" and out[0].record["connected"]["phone"] == "1002"


def test_unrelated_calls_stay_apart() -> None:
    a = dialog("A", "1001", "1002", "10.0.0.10:5060", "10.0.0.20:5060", 0.0, 10.0)
    b = dialog("B", "1003", "1004", "10.0.0.30:5060", "10.0.0.40:5060", 0.5, 10.0)
    out = group_all([finished(a), finished(b)])
    assert uploads(out) == ["A", "B"]
    assert [f.record["conversation_id"] for f in out] == ["A", "B"]


def test_shared_media_endpoint_links_only_when_overlapping() -> None:
    ep = ("10.0.0.20", 8000)
    a = dialog("A", "u1", "x", "10.0.0.10:5060", "10.0.0.99:5060", 0.0, 10.0, media=((), (ep,)))
    b = dialog("B", "u9", "y", "10.0.0.98:5060", "10.0.0.20:5060", 3.0, 10.0, media=((), (ep,)))
    assert link_reason(a, b) == "media"
    later = dialog("C", "u9", "y", "10.0.0.98:5060", "10.0.0.20:5060", 11.0, 20.0, media=((), (ep,)))
    assert link_reason(a, later) is None          # port reuse by the next call is not a link


def test_session_id_links() -> None:
    a = dialog("A", "1", "2", "10.0.0.10:5060", "10.0.0.1:5060", 0.0, 10.0, session_id="ab" * 16)
    b = dialog("B", "3", "4", "10.0.0.2:5060", "10.0.0.20:5060", 5.0, 10.0, session_id="ab" * 16)
    out = group_all([finished(a), finished(b)])
    assert {f.record["conversation_id"] for f in out} == {"ab" * 16}
    assert len(uploads(out)) == 1


def test_configured_pbx_address_links_multi_homed_sbc() -> None:
    a = dialog("A", "anon", "061963177", "10.35.60.72:5060", "10.35.60.100:5060", 0.0, 80.0)
    b = dialog("B", "anon", "061963177", "138.132.169.101:5060", "192.168.100.219:5060", 0.006, 80.0)
    assert link_reason(a, b) is None
    assert link_reason(a, b, frozenset({"138.132.169.101"})) == "pbx"
    out = group_all([finished(a), finished(b)], SipSection(pbx_addresses=("138.132.169.101",)))
    assert uploads(out) == ["A"]


def test_direct_transfer_uploads_both_dialogs_each_second_once() -> None:
    # A talks to B (0..10 s); B REFERs A to C; A's new dialog with C runs 10.2..30 s.
    a_b = dialog("AB", "1001", "1002", "10.0.0.10:5060", "10.0.0.20:5060", 0.0, 10.0,
                 refers=[(int(9.9 * S), "<sip:1003@example>")])
    a_c = dialog("AC", "1001", "1003", "10.0.0.10:5060", "10.0.0.30:5060", 10.2, 30.0)
    assert link_reason(a_b, a_c) == "refer"
    out = group_all([finished(a_b), finished(a_c)])
    assert uploads(out) == ["AB", "AC"]
    assert {f.record["conversation_id"] for f in out} == {"AB"}


def test_replaces_links_attended_transfer() -> None:
    old = dialog("OLD", "1001", "1002", "10.0.0.10:5060", "10.0.0.20:5060", 0.0, 12.0)
    new = dialog("NEW", "1002", "1003", "10.0.0.20:5060", "10.0.0.30:5060", 11.5, 40.0, replaces="OLD")
    assert link_reason(old, new) == "replaces"


def test_feature_code_never_becomes_the_number() -> None:
    a = dialog("A", "1001", "1002", "10.0.0.10:5060", "10.0.0.1:5060", 0.0, 20.0,
               connected=parse_name_addr('"Carol" <sip:1003@pbx>'))
    pick = dialog("P", "1003", "*8", "10.0.0.30:5060", "10.0.0.1:5060", 3.0, 20.0)
    single = build_record(pick, CONFIG, MacTable())
    assert single["destinationphone"] == "" and single["raw"]["callee_number"] == "*8"
    out = group_all([finished(a), finished(pick)])
    assert link_reason(a, pick) == "connected"
    rec = {f.call.callid: f.record for f in out}
    assert rec["P"]["destinationphone"] == "1001"          # the party reached: the first caller
    assert uploads(out) == ["A"]


def test_leg_held_until_linked_live_dialog_ends_plus_grace() -> None:
    a, b = b2bua_pair(end_s=20.0)
    b.end_ts_ns, b.state = None, CallState.CONFIRMED      # leg B still in progress
    live = {"B": b}
    grouper = ConversationGrouper(SipSection(), live=live)
    assert grouper.feed(finished(a), int(20 * S)) == []
    assert grouper.release(int(40 * S)) == []             # still waiting for B
    b.end_ts_ns, b.state = int(60 * S), CallState.ENDED
    del live["B"]
    assert grouper.feed(finished(b), int(60 * S)) == []   # grace not over
    assert grouper.release(int(62 * S)) == []
    out = grouper.release(int(65 * S))
    assert [f.call.callid for f in out] == ["A", "B"] and uploads(out) == ["A"]
    assert grouper.flush() == []


def test_every_leg_policy_uploads_all_but_links() -> None:
    a, b = b2bua_pair()
    out = group_all([finished(a), finished(b)], policy="every_leg")
    assert uploads(out) == ["A", "B"] and {f.record["conversation_id"] for f in out} == {"A"}


def test_numbers_match() -> None:
    assert numbers_match("12263382742", "9998112263382742")
    assert numbers_match("12675941249_Uclx8s", "+12675941249")
    assert not numbers_match("1002", "91002")            # short: exact only
    assert not numbers_match("", "")


# ---------------------------------------------------------------- real captures

def _upload_count(records: list[dict]) -> int:
    return sum(1 for r in records if r["upload"])


@pytest.mark.parametrize("name,caller,dest,connected", [
    ("b2bua-asterisk.pcapng", "telephone1", "2302", "telephone2"),
    ("voipshark_sip-rtp-normal_call_two_parties.pcap", "1111", "2222", "2222"),
])
def test_public_b2bua_captures_one_upload(public_dir: Path, name: str, caller: str, dest: str,
                                          connected: str) -> None:
    records = run_inspect(public_dir / name)
    assert len(records) == 2 and _upload_count(records) == 1
    assert len({r["conversation_id"] for r in records}) == 1
    up = next(r for r in records if r["upload"])
    assert (up["callerphone"], up["destinationphone"], up["connected"]["phone"]) == (caller, dest, connected)
    assert up["leg"] == 0
    other = next(r for r in records if not r["upload"])
    assert other["leg_of"] == up["conversation_id"]


def test_doubled_mirror_gives_identical_inspect_output() -> None:
    def inspect_text(name: str) -> str:
        return subprocess.run([sys.executable, "-m", "agent.cli", "inspect", "-q", "--json",
                               f"pcaps/{name}"], capture_output=True, text=True, check=True,
                              cwd=PCAPS.parent).stdout
    single, doubled = inspect_text("pbx_b2bua.pcap"), inspect_text("pbx_doubled.pcap")
    # identical but for the capture file each record names
    assert single.replace('"pcaps/pbx_b2bua.pcap"', '"X"') == doubled.replace('"pcaps/pbx_doubled.pcap"', '"X"')
    assert len(single.splitlines()) == 2 and '"capture_files": ["pcaps/pbx_b2bua.pcap"]' in single


def test_spool_sink_skips_legs_not_uploaded(tmp_path: Path) -> None:
    from agent.delivery import SpoolSink
    from agent.recorder import Rendered

    class FakeSpool:
        def __init__(self) -> None:
            self.records: list[dict] = []

        def enqueue(self, record, *args, **kwargs):
            self.records.append(record)
            return "id"

        def enqueue_many(self, calls):
            return [self.enqueue(call.record) for call in calls], None

    spool = FakeSpool()
    sink = SpoolSink(spool, CONFIG)  # type: ignore[arg-type]
    audio = tmp_path / "leg.wav"
    audio.write_bytes(b"RIFF")
    sink(Rendered(record={"callid": "B", "upload": False}, audio_path=audio, no_audio_reason=""))
    sink(Rendered(record={"callid": "A", "upload": True}, audio_path=None, no_audio_reason="no_rtp"))
    assert [r["callid"] for r in spool.records] == ["A"]
    assert sink.legs_skipped == 1 and sink.enqueued == 1 and not audio.exists()


def test_unanswered_ring_leg_is_never_the_upload() -> None:
    a, _ = b2bua_pair()
    ring = dialog("R", "1001", "1002", "10.0.0.1:5060", "10.0.0.21:5060", 0.04, 3.0, answered=False)
    out = group_all([finished(ring), finished(a)])
    assert uploads(out) == ["A"] and out[1].record["leg_of"] == "A"

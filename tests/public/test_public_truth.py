"""Every public capture: the calls, numbers, names and outcomes the agent reports agree
with the tshark-derived truth files in ../shared/pcaps/public/truth/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PUBLIC, run_inspect

TRUTHS = sorted((PUBLIC / "truth").glob("*.json")) if PUBLIC.is_dir() else []

# tshark state -> what the agent must say
NO_BYE_REASONS = {"rtp_timeout", "capture_end", "signalling_timeout", "media_taken_over"}


def _truth_id(path: Path) -> str:
    return path.name.removesuffix(".json")


def _utc_second(iso: str) -> str:
    return iso.replace("T", " ")[:19]


@pytest.fixture(scope="module")
def inspected(public_dir):
    cache: dict[str, list[dict]] = {}

    def get(name: str) -> list[dict]:
        if name not in cache:
            cache[name] = run_inspect(public_dir / name)
        return cache[name]
    return get


# SIP over SCTP is deliberately not decoded (see README): those calls must be counted instead.
SCTP_ONLY = {"sip_sctp.pcap"}


def test_sctp_signalling_is_counted_not_decoded(public_dir):
    import subprocess, sys
    out = subprocess.run([sys.executable, "-m", "agent.cli", "inspect", "-q",
                          str(public_dir / "sip_sctp.pcap")], capture_output=True, text=True, check=True)
    assert "0 call(s)" in out.stdout
    assert "net.sctp=5" in out.stdout


@pytest.mark.parametrize("truth_path", [t for t in TRUTHS if _truth_id(t) not in SCTP_ONLY], ids=_truth_id)
def test_public_capture_calls_match_truth(truth_path: Path, inspected):
    truth = json.loads(truth_path.read_text())
    records = {r["callid"]: r for r in inspected(truth["file"]["name"])}
    truth_calls = {c["call_id"]: c for c in truth["calls"]}
    missing = set(truth_calls) - set(records)
    assert not missing, f"calls not found: {missing}"
    # Calls the agent opened that tshark does not list must be dialogs tshark saw without an
    # INVITE (opened from in-dialog requests: partial_start).
    others = {d["call_id"] for d in truth.get("other_sip_dialogs", [])}
    for callid in set(records) - set(truth_calls):
        assert callid in others and records[callid]["partial_start"], callid

    for callid, tc in truth_calls.items():
        rec = records[callid]
        where = f"{truth_path.name} {callid}"
        frm, to = tc["from"], tc["to"]
        if frm["user"] and frm["user"].lower() != "anonymous":
            assert rec["raw"]["caller_number"] == frm["user"], where
        assert rec["callername"] == (frm["display"] or "").strip(), where
        assert rec["raw"]["callee_number"] == (to["user"] or ""), where
        assert rec["destinationname"] == (to["display"] or "").strip(), where
        assert rec["partial_start"] == (not tc["invite_request_captured"]), where
        if tc["invite_request_captured"]:
            assert rec["startdatetimeutc"] == _utc_second(tc["start_time_utc"]), where
        state = tc["state"]
        if state == "completed":
            assert rec["answered"] and rec["end_reason"] == "bye", (where, rec["end_reason"])
        elif state == "answered_no_bye":
            assert rec["answered"] and rec["end_reason"] in NO_BYE_REASONS, (where, rec["end_reason"])
        elif state == "cancelled":
            assert not rec["answered"] and rec["end_reason"] == "cancel", (where, rec["end_reason"])
        elif state == "rejected":
            code = int(tc["decisive_final_response"].split()[1])
            assert not rec["answered"] and rec["end_reason"] == f"rejected:{code}", (where, rec["end_reason"])
        else:  # ringing_no_final / no_response
            assert not rec["answered"], where
            assert rec["end_reason"] in ("capture_end", "signalling_timeout", "cancel"), (where, rec["end_reason"])
        if tc["answer_time_utc"] and tc["invite_request_captured"]:
            assert rec["answered"], where


def test_sip_over_websocket_is_decoded_and_the_plain_rtp_leg_uploaded(inspected):
    """SIP.js over WebSocket (TCP 8080) to OpenSIPS, relayed over UDP to FreeSWITCH: both
    dialogs are found, linked, and the upload is the leg whose media is not DTLS-SRTP."""
    by_id = {r["callid"]: r for r in inspected("sip_tcp_websocket.pcap")}
    ws = next(r for cid, r in by_id.items() if cid.startswith("kovfhoptshgn59q712sr"))
    udp = next(r for cid, r in by_id.items() if cid.startswith("926ffd16-6154-1237-0"))
    assert ws["transport"] == "tcp" and ws["encrypted"] and ws["answered"]
    assert udp["transport"] == "udp" and not udp["encrypted"] and udp["answered"]
    assert ws["conversation_id"] == udp["conversation_id"]
    assert (ws["upload"], udp["upload"]) == (False, True)
    assert udp["destinationphone"] == "9998112263382742"

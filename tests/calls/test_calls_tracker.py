"""The call tracker through its public seams (sans-IO): SIP messages and packet time in,
events, calls and counters out."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.calls.call import CALLEE, CALLER
from agent.calls.endpoints import EndpointMap
from agent.calls.tracker import CallEnded, CallTracker
from agent.config import SipSection
from agent.net.datagram import Datagram
from agent.sip.message import parse_message

NS = 1_000_000_000
A, B = "10.0.0.10", "10.0.0.20"


def sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def sip(first: str, callid: str, cseq: str, to_tag: str = "", body: str = "") -> bytes:
    to = "<sip:1002@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = (f"{first}\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{callid}\r\n"
            f"From: <sip:1001@example.com>;tag=f-{callid}\r\nTo: {to}\r\nCall-ID: {callid}\r\nCSeq: {cseq}\r\n")
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n" + body).encode()


class Wire:
    """Feeds a tracker as the engine does and collects the ended calls."""

    def __init__(self, **sip_config) -> None:
        self.counters: Counter = Counter()
        self.endpoints = EndpointMap()
        self.tracker = CallTracker(SipSection(**sip_config), self.counters, self.endpoints)
        self.ended: dict[str, str] = {}
        self.ended_calls: dict[str, object] = {}

    def send(self, ts_s: float, src: str, dst: str, data: bytes) -> None:
        dgram = Datagram(int(ts_s * NS), src, 5060, dst, 5060, "udp", data)
        self._collect(self.tracker.on_sip(parse_message(data), dgram))

    def invite(self, ts_s: float, callid: str, port: int | None = None) -> None:
        self.send(ts_s, A, B, sip("INVITE sip:1002@example.com SIP/2.0", callid, "1 INVITE",
                                  body=sdp(A, port) if port else ""))

    def answer(self, ts_s: float, callid: str, port: int | None = None) -> None:
        self.send(ts_s, B, A, sip("SIP/2.0 200 OK", callid, "1 INVITE", to_tag="t",
                                  body=sdp(B, port) if port else ""))

    def media(self, ts_s: float, callid: str, side: int) -> None:
        call = self.tracker.calls[callid]
        self.tracker.on_media(call, side, int(ts_s * NS), (A if side == CALLER else B, 4000), b"")

    def tick(self, ts_s: float) -> None:
        self._collect(self.tracker.on_time(int(ts_s * NS)))

    def _collect(self, events) -> None:
        for event in events:
            if isinstance(event, CallEnded):
                self.ended[event.call.callid] = event.call.end_reason
                self.ended_calls[event.call.callid] = event.call


# ---------------------------------------------------------------------- a full call table

def test_a_full_table_evicts_unanswered_before_answered_without_media_oldest_first():
    wire = Wire(max_calls=4)
    wire.invite(0.0, "answered-old")
    wire.answer(0.1, "answered-old")
    wire.invite(1.0, "answered-new")
    wire.answer(1.1, "answered-new")
    wire.invite(2.0, "ringing-old")
    wire.invite(3.0, "ringing-new")
    for n, ts_s in enumerate((4.0, 5.0, 6.0, 7.0)):
        wire.invite(ts_s, f"new-{n}")
        wire.answer(ts_s + 0.1, f"new-{n}")          # answered later than the first two
    assert list(wire.ended) == ["ringing-old", "ringing-new", "answered-old", "answered-new"]
    assert set(wire.ended.values()) == {"evicted"}
    assert wire.counters["calls.evicted.unanswered"] == 2
    assert wire.counters["calls.evicted.answered_no_media"] == 2
    assert sorted(wire.tracker.calls) == ["new-0", "new-1", "new-2", "new-3"]


def test_calls_with_media_are_never_evicted_and_a_new_invite_is_then_refused():
    wire = Wire(max_calls=2)
    for n, callid in enumerate(("talking-caller", "talking-callee")):
        wire.invite(n, callid, 40000 + 2 * n)
        wire.answer(n + 0.1, callid, 50000 + 2 * n)
    wire.media(2.0, "talking-caller", CALLER)
    wire.media(2.0, "talking-callee", CALLEE)       # media from either side counts
    wire.invite(3.0, "scanner")
    assert wire.ended == {}
    assert sorted(wire.tracker.calls) == ["talking-callee", "talking-caller"]
    assert wire.counters["calls.refused_limit"] == 1
    assert wire.counters["calls.evicted"] == 0


def test_an_unanswered_call_with_early_media_is_kept_over_an_answered_one_without():
    wire = Wire(max_calls=2)
    wire.invite(0.0, "silent")
    wire.answer(0.1, "silent")
    wire.invite(1.0, "early-media", 40000)
    wire.media(1.5, "early-media", CALLEE)
    wire.invite(2.0, "next")
    assert wire.ended == {"silent": "evicted"}
    assert sorted(wire.tracker.calls) == ["early-media", "next"]


# ---------------------------------------------------------------------- endpoints

def test_ending_a_call_releases_its_endpoints_and_only_its_own():
    wire = Wire()
    for n in range(3):
        wire.invite(n, f"c{n}", 40000 + 2 * n)
        wire.answer(n + 0.1, f"c{n}", 50000 + 2 * n)
    assert len(wire.endpoints) == 6
    wire.send(5.0, A, B, sip("BYE sip:1002@example.com SIP/2.0", "c1", "2 BYE", to_tag="t"))
    assert wire.ended == {"c1": "bye"}
    assert sorted(wire.endpoints) == [(A, 40000), (A, 40004), (B, 50000), (B, 50004)]
    assert wire.endpoints[(B, 50004)] == (wire.tracker.calls["c2"], CALLEE)


def test_a_newer_call_taking_every_endpoint_ends_the_older_one():
    wire = Wire()
    wire.invite(0.0, "old", 40000)
    wire.answer(0.1, "old", 50000)
    wire.invite(1.0, "new", 40000)
    assert wire.ended == {}                          # the old call still holds 50000
    wire.answer(1.1, "new", 50000)
    assert wire.ended == {"old": "media_taken_over"}
    assert wire.endpoints.of_call(wire.tracker.calls["new"]) == [(A, 40000), (B, 50000)]


# ---------------------------------------------------------------------- how a dialog ends

RURI = "sip:1002@example.com SIP/2.0"
# (sender, start line, CSeq, To tag); A is the caller, B the callee.
INVITE = ("A", f"INVITE {RURI}", "1 INVITE", "")
RINGING = ("B", "SIP/2.0 180 Ringing", "1 INVITE", "t")
OK = ("B", "SIP/2.0 200 OK", "1 INVITE", "t")
ACK = ("A", f"ACK {RURI}", "1 ACK", "t")
BYE = ("A", f"BYE {RURI}", "9 BYE", "t")
CANCEL = ("A", f"CANCEL {RURI}", "1 CANCEL", "")
TERMINATED = ("B", "SIP/2.0 487 Request Terminated", "1 INVITE", "t")
BUSY = ("B", "SIP/2.0 486 Busy Here", "1 INVITE", "t")
CHALLENGE = ("B", "SIP/2.0 401 Unauthorized", "1 INVITE", "t")
INVITE_AUTH = ("A", f"INVITE {RURI}", "2 INVITE", "")
OK_AUTH = ("B", "SIP/2.0 200 OK", "2 INVITE", "t2")
INFO = ("A", f"INFO {RURI}", "3 INFO", "t")
NO_DIALOG = ("B", "SIP/2.0 481 Call/Transaction Does Not Exist", "3 INFO", "t")
REINVITE = ("A", f"INVITE {RURI}", "4 INVITE", "t")
NOT_ACCEPTABLE = ("B", "SIP/2.0 488 Not Acceptable Here", "4 INVITE", "t")
BYE_OK = ("B", "SIP/2.0 200 OK", "9 BYE", "t")

S = SipSection()
# name: (messages, one a second from t=0; then packet time moves to this second (None: no tick);
#        the end reason (None: still in progress); answered; counters that must be exactly so)
ENDINGS = {
    "bye": ([INVITE, RINGING, OK, ACK, BYE, BYE_OK], None, "bye", True, {}),
    "cancel": ([INVITE, RINGING, CANCEL, TERMINATED], None, "cancel", False, {}),
    "487 without the CANCEL captured": ([INVITE, RINGING, TERMINATED], None, "cancel", False, {}),
    "busy": ([INVITE, RINGING, BUSY], None, "rejected:486", False, {}),
    "auth challenge, then answered": ([INVITE, CHALLENGE, INVITE_AUTH, OK_AUTH, BYE], None, "bye", True,
                                      {"calls.auth_retry": 1}),
    "auth challenge never answered": ([INVITE, CHALLENGE], 2 + 180 + 1, "rejected:401", False, {}),
    "481 inside the dialog": ([INVITE, OK, ACK, INFO, NO_DIALOG], None, "dialog_error", True, {}),
    "488 to a re-INVITE keeps the call": ([INVITE, OK, ACK, REINVITE, NOT_ACCEPTABLE], None, None, True, {}),
    "a BYE's 200 after the end creates nothing": ([INVITE, OK, BYE, BYE_OK, BYE_OK], None, "bye", True,
                                                   {"sip.after_end": 2}),
    "ringing forever": ([INVITE, RINGING], 2 + int(S.ringing_timeout_s) + 1, "signalling_timeout", False, {}),
    "answered, never any media or SIP again": ([INVITE, OK, ACK], 3 + int(S.signalling_timeout_s) + 1,
                                               "signalling_timeout", True, {}),
    "in progress at the last tick": ([INVITE, OK, ACK], 3 + int(S.rtp_timeout_s) + 1, None, True, {}),
}


def test_endings_table():
    outcomes, want = {}, {}
    for name, (messages, tick_s, reason, answered, counts) in ENDINGS.items():
        wire = Wire()
        for ts_s, (sender, first, cseq, to_tag) in enumerate(messages):
            src, dst = (A, B) if sender == "A" else (B, A)
            wire.send(ts_s, src, dst, sip(first, "c", cseq, to_tag=to_tag))
        if tick_s is not None:
            wire.tick(tick_s)
        call = wire.tracker.calls.get("c") or wire.ended_calls["c"]
        outcomes[name] = (wire.ended.get("c"), call.answered, {k: wire.counters[k] for k in counts})
        want[name] = (reason, answered, counts)
    assert outcomes == want


def test_rtp_timeout_counts_from_the_last_packet_of_either_side():
    wire = Wire()
    wire.invite(0.0, "c", 40000)
    wire.answer(0.5, "c", 50000)
    wire.media(1.0, "c", CALLER)
    wire.media(30.0, "c", CALLEE)
    wire.tick(30.0 + S.rtp_timeout_s)
    assert wire.ended == {}
    wire.tick(31.0 + S.rtp_timeout_s)
    assert wire.ended == {"c": "rtp_timeout"}
    assert not wire.endpoints.holds_any(wire.ended_calls["c"]) and len(wire.endpoints) == 0


# ------------------------------------------------------------------ timeouts and the length cap

def test_a_long_call_ends_at_its_cap_not_at_the_tick_that_saw_it():
    wire = Wire(max_duration_s=600)
    wire.invite(0.0, "long", port=4000)
    wire.answer(0.1, "long", port=5000)
    for t in range(1, 700):                  # media all along: only the cap can end it
        if wire.ended:
            break
        wire.media(float(t), "long", CALLER)
        wire.tick(t + 0.5)
    assert wire.ended == {"long": "max_duration"}
    assert wire.ended_calls["long"].end_ts_ns == 600 * NS


def test_after_a_leap_of_packet_time_the_earlier_timeout_ended_the_call():
    """Two captures years apart merged into one timeline: the first capture's call went quiet
    (no BYE) long before the leap. It ended by RTP timeout at its last packet, not by the length
    cap at the far side of the leap (which once made a 21-year call)."""
    wire = Wire(max_duration_s=3600, rtp_timeout_s=30)
    wire.invite(0.0, "quiet", port=4000)
    wire.answer(0.1, "quiet", port=5000)
    wire.media(1.0, "quiet", CALLER)
    wire.media(26.0, "quiet", CALLEE)
    wire.tick(21 * 365 * 86400.0)
    assert wire.ended == {"quiet": "rtp_timeout"}
    assert wire.ended_calls["quiet"].end_ts_ns == 26 * NS


# ---------------------------------------------------------------------- forks

RINGING_1 = ("B", "SIP/2.0 180 Ringing", "1 INVITE", "t1")
RINGING_2 = ("B", "SIP/2.0 180 Ringing", "1 INVITE", "t2")
OK_1 = ("B", "SIP/2.0 200 OK", "1 INVITE", "t1")
OK_2 = ("B", "SIP/2.0 200 OK", "1 INVITE", "t2")
ACK_2 = ("A", f"ACK {RURI}", "1 ACK", "t2")
BYE_2 = ("A", f"BYE {RURI}", "9 BYE", "t2")
ACK_1 = ("A", f"ACK {RURI}", "1 ACK", "t1")
BYE_1 = ("A", f"BYE {RURI}", "9 BYE", "t1")
TERMINATED_1 = ("B", "SIP/2.0 487 Request Terminated", "1 INVITE", "t1")
# name: (messages, the end reason, answered, the To tag of the dialog the call became)
FORKS = {
    "two branches ring, the second answers": ([INVITE, RINGING_1, RINGING_2, OK_2, ACK_2, BYE_2], "bye", True, "t2"),
    "two branches ring, the first answers": ([INVITE, RINGING_1, RINGING_2, OK_1, ACK_1, BYE_1], "bye", True, "t1"),
    "two branches ring, neither answers": ([INVITE, RINGING_1, RINGING_2, CANCEL, TERMINATED_1], "cancel", False,
                                           "t1"),
    "the answer's branch never rang": ([INVITE, RINGING_1, OK_2, ACK_2, BYE_2], "bye", True, "t2"),
}


def test_forks_table():
    outcomes, want = {}, {}
    for name, (messages, reason, answered, to_tag) in FORKS.items():
        wire = Wire()
        for ts_s, (sender, first, cseq, tag) in enumerate(messages):
            src, dst = (A, B) if sender == "A" else (B, A)
            wire.send(ts_s, src, dst, sip(first, "c", cseq, to_tag=tag))
        call = wire.tracker.calls.get("c") or wire.ended_calls["c"]
        outcomes[name] = (wire.ended.get("c"), call.answered, call.to_tag)
        want[name] = (reason, answered, to_tag)
    assert outcomes == want


# A tap beside a forking proxy A sees both branches: b1 to phone B, b2 to phone C (10.0.0.30).
# (seconds, sender, first line, CSeq, To tag, Via branch)
_FORK_INVITES = [(0.0, "A>B", f"INVITE {RURI}", "1 INVITE", "", "b1"), (0.1, "A>C", f"INVITE {RURI}", "1 INVITE", "", "b2"),
                 (1.0, "B>A", "SIP/2.0 180 Ringing", "1 INVITE", "t1", "b1"),
                 (1.1, "C>A", "SIP/2.0 180 Ringing", "1 INVITE", "t2", "b2")]
_BUSY_B = (2.0, "B>A", "SIP/2.0 486 Busy Here", "1 INVITE", "t1", "b1")
# name: (messages after the INVITEs and 180s, tick at, (end reason, answered, To tag, end time s))
PROXY_FORKS = {
    "B busy, C answers later": ([_BUSY_B, (3.0, "C>A", "SIP/2.0 200 OK", "1 INVITE", "t2", "b2"),
                                 (3.1, "A>C", f"ACK {RURI}", "1 ACK", "t2", "b3"),
                                 (9.0, "A>C", f"BYE {RURI}", "2 BYE", "t2", "b4")], None, ("bye", True, "t2", 9.0)),
    "both busy: ended at the last branch's error": (
        [_BUSY_B, (4.0, "C>A", "SIP/2.0 486 Busy Here", "1 INVITE", "t2", "b2")], None,
        ("rejected:486", False, "t2", 4.0)),
    "B busy, C's answer never seen: the ringing timeout ends it as B's error": (
        [_BUSY_B], 400.0, ("rejected:486", False, "t1", 2.0)),
}


@pytest.mark.parametrize("name", PROXY_FORKS)
def test_parallel_forks_seen_beside_the_proxy(name):
    """One phone's error does not end a call another phone is still ringing for."""
    hosts = {"A": A, "B": B, "C": "10.0.0.30"}
    later, tick_s, want = PROXY_FORKS[name]
    wire = Wire()
    for ts_s, route, first, cseq, to_tag, branch in _FORK_INVITES + later:
        src, dst = (hosts[h] for h in route.split(">"))
        to = "<sip:1002@example.com>" + (f";tag={to_tag}" if to_tag else "")
        wire.send(ts_s, src, dst, (f"{first}\r\nVia: SIP/2.0/UDP {A};branch=z9hG4bK{branch}\r\n"
                                   f"From: <sip:1001@example.com>;tag=f-c\r\nTo: {to}\r\nCall-ID: c\r\n"
                                   f"CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode())
    if tick_s is not None:
        assert "c" not in wire.ended                 # still ringing on C
        wire.tick(tick_s)
    call = wire.ended_calls["c"]
    assert (wire.ended["c"], call.answered, call.to_tag, call.end_ts_ns / NS) == want

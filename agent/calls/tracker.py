"""The call tracker: a pure state machine from SIP messages (and packet time) to calls.

Events in: ``on_sip(msg, dgram)`` for every parsed SIP message, ``on_media(call,
side, ts_ns)`` when RTP is seen for a call, and ``on_time(now_ns)`` as packet time
advances. Events out: ``CallStarted``, ``CallAnswered``, ``EndpointClaimed`` and
``CallEnded``. No sockets, no files, no wall clock: replaying a capture twice gives
the same calls.

It writes the media map it is given (``endpoints``, an :class:`EndpointMap` that the
engine's media routing owns and looks packets up in): claims as SDP arrives, releases when a
call ends. The newest SDP that claims an endpoint takes it over (ports are reused; a PBX
moves media with re-INVITEs).

Every step costs O(1) in the number of calls but ``on_time``, which looks at each call once
per tick: ending a call releases only its own endpoints, and a full table (``max_calls``)
finds the dialog to evict at the head of a queue.

This module is where a call ends; the reasons are in ``end_reason.py``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from agent.calls.call import CALLEE, CALLER, Call, CallState, Side
from agent.calls.end_reason import EndReason, rejected
from agent.calls.endpoints import EndpointMap
from agent.config import SipSection
from agent.errors import ParseError
from agent.net.datagram import Datagram
from agent.sip.dtmf_info import parse_dtmf_info
from agent.sip.message import DIALOG_OPENERS
from agent.sip.sdp import parse_sdp

log = logging.getLogger(__name__)

NS = 1_000_000_000
CHALLENGE_WAIT_NS = 180 * NS        # after 401/407/3xx: time for a person to type a password, or a redirect
HOLD_ADDRS = ("0.0.0.0", "::")
MAX_REFERS = 8                      # a dialog that REFERs more often than this is not a person


@dataclass(slots=True, frozen=True)
class CallStarted:
    call: Call


@dataclass(slots=True, frozen=True)
class CallAnswered:
    call: Call


@dataclass(slots=True, frozen=True)
class EndpointClaimed:
    """A call's side announced a media endpoint (the engine replays RTP held for it)."""
    call: Call
    side: Side
    endpoint: tuple[str, int]


@dataclass(slots=True, frozen=True)
class CallEnded:
    call: Call


Event = CallStarted | CallAnswered | EndpointClaimed | CallEnded


class CallTracker:
    def __init__(self, config: SipSection, counters, endpoints: EndpointMap | None = None) -> None:
        self.config = config
        self.counters = counters
        self.calls: dict[str, Call] = {}
        self.endpoints = endpoints if endpoints is not None else EndpointMap()
        # Dialogs without media, the ones a full table may evict: unanswered ones in the order
        # they started, then answered ones in the order they were answered (least likely to
        # be a real call first). A call leaves both when its first RTP is seen or it ends.
        self._unanswered_idle: dict[str, Call] = {}
        self._answered_idle: dict[str, Call] = {}
        # Ended Call-IDs -> time they ended: late BYEs and retransmissions create nothing.
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        self._rtp_timeout_ns = int(config.rtp_timeout_s * NS)
        self._signalling_timeout_ns = int(config.signalling_timeout_s * NS)
        self._ringing_timeout_ns = int(config.ringing_timeout_s * NS)
        self._max_duration_ns = int(config.max_duration_s * NS)
        self._tombstone_ns = int(config.tombstone_s * NS)

    # ------------------------------------------------------------------ SIP

    def on_sip(self, msg, dgram: Datagram) -> list[Event]:
        callid = msg.call_id
        if not callid:
            self.counters["sip.skip.no_callid"] += 1
            return []
        ts_ns = dgram.ts_ns
        call = self.calls.get(callid)
        events: list[Event] = []
        opened = call is None
        if opened:
            if callid in self._tombstones:
                self.counters["sip.after_end"] += 1
                return []
            call = self._open(msg, dgram, events)
            if call is None:
                return events
        call.last_sip_ns = max(call.last_sip_ns, ts_ns)
        call.sip_messages += 1
        side = self._sender_side(call, msg)
        party = call.parties[side]
        if not party.sip_addr:
            party.sip_addr = _ep(dgram.src_ip, dgram.src_port)
            party.sip_mac = dgram.src_mac
        ua = msg.user_agent
        if ua and not party.user_agent:
            party.user_agent = ua
        if msg.is_request:
            if not (opened and msg.method == "INVITE"):      # _open took what the INVITE says
                self._on_request(call, msg, side, ts_ns, events)
        else:
            self._on_response(call, msg, side, ts_ns, events)
        if not call.ended:
            self._take_sdp(call, msg, side, ts_ns, events)
        return events

    def _open(self, msg, dgram: Datagram, events: list[Event]) -> Call | None:
        """Open a call for a Call-ID we have not seen: from its INVITE, or mid-dialog."""
        method = msg.method
        if msg.is_request and method == "INVITE" and not msg.to_tag:
            call = Call(callid=msg.call_id, start_ts_ns=dgram.ts_ns)
        elif (msg.is_request and msg.to_tag and method in DIALOG_OPENERS) or (
                not msg.is_request and method == "INVITE"):
            # The INVITE was not captured (started mid-call, mirror drop): open from in-dialog
            # traffic. For responses From/To still name caller and callee; for requests we assume
            # the sender is the caller (no better information).
            call = Call(callid=msg.call_id, start_ts_ns=dgram.ts_ns, partial_start=True,
                        state=CallState.CONFIRMED if (msg.is_request or 200 <= (msg.status_code or 0) < 300)
                        else CallState.EARLY)
            if call.state is CallState.CONFIRMED:
                call.answer_ts_ns = dgram.ts_ns
            call.invite_cseq = msg.cseq_num if method == "INVITE" else -1
            self.counters["calls.partial_start"] += 1
        else:
            return None
        if len(self.calls) >= self.config.max_calls and not self._make_room(dgram.ts_ns, events):
            self.counters["calls.refused_limit"] += 1
            return None
        call.transport = dgram.transport
        call.from_tag = msg.from_tag or ""
        call.to_tag = msg.to_tag or ""
        call.from_header = msg.header("from") or ""
        call.to_header = msg.header("to") or ""
        call.from_addr = msg.from_addr
        call.to_addr = msg.to_addr
        if msg.is_request and method == "INVITE":
            call.request_uri = msg.request_uri or ""
            call.invite_cseq = msg.cseq_num
            call.pai = list(msg.pai)
            call.rpid = msg.rpid
            call.diversion = list(msg.diversion)
            call.session_id = msg.session_id or ""
            _take_leg_headers(call, msg)
        self.calls[call.callid] = call
        (self._answered_idle if call.answered else self._unanswered_idle)[call.callid] = call
        self.counters["calls.started"] += 1
        events.append(CallStarted(call))
        log.info("call start %s partial=%s", call.callid, call.partial_start)
        return call

    def _make_room(self, ts_ns: int, events: list[Event]) -> bool:
        """At sip.max_calls: end the dialog least likely to be a real call, so that a new INVITE
        is refused only when every dialog has media. First the oldest unanswered one without
        media (a scanner's INVITE flood looks like that), then the longest-answered one that
        never carried media (a dialog kept for the signalling timeout). Counted by reason."""
        for idle, reason in ((self._unanswered_idle, "unanswered"), (self._answered_idle, "answered_no_media")):
            if idle:
                call = next(iter(idle.values()))
                self._end(call, ts_ns, EndReason.EVICTED.value, events)
                self.counters["calls.evicted"] += 1
                self.counters[f"calls.evicted.{reason}"] += 1
                return True
        return False

    def _sender_side(self, call: Call, msg) -> Side:
        """Requests come from the side whose tag is in From; responses from the other one."""
        from_is_caller = (msg.from_tag or "") == call.from_tag or not call.from_tag
        if msg.is_request:
            return CALLER if from_is_caller else CALLEE
        return CALLEE if from_is_caller else CALLER

    def _on_request(self, call: Call, msg, side: Side, ts_ns: int, events: list[Event]) -> None:
        method = msg.method
        if method == "INVITE":
            if call.state is CallState.CONFIRMED:
                if msg.cseq_num != call.invite_cseq:
                    call.reinvites += 1
                return
            # A new INVITE after 401/407/3xx (or a retransmission) keeps the same call.
            if msg.cseq_num != call.invite_cseq and call.state is CallState.CHALLENGED:
                call.state = CallState.CALLING
                call.challenge_deadline_ns = None
                call.final_status = None
                self.counters["calls.auth_retry"] += 1
            call.invite_cseq = msg.cseq_num
            call.invite_branches.setdefault(msg.via_branch or "", False)
            if msg.pai:
                call.pai = list(msg.pai)
            if msg.diversion and not call.diversion:
                call.diversion = list(msg.diversion)
            _take_leg_headers(call, msg)
            return
        if method == "CANCEL":
            if not call.answered:
                call.cancel_requested = True
            return
        if method == "BYE":
            self._end(call, ts_ns, EndReason.BYE.value, events)
            return
        if method == "REFER":
            refer_to = msg.header("refer-to")
            if refer_to and len(call.refers) < MAX_REFERS:
                call.refers.append((ts_ns, refer_to))
            return
        if method == "UPDATE" and side == CALLEE:
            self._connected_from(call, msg)
        if method == "INFO":
            found = parse_dtmf_info(msg.content_type or "", msg.body)
            if found:
                digit, duration_ms = found
                call.dtmf.append({"digit": digit, "side": "caller" if side == CALLER else "callee",
                                  "offset_ms": (ts_ns - call.start_ts_ns) // 1_000_000,
                                  "source": "sip_info", "duration_ms": duration_ms})

    def _on_response(self, call: Call, msg, side: Side, ts_ns: int, events: list[Event]) -> None:
        code = msg.status_code or 0
        if msg.cseq_method != "INVITE":
            # Only 481/408 end a dialog from inside it (RFC 5057); a BYE's 200 changes nothing.
            if call.state is CallState.CONFIRMED and code in (408, 481) and msg.cseq_method != "BYE":
                self._end(call, ts_ns, EndReason.DIALOG_ERROR.value, events)
            if msg.cseq_method == "UPDATE" and 200 <= code < 300 and side == CALLEE:
                self._connected_from(call, msg)
            return
        initial = call.state is not CallState.CONFIRMED and (
            call.invite_cseq < 0 or msg.cseq_num == call.invite_cseq)
        if not initial:
            # Response to a re-INVITE: 488 (declined T.38, say) leaves the call as it is.
            if code in (408, 481):
                self._end(call, ts_ns, EndReason.DIALOG_ERROR.value, events)
            return
        if msg.to_tag and (code >= 200 or not call.to_tag):
            call.to_tag = msg.to_tag          # the final answer's tag wins over forks' 1xx
        branch = msg.via_branch or ""
        if 100 < code < 200:
            if msg.to_tag:
                call.invite_branches[branch] = True
            if call.state is CallState.CALLING:
                call.state = CallState.EARLY
            return
        if 200 <= code < 300:
            call.state = CallState.CONFIRMED
            call.answer_ts_ns = ts_ns
            if self._unanswered_idle.pop(call.callid, None) is not None:
                self._answered_idle[call.callid] = call
            call.final_status = code
            self._drop_other_forks(call, msg.to_tag or "")
            if msg.to_addr is not None:
                call.to_addr = msg.to_addr if call.to_addr is None else call.to_addr
            self._connected_from(call, msg)
            self.counters["calls.answered"] += 1
            events.append(CallAnswered(call))
            log.info("call answered %s", call.callid)
            return
        if code >= 300:
            call.final_status = code
            call.invite_branches.pop(branch, None)
            if call.cancel_requested or code == 487:
                # 487 Request Terminated answers a CANCEL, even one the tap did not see.
                self._end(call, ts_ns, EndReason.CANCEL.value, events)
            elif code in (401, 407) or 300 <= code < 400:
                call.state = CallState.CHALLENGED
                call.challenge_deadline_ns = ts_ns + CHALLENGE_WAIT_NS
            elif any(call.invite_branches.values()):
                # One fork's error while another fork still rings: that one may yet answer.
                # Its answer, the last branch's error or the ringing timeout ends the call.
                self.counters["calls.fork_branch_rejected"] += 1
            else:
                self._end(call, ts_ns, rejected(code), events)

    def _connected_from(self, call: Call, msg) -> None:
        who = msg.pai[0] if msg.pai else msg.rpid
        if who is not None:
            call.connected = who

    # ------------------------------------------------------------------ SDP and media

    def _take_sdp(self, call: Call, msg, side: Side, ts_ns: int, events: list[Event]) -> None:
        body = msg.sdp_body()
        if not body:
            return
        try:
            sdp = parse_sdp(body)
        except ParseError:
            self.counters["sdp.skip.malformed"] += 1
            return
        party = call.parties[side]
        audio = [m for m in sdp.media if m.kind == "audio"]
        if not audio:
            return
        skipped = sum(m.crypto_skipped for m in audio)
        if skipped:
            self.counters["sdp.skip.crypto"] += skipped
        # SDES keys: the first audio m-line; an answer comes in a response, an ACK or a PRACK.
        call.srtp.on_sdp(side, ts_ns, audio[0], may_answer=not msg.is_request or msg.method in ("ACK", "PRACK"))
        hold = False
        rtpmaps: dict[int, object] = {}
        fmtp: dict[int, str] = {}
        for m in audio:
            if m.encrypted:
                party.encrypted_sdp = True
            if m.port == 0:
                continue
            if m.is_hold:
                hold = True
            rtpmaps.update(m.rtpmaps)
            fmtp.update(m.fmtp)
            ip = m.connection_ip
            if ip and ip not in HOLD_ADDRS:
                self._claim(call, side, (ip, m.port), events)
                if side == CALLEE and not msg.is_request and msg.to_tag and \
                        call.state is not CallState.CONFIRMED:     # early media of one fork
                    call.fork_endpoints.setdefault(msg.to_tag, []).append((ip, m.port))
        if rtpmaps:
            party.rtpmaps = rtpmaps
            party.fmtp = fmtp
            names = [f"{r.encoding}/{r.clock_rate_hz}" for pt, r in rtpmaps.items()
                     if pt in audio[0].payload_types]
            if side == CALLER and not call.codecs_offered:
                call.codecs_offered = names
            elif side == CALLEE and not call.codecs_answered:
                call.codecs_answered = names
        party.on_hold = hold

    def _drop_other_forks(self, call: Call, answering_tag: str) -> None:
        """Early media from several forks: once one fork answers, only its media belongs to
        the call; the endpoints only other forks announced are released."""
        keep = set(call.fork_endpoints.get(answering_tag, ()))
        party = call.parties[CALLEE]
        for tag, announced in call.fork_endpoints.items():
            if tag == answering_tag:
                continue
            for endpoint in announced:
                if endpoint in keep:
                    continue
                holder = self.endpoints.get(endpoint)
                if holder is not None and holder[0] is call:
                    self.endpoints.release(endpoint)
                if endpoint in party.sdp_endpoints:
                    party.sdp_endpoints.remove(endpoint)
                self.counters["calls.fork_media_dropped"] += 1
        call.fork_endpoints.clear()

    def _claim(self, call: Call, side: Side, endpoint: tuple[str, int], events: list[Event]) -> None:
        party = call.parties[side]
        if endpoint not in party.sdp_endpoints:
            party.sdp_endpoints.append(endpoint)
        holder = self.endpoints.get(endpoint)
        if holder is not None and holder[0] is call and holder[1] == side:
            return
        self.endpoints.claim(endpoint, call, side)
        events.append(EndpointClaimed(call, side, endpoint))
        if holder is not None and holder[0] is not call:
            old = holder[0]
            self.counters["media.endpoint_taken_over"] += 1
            if not self.endpoints.holds_any(old):
                # The newer dialog owns every endpoint the old one had: it is over.
                self._end(old, old.last_media_ns or old.last_sip_ns, EndReason.MEDIA_TAKEN_OVER.value, events)

    def knows(self, callid: str) -> bool:
        """True for a call in progress or one that ended recently (tombstone)."""
        return callid in self.calls or callid in self._tombstones

    def on_media(self, call: Call, side: Side, ts_ns: int, src: tuple[str, int], src_mac: bytes) -> None:
        """The first RTP from ``side`` of ``call`` was seen (the engine calls this once per side;
        later packets only move ``call.last_media_ns``)."""
        call.last_media_ns = ts_ns
        self._unanswered_idle.pop(call.callid, None)      # a call with media is never evicted
        self._answered_idle.pop(call.callid, None)
        party = call.parties[side]
        if party.seen_endpoint is None:
            party.seen_endpoint = src
            party.rtp_mac = src_mac

    # ------------------------------------------------------------------ time

    def on_time(self, now_ns: int) -> list[Event]:
        events: list[Event] = []
        for call in list(self.calls.values()):
            reason, at_ns = self._timeout(call, now_ns)
            if reason:
                self._end(call, at_ns, reason, events)
        cutoff = now_ns - self._tombstone_ns
        while self._tombstones:
            callid, ended_ns = next(iter(self._tombstones.items()))
            if ended_ns >= cutoff:
                break
            self._tombstones.popitem(last=False)
        return events

    def _timeout(self, call: Call, now_ns: int) -> tuple[str | None, int]:
        """(end reason, end time) if ``call`` timed out by ``now_ns``, else (None, 0)."""
        reason, end_ns, due_ns = self._idle_timeout(call, now_ns)
        # The cap on a call's length ends it at the instant the cap is reached. After a quiet
        # spell (packet time leapt ahead, e.g. between merged captures) an idle timeout may have
        # been due long before the cap: then the earlier of the two is what ended the call.
        cap_ns = call.start_ts_ns + self._max_duration_ns
        if now_ns > cap_ns and (reason is None or due_ns > cap_ns):
            return EndReason.MAX_DURATION.value, cap_ns
        return reason, end_ns

    def _idle_timeout(self, call: Call, now_ns: int) -> tuple[str | None, int, int]:
        """(end reason, end time, the instant the timeout fell due) of a call gone quiet by
        ``now_ns``, else (None, 0, 0)."""
        if call.state is CallState.CHALLENGED:
            if call.challenge_deadline_ns is not None and now_ns > call.challenge_deadline_ns:
                return rejected(call.final_status or 0), call.last_sip_ns, call.challenge_deadline_ns
            return None, 0, 0
        if call.state is not CallState.CONFIRMED:
            due_ns = call.last_sip_ns + self._ringing_timeout_ns
            if call.last_media_ns is not None:
                due_ns = max(due_ns, call.last_media_ns + self._rtp_timeout_ns)
            if now_ns > due_ns:
                if call.cancel_requested:
                    reason = EndReason.CANCEL.value
                elif call.final_status is not None and call.final_status >= 300:
                    reason = rejected(call.final_status)      # a fork's error, the others never ended
                else:
                    reason = EndReason.SIGNALLING_TIMEOUT.value
                return reason, call.last_sip_ns, due_ns
            return None, 0, 0
        if call.last_media_ns is None:
            # No RTP was ever seen (SIP-only capture, encrypted transport): only signalling ages it.
            due_ns = call.last_sip_ns + self._signalling_timeout_ns
            if now_ns > due_ns:
                return EndReason.SIGNALLING_TIMEOUT.value, call.last_sip_ns, due_ns
            return None, 0, 0
        last_alive = max(call.last_media_ns, call.last_sip_ns)
        on_hold = call.parties[CALLER].on_hold or call.parties[CALLEE].on_hold
        if on_hold:
            # Hold only pauses the media timer; a dialog silent for the signalling timeout ends.
            due_ns = last_alive + self._signalling_timeout_ns
            if now_ns > due_ns:
                return EndReason.SIGNALLING_TIMEOUT.value, last_alive, due_ns
            return None, 0, 0
        due_ns = last_alive + self._rtp_timeout_ns
        if now_ns > due_ns:
            return EndReason.RTP_TIMEOUT.value, last_alive, due_ns
        return None, 0, 0

    def finish_all(self, now_ns: int, reason: str = EndReason.CAPTURE_END.value) -> list[Event]:
        """End every call still open (end of capture, shutdown) with what was captured."""
        events: list[Event] = []
        for call in list(self.calls.values()):
            end_ns = max(call.last_sip_ns, call.last_media_ns or 0)
            self._end(call, end_ns, reason, events)
        return events

    def _end(self, call: Call, ts_ns: int, reason: str, events: list[Event]) -> None:
        if call.ended:
            return
        call.state = CallState.ENDED
        call.end_ts_ns = max(ts_ns, call.start_ts_ns)
        call.end_reason = reason
        self.calls.pop(call.callid, None)
        self._unanswered_idle.pop(call.callid, None)
        self._answered_idle.pop(call.callid, None)
        self._tombstones[call.callid] = call.end_ts_ns
        self.endpoints.release_call(call)
        self.counters[f"calls.ended.{reason}"] += 1
        events.append(CallEnded(call))
        log.info("call end %s reason=%s", call.callid, reason)


def _take_leg_headers(call: Call, msg) -> None:
    """Headers that tie a dialog to others (transfers, forwards): kept raw for ``legs.py``."""
    if not call.history_info:
        call.history_info = msg.header_values("history-info")[:16]
    replaces = msg.header("replaces")
    if replaces and not call.replaces:
        call.replaces = replaces.split(";", 1)[0].strip()
    referred_by = msg.header("referred-by")
    if referred_by and not call.referred_by:
        call.referred_by = referred_by.strip()


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

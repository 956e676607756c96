"""The Call record the tracker keeps for one dialog, and its parties.

A Call is mutable while the dialog lives and read once when it ends (to build the
call record). It holds no sockets, no files and no media: the pipeline keeps each call's
media object itself (``pipeline/finishing.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from agent.calls.srtp_keys import SrtpNegotiation

# Side: which party of a call, 0 or 1. It indexes ``Call.parties``, names the party that
# announced a media endpoint, and the party that sent a packet (media code calls the same
# index a packet's "direction": 0 = sent by the caller).
Side = int
CALLER: Side = 0
CALLEE: Side = 1


class CallState(enum.Enum):
    CALLING = "calling"          # initial INVITE sent, no provisional answer yet
    EARLY = "early"              # 1xx seen (ringing, early media)
    CHALLENGED = "challenged"    # 401/407/3xx: waiting for the INVITE that follows
    CONFIRMED = "confirmed"      # 2xx to the initial INVITE
    ENDED = "ended"


@dataclass(slots=True)
class Party:
    """What we learnt about one side of the call."""

    sip_addr: str = ""                       # ip:port its SIP came from
    sip_mac: bytes = b""                     # source MAC of its SIP frames
    rtp_mac: bytes = b""                     # source MAC of the RTP it sent
    sdp_endpoints: list[tuple[str, int]] = field(default_factory=list)  # in order announced
    seen_endpoint: tuple[str, int] | None = None   # where its RTP actually came from
    rtpmaps: dict[int, Any] = field(default_factory=dict)  # pt -> RtpMap, latest SDP wins
    fmtp: dict[int, str] = field(default_factory=dict)     # pt -> fmtp parameters, latest SDP wins
    on_hold: bool = False                    # its latest SDP says sendonly/inactive/0.0.0.0
    user_agent: str = ""
    encrypted_sdp: bool = False


@dataclass(slots=True)
class Call:
    callid: str
    start_ts_ns: int
    from_tag: str = ""
    to_tag: str = ""
    state: CallState = CallState.CALLING
    transport: str = "udp"
    partial_start: bool = False
    invite_cseq: int = -1                    # CSeq of the current initial-INVITE transaction
    answer_ts_ns: int | None = None
    end_ts_ns: int | None = None
    end_reason: str | None = None
    final_status: int | None = None
    cancel_requested: bool = False
    challenge_deadline_ns: int | None = None
    last_sip_ns: int = 0
    sip_messages: int = 0                    # SIP messages of this dialog seen (a change stamp)
    last_media_ns: int | None = None
    # identities (raw header values kept for the record)
    from_header: str = ""
    to_header: str = ""
    request_uri: str = ""
    from_addr: Any = None                    # NameAddr
    to_addr: Any = None                      # NameAddr
    pai: list[Any] = field(default_factory=list)      # NameAddr list from the initial INVITE
    rpid: Any = None
    diversion: list[Any] = field(default_factory=list)
    connected: Any = None                    # NameAddr of the answering party (PAI/RPID in 2xx/UPDATE)
    session_id: str = ""
    history_info: list[str] = field(default_factory=list)   # raw History-Info values of the INVITE
    replaces: str = ""                       # Call-ID named by the INVITE's Replaces header
    referred_by: str = ""                    # raw Referred-By of the INVITE (a transfer target leg)
    refers: list[tuple[int, str]] = field(default_factory=list)  # (ts_ns, raw Refer-To) of REFERs
    codecs_offered: list[str] = field(default_factory=list)
    codecs_answered: list[str] = field(default_factory=list)
    parties: tuple[Party, Party] = field(default_factory=lambda: (Party(), Party()))
    # media endpoints each fork (to-tag) announced before the answer; the answer drops the others
    fork_endpoints: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # INVITE client transactions of the initial INVITE still open, by top Via branch: True once
    # a 1xx with a To-tag (an early dialog) came back on it. A tap beside a forking proxy sees
    # every branch: one phone's 486 ends the call only when no other branch is still ringing.
    invite_branches: dict[str, bool] = field(default_factory=dict)
    dtmf: list[dict[str, Any]] = field(default_factory=list)
    reinvites: int = 0
    srtp: SrtpNegotiation = field(default_factory=SrtpNegotiation, repr=False)   # SDES keys per direction

    @property
    def answered(self) -> bool:
        return self.answer_ts_ns is not None

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED


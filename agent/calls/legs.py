"""PBX legs: link dialogs into conversations and decide which leg is uploaded.

A PBX (a B2BUA: Asterisk, FreePBX, an SBC) turns one phone call into several SIP
dialogs, each with its own Call-ID. Uploading each would upload the same talk two or
three times. :class:`ConversationGrouper` sits between the engine's finished calls
and the recorder: ``feed(finished, now_ns)`` / ``release(now_ns)`` / ``flush()`` each
return the finished calls that are ready, with ``conversation_id``, ``leg``,
``upload`` and ``leg_of`` set in their records. Pure: no I/O, packet time only.

Two dialogs belong to one conversation when (any of):
- ``session_id``: they carry the same RFC 7989 Session-ID and overlap in time;
- ``media``: they announce or use the same RTP ip:port and overlap in time (Asterisk
  direct media: both legs end up pointing at the phones);
- ``pbx``: the later one starts within ``LINK_WINDOW_NS`` of the earlier, from the address
  that received the earlier one (or from a configured ``[sip] pbx_addresses`` address),
  and their dialled numbers or their caller numbers match (equal, or one ends with the
  other when the PBX adds a prefix);
- ``connected``: they overlap, share a SIP address (the PBX), and one's connected party
  (PAI/RPID of its answer) is the other's caller (call pickup: ``*8`` bridges two phones);
- ``replaces``: the later one's INVITE carries ``Replaces:`` naming the earlier Call-ID;
- ``refer``: the earlier one carried a REFER whose Refer-To names the later one's dialled
  number (or whose embedded Replaces names its Call-ID), and the later one started within
  ``TRANSFER_WINDOW_NS`` after the REFER.

Transfers (the rule). A transfer never merges audio and never duplicates it: every dialog
keeps its own record, all dialogs of the call are linked by one ``conversation_id``, and
each second of audio is uploaded once. Through a PBX (REFER to the PBX, or INVITE with
Replaces) the phone's leg to the PBX carries the whole talk (before and after the
transfer), so it is the one upload and the legs to the first and second callee are
``upload: False``. Phone to phone (no PBX), the transferred party's first dialog and its
new dialog hold different seconds, so both are uploaded, one after the other, linked.

Leg policy ``conversation`` (default): answered legs are ranked (media seen, not encrypted,
a phone on one side, earliest start) and taken greedily while their talk time does not overlap a
leg already taken by more than ``OVERLAP_TOLERANCE_NS`` (or half the shorter talk); an unanswered conversation
uploads its best leg only. The first uploaded leg carries the caller of the
conversation's first dialog, the dialled number of its own dialog, and in ``connected``
the party actually reached (PAI/RPID of the answer, else the To of the answered leg the
PBX placed last). A dialled feature code (``*8``, ``**201``) is never a number: it becomes
the party reached (its own connected identity, else the conversation's first caller).
Other legs get ``upload: False`` and ``leg_of: <conversation_id>``. Policy
``every_leg`` uploads every dialog (still linked).

A finished leg is held until every dialog linked to it has ended and ``grace_ns`` of
packet time has passed after the last end, so memory is bounded by that window (and by
``max_held``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from agent.calls.call import CALLEE, CALLER, Call
from agent.calls.numbers import compact_number, is_feature_code, is_number

NS = 1_000_000_000
LINK_WINDOW_NS = 2 * NS
TRANSFER_WINDOW_NS = 10 * NS
GRACE_NS = 5 * NS
OVERLAP_TOLERANCE_NS = 2 * NS
MIN_SUFFIX_DIGITS = 6
MAX_HELD = 50_000
LIVE_RECHECK_NS = 10 * NS
HOT_KEY_LIMIT = 64          # held conversations per index key (more: a scanner, not a call)
LIVE_SCAN_LIMIT = 256       # up to this many live dialogs are scanned directly
FOREVER = 1 << 62
HOLD_IPS = frozenset({"0.0.0.0", "::"})


# ---------------------------------------------------------------------- call facts

def _host(addr: str) -> str:
    """IP of an ``ip:port`` / ``[v6]:port`` SIP address."""
    if addr.startswith("["):
        return addr[1:addr.find("]")]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def telephony_platform(call: Call, pbx_ips: frozenset[str]) -> str:
    """The v2 ``telephonyplatform``: the User-Agent / Server header of the side whose SIP address
    is a PBX (configured ``[sip] pbx_addresses``, or inferred by the grouper: an address that
    received one leg and placed another), the callee first (on a trunk between two PBXs, the one
    that answered). "" when no side is a known PBX: a phone-to-phone call has no platform, and a
    phone's own User-Agent would misname one."""
    for side in (CALLEE, CALLER):
        party = call.parties[side]
        if party.user_agent and _host(party.sip_addr) in pbx_ips:
            return party.user_agent
    return ""


def _user(addr: Any) -> str:
    return (addr.uri.user or "") if addr is not None else ""


def dialled(call: Call) -> str:
    user = _user(call.to_addr)
    if not user and call.request_uri:
        user = call.request_uri.split(":", 1)[-1].split("@", 1)[0].split(";", 1)[0]
    return compact_number(user) if user else ""


def caller_number(call: Call) -> str:
    user = _user(call.from_addr)
    if user.lower() in ("anonymous", "") and call.pai:
        user = _user(call.pai[0])
    return compact_number(user) if user else ""


def numbers_match(a: str, b: str) -> bool:
    """Equal, or (both numbers of 6+ digits) one ends with the other (a prefix was added)."""
    if not a or not b:
        return False
    if a == b:
        return True
    da, db = a.lstrip("+"), b.lstrip("+")
    if not (da.isdigit() and db.isdigit()):
        # "12675941249_Uclx8s" vs "+12675941249": a SIP user whose leading digits are the number
        head_a = "".join(ch for ch in _takewhile_digits(da))
        head_b = "".join(ch for ch in _takewhile_digits(db))
        if not head_a or not head_b or (head_a == da and head_b == db):
            return False
        da, db = head_a, head_b
    short, long_ = sorted((da, db), key=len)
    return len(short) >= MIN_SUFFIX_DIGITS and long_.endswith(short)


def _takewhile_digits(text: str) -> str:
    n = 0
    while n < len(text) and text[n].isdigit():
        n += 1
    return text[:n]


def media_endpoints(call: Call) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for party in call.parties:
        out.update(ep for ep in party.sdp_endpoints if ep[0] not in HOLD_IPS and ep[1])
        if party.seen_endpoint is not None:
            out.add(party.seen_endpoint)
    return out


def _sip_hosts(call: Call) -> set[str]:
    return {_host(p.sip_addr) for p in call.parties if p.sip_addr}


def _connected_number(call: Call) -> str:
    user = _user(call.connected)
    return compact_number(user) if user else ""


def _end(call: Call) -> int:
    return call.end_ts_ns if call.end_ts_ns is not None else FOREVER


def _overlap(a: Call, b: Call) -> bool:
    return a.start_ts_ns <= _end(b) and b.start_ts_ns <= _end(a)


def _refer_target(refer_to: str) -> tuple[str, str]:
    """(dialled user, Replaces Call-ID) of a raw Refer-To value."""
    text = refer_to.strip()
    if "<" in text and ">" in text:
        text = text[text.index("<") + 1:text.index(">")]
    uri, _, headers = text.partition("?")
    user = uri.split(":", 1)[-1].split("@", 1)[0].split(";", 1)[0] if "@" in uri else ""
    replaces = ""
    for part in headers.split("&"):
        key, _, value = part.partition("=")
        if key.lower() == "replaces":
            from urllib.parse import unquote
            replaces = unquote(value).split(";", 1)[0]
    return (compact_number(user) if user else ""), replaces


def link_reason(a: Call, b: Call, pbx_ips: frozenset[str] = frozenset()) -> str | None:
    """Why dialogs ``a`` and ``b`` are one conversation, or None."""
    if a is b or a.callid == b.callid:
        return None
    first, second = (a, b) if (a.start_ts_ns, a.callid) <= (b.start_ts_ns, b.callid) else (b, a)
    if second.replaces and second.replaces == first.callid:
        return "replaces"
    if first.replaces and first.replaces == second.callid:
        return "replaces"
    for refer_ts, refer_to in first.refers:
        if 0 <= second.start_ts_ns - refer_ts <= TRANSFER_WINDOW_NS:
            target, replaces = _refer_target(refer_to)
            if replaces and replaces == second.callid:
                return "refer"
            if target and numbers_match(target, dialled(second)):
                return "refer"
    if not _overlap(a, b):
        return None
    if a.session_id and a.session_id == b.session_id:
        return "session_id"
    if second.start_ts_ns - first.start_ts_ns <= LINK_WINDOW_NS:
        relay = _host(second.parties[CALLER].sip_addr)
        if relay and (relay == _host(first.parties[CALLEE].sip_addr) or relay in pbx_ips):
            if numbers_match(dialled(first), dialled(second)) or \
                    numbers_match(caller_number(first), caller_number(second)):
                return "pbx"
    if _sip_hosts(a) & _sip_hosts(b):
        if numbers_match(_connected_number(a), caller_number(b)) or \
                numbers_match(_connected_number(b), caller_number(a)):
            return "connected"
    shared = media_endpoints(a) & media_endpoints(b)
    if shared:
        return "media"
    return None


# ---------------------------------------------------------------------- grouping

def _number_keys(number: str) -> set[tuple[str, str]]:
    """Index keys under which two numbers that ``numbers_match`` always meet: the number
    itself, and the last MIN_SUFFIX_DIGITS of its (leading) digits."""
    keys = {("num", number)}
    digits = number.lstrip("+")
    if not digits.isdigit():
        digits = _takewhile_digits(digits)
    if digits:
        keys.add(("num", digits[-MIN_SUFFIX_DIGITS:]))
    return keys


def link_keys(call: Call) -> set[tuple[str, Any]]:
    """Every value ``link_reason`` compares, as index keys: two dialogs that link share at
    least one key, so candidates come from an index instead of a scan of everything held."""
    keys: set[tuple[str, Any]] = {("cid", call.callid)}
    if call.replaces:
        keys.add(("cid", call.replaces))
    for _ts, refer_to in call.refers:
        target, replaces = _refer_target(refer_to)
        if replaces:
            keys.add(("cid", replaces))
        if target:
            keys |= _number_keys(target)
    if call.session_id:
        keys.add(("sid", call.session_id))
    for number in (dialled(call), caller_number(call), _connected_number(call)):
        if number:
            keys |= _number_keys(number)
    keys.update(("ep", ep) for ep in media_endpoints(call))
    return keys


@dataclass(slots=True)
class _Conversation:
    id: int
    legs: list[Any] = field(default_factory=list)      # FinishedCall
    last_end_ns: int = 0
    reasons: set[str] = field(default_factory=set)
    keys: set[tuple[str, Any]] = field(default_factory=set)
    next_live_check_ns: int = 0     # a conversation waiting for a live dialog is re-checked rarely


class ConversationGrouper:
    """Links finished dialogs into conversations and applies the leg policy (see module doc).

    Held conversations are indexed by ``link_keys`` so a flood of unrelated dialogs (a
    scanner's INVITEs) costs a few dict lookups each, not a comparison with everything held.
    A key shared by more than ``HOT_KEY_LIMIT`` held conversations (a scanner reusing one
    SDP address) stops being indexed: no real conversation has that many legs.
    """

    def __init__(self, sip_config: Any = None, *, live: Mapping[str, Call] | None = None,
                 counters: Any = None, policy: str = "conversation", grace_ns: int = GRACE_NS,
                 max_held: int = MAX_HELD) -> None:
        if policy not in ("conversation", "every_leg"):
            raise ValueError(f"unknown leg policy {policy!r}")
        self.pbx_ips = frozenset(getattr(sip_config, "pbx_addresses", ()) or ())
        self.live = live if live is not None else {}
        self.counters = counters
        self.policy = policy
        self.grace_ns = grace_ns
        self.max_held = max_held
        self._pending: dict[int, _Conversation] = {}          # insertion order = age
        self._index: dict[tuple[str, Any], set[int]] = {}
        self._next_id = 0
        self._held = 0
        self._live_index: dict[tuple[str, Any], list[Call]] = {}
        self._keys_cache: dict[int, tuple[Call, tuple, set[tuple[str, Any]]]] = {}
        self._live_index_ns: int | None = None

    # -- input ---------------------------------------------------------------------

    def feed(self, finished: Any, now_ns: int = 0) -> list[Any]:
        """Take one finished dialog; returns the finished dialogs whose conversation is done."""
        call = finished.call
        self._next_id += 1
        merged = _Conversation(id=self._next_id, legs=[finished],
                               last_end_ns=call.end_ts_ns or call.start_ts_ns, keys=link_keys(call))
        candidates: set[int] = set()
        for key in merged.keys:
            candidates |= self._index.get(key, set())
        for conv_id in sorted(candidates):
            conv = self._pending[conv_id]
            reason = self._links(conv, call)
            if reason:
                self._unindex(conv)
                merged.legs.extend(conv.legs)
                merged.last_end_ns = max(merged.last_end_ns, conv.last_end_ns)
                merged.reasons |= conv.reasons | {reason}
                merged.keys |= conv.keys
                self._count(f"legs.linked.{reason}")
        self._pending[merged.id] = merged
        self._reindex(merged)
        self._held += 1
        # Conversations are released by release() on the engine's once-a-second tick, not
        # here: a scan of everything held per finished dialog would be quadratic in a flood.
        out: list[Any] = []
        while self._held > self.max_held and self._pending:
            self._count("legs.released_over_limit")
            out += self._emit(self._pop(next(iter(self._pending))))
        return out

    def _reindex(self, conv: _Conversation) -> None:
        for key in conv.keys:
            ids = self._index.setdefault(key, set())
            if len(ids) < HOT_KEY_LIMIT:
                ids.add(conv.id)
            else:
                self._count("legs.hot_key")

    def _unindex(self, conv: _Conversation) -> None:
        self._pending.pop(conv.id, None)
        for key in conv.keys:
            ids = self._index.get(key)
            if ids is not None:
                ids.discard(conv.id)
                if not ids:
                    del self._index[key]

    def _pop(self, conv_id: int) -> _Conversation:
        conv = self._pending[conv_id]
        self._unindex(conv)
        return conv

    def _links(self, conv: _Conversation, call: Call) -> str | None:
        for leg in conv.legs:
            reason = link_reason(leg.call, call, self.pbx_ips)
            if reason:
                return reason
        return None

    def release(self, now_ns: int) -> list[Any]:
        """Conversations whose dialogs all ended more than the grace period ago."""
        out: list[Any] = []
        for conv in list(self._pending.values()):
            if now_ns - conv.last_end_ns < self.grace_ns or now_ns < conv.next_live_check_ns:
                continue
            if self._waits_for_live(conv, now_ns):
                conv.next_live_check_ns = now_ns + LIVE_RECHECK_NS
            else:
                out += self._emit(self._pop(conv.id))
        return out

    def flush(self) -> list[Any]:
        """Everything held (end of capture, shutdown)."""
        out: list[Any] = []
        for conv_id in list(self._pending):
            out += self._emit(self._pop(conv_id))
        return out

    def _live_keys(self, call: Call) -> set[tuple[str, Any]]:
        """``link_keys`` of a live dialog, recomputed only when the dialog changed (a SIP
        message, or media seen from a new party)."""
        stamp = (call.sip_messages, call.parties[0].seen_endpoint, call.parties[1].seen_endpoint)
        cache = self._keys_cache
        hit = cache.get(id(call))
        if hit is not None and hit[0] is call and hit[1] == stamp:
            return hit[2]
        if len(cache) > 2 * len(self.live) + 64:
            live_ids = {id(c) for c in self.live.values()}
            for stale in [k for k in cache if k not in live_ids]:
                del cache[stale]
        keys = link_keys(call)
        cache[id(call)] = (call, stamp, keys)
        return keys

    def _waits_for_live(self, conv: _Conversation, now_ns: int) -> bool:
        """Is a dialog still in progress linked to this conversation? With few live dialogs
        they are all checked; with many (a flood) candidates come from an index of the live
        dialogs' keys, rebuilt at most every LIVE_RECHECK_NS of packet time."""
        live = self.live
        if len(live) <= LIVE_SCAN_LIMIT:
            # Dialogs that link share a link key (see link_keys): that cheap test first.
            keys = conv.keys
            candidates: Iterable[Call] = [c for c in list(live.values())
                                          if not keys.isdisjoint(self._live_keys(c))]
        else:
            if self._live_index_ns is None or now_ns - self._live_index_ns >= LIVE_RECHECK_NS:
                index: dict[tuple[str, Any], list[Call]] = {}
                for live_call in list(live.values()):
                    for key in link_keys(live_call):
                        bucket = index.setdefault(key, [])
                        if len(bucket) < HOT_KEY_LIMIT:
                            bucket.append(live_call)
                self._live_index, self._live_index_ns = index, now_ns
            found: dict[int, Call] = {}
            for key in conv.keys:
                for live_call in self._live_index.get(key, ()):
                    found[id(live_call)] = live_call
            candidates = found.values()
        for live_call in candidates:
            if not live_call.ended and self._links(conv, live_call):
                return True
        return False

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters[name] += n

    # -- policy --------------------------------------------------------------------

    def _emit(self, conv: _Conversation) -> list[Any]:
        legs = sorted(conv.legs, key=lambda f: (f.call.start_ts_ns, f.call.callid))
        self._held -= len(legs)
        first = legs[0].call
        conversation_id = first.session_id or first.callid
        pbx = self._pbx_ips_of(legs)
        chosen = self._choose(legs, pbx) if self.policy == "conversation" else list(legs)
        for index, fin in enumerate(legs):
            record = fin.record
            record["conversation_id"] = conversation_id
            record["leg"] = index
            upload = fin in chosen
            record["upload"] = upload
            record["leg_of"] = "" if upload else conversation_id
            record["telephonyplatform"] = telephony_platform(fin.call, pbx)
            if len(legs) > 1:
                record["conversation_legs"] = len(legs)
            self._fix_feature_code(fin, legs)
        if len(legs) > 1 and chosen:
            lead = min(chosen, key=lambda f: (f.call.start_ts_ns, f.call.callid))
            self._carry_identities(lead, legs, pbx)
        if len(legs) > 1:
            self._count("legs.conversations_multi")
            self._count("legs.not_uploaded", len(legs) - len(chosen))
        return legs

    def _pbx_ips_of(self, legs: list[Any]) -> frozenset[str]:
        """Configured PBX addresses plus any address that received one leg and placed another."""
        received = {_host(f.call.parties[CALLEE].sip_addr) for f in legs}
        placed = {_host(f.call.parties[CALLER].sip_addr) for f in legs}
        return self.pbx_ips | ((received & placed) - {""})

    def _choose(self, legs: list[Any], pbx: frozenset[str]) -> list[Any]:
        def rank(fin: Any) -> tuple:
            call = fin.call
            seen = any(p.seen_endpoint is not None for p in call.parties)
            # An encrypted leg without usable keys (WebRTC DTLS-SRTP, ZRTP) can never give
            # audio; its relayed plain-RTP leg can. SDES keys make it recordable.
            encrypted = any(p.encrypted_sdp for p in call.parties) and bool(call.srtp.no_audio_reason())
            phone = any(_host(p.sip_addr) not in pbx for p in call.parties if p.sip_addr)
            return (not seen, encrypted, not phone, call.start_ts_ns, call.callid)

        answered = [f for f in legs if f.call.answered]
        if not answered:
            return [min(legs, key=rank)]
        chosen: list[Any] = []
        for fin in sorted(answered, key=rank):
            call = fin.call
            start, end = call.answer_ts_ns or call.start_ts_ns, _end(call)
            clash = False
            for other in chosen:
                o_start, o_end = other.call.answer_ts_ns or other.call.start_ts_ns, _end(other.call)
                shared_ns = min(end, o_end) - max(start, o_start)
                shorter_ns = min(end - start, o_end - o_start)
                if shared_ns > min(OVERLAP_TOLERANCE_NS, shorter_ns // 2):
                    clash = True
                    break
            if not clash:
                chosen.append(fin)
        return chosen

    def _reached(self, lead: Any, legs: list[Any], pbx: frozenset[str]) -> dict[str, str] | None:
        """The party the conversation reached: an answer's PAI/RPID, else the To of the
        answered leg the PBX placed last."""
        own = lead.record.get("connected") or {}
        if own.get("phone") or own.get("name"):
            return None
        later = [f for f in legs if f is not lead and f.call.answered]
        for fin in sorted(later, key=lambda f: f.call.start_ts_ns, reverse=True):
            placed_by_pbx = _host(fin.call.parties[CALLER].sip_addr) in pbx
            if not placed_by_pbx:
                continue
            conn = fin.record.get("connected") or {}
            if conn.get("phone"):
                return dict(conn)
            if not is_feature_code(dialled(fin.call)) and fin.record.get("destinationphone"):
                return {"name": fin.record.get("destinationname", ""),
                        "phone": fin.record["destinationphone"]}
        return None

    def _carry_identities(self, lead: Any, legs: list[Any], pbx: frozenset[str]) -> None:
        record = lead.record
        first = legs[0]
        # The conversation's first caller, unless the uploaded leg already names the caller by
        # a number (set by the PBX) and the first dialog does not (a WebRTC client's random
        # user, say): the API matches accounts by phone number.
        if first is not lead and (is_number(first.record["callerphone"])
                                  or not is_number(record["callerphone"])):
            record["callername"] = first.record["callername"]
            record["callerphone"] = first.record["callerphone"]
        reached = self._reached(lead, legs, pbx)
        if reached:
            record["connected"] = reached
        if not record.get("destinationphone") and record["connected"].get("phone"):
            record["destinationphone"] = record["connected"]["phone"]

    def _fix_feature_code(self, fin: Any, legs: list[Any]) -> None:
        """A dialled ``*8`` becomes the party reached, never the number."""
        record = fin.record
        if not is_feature_code(record.get("raw", {}).get("callee_number", "")):
            return
        conn = record.get("connected") or {}
        if conn.get("phone"):
            record["destinationphone"] = conn["phone"]
            record["destinationname"] = conn.get("name", "") or record.get("destinationname", "")
            return
        first = legs[0]
        if first is not fin and fin.call.answered:
            record["destinationphone"] = first.record["callerphone"]
            record["destinationname"] = first.record["callername"]
        else:
            record["destinationphone"] = ""


def group_all(finished: Iterable[Any], sip_config: Any = None, **kwargs: Any) -> list[Any]:
    """Group a complete list of finished dialogs at once (tests, offline tools)."""
    grouper = ConversationGrouper(sip_config, **kwargs)
    out: list[Any] = []
    for fin in sorted(finished, key=lambda f: f.call.end_ts_ns or f.call.start_ts_ns):
        out += grouper.feed(fin, fin.call.end_ts_ns or fin.call.start_ts_ns)
    return out + grouper.flush()

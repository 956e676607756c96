"""The call record: one typed, JSON-ready dict per finished call.

Carries the 14 CallN API v1 fields under their exact names (every value a string)
plus the agent's own fields. ``inspect --json`` prints it, ``replay --out`` writes
it beside the recording, the spool stores it. Field names are a stable contract
(see README "Call record").

Why a ``TypedDict`` and not a dataclass: the record *is* a JSON document. It is printed,
written to disk and read back as it is, later stages add fields (legs, recording, DTMF
merged by the recorder), and a spool written by an older (or newer) version must load
without losing a field. A TypedDict types every stage from the engine (``build_record``)
through recorder, spool, client and CLI while the object stays that document: no
to/from-dict copies at each hand-over, no field dropped by a conversion. The edges
convert in one place each: ``record_from_json`` (JSON on disk -> record) and the
client's ``api_fields`` / ``api_body_v2`` (record -> API payload).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from functools import lru_cache
from typing import Any, TypedDict, cast

from agent.calls.call import CALLEE, CALLER, Call
from agent.calls.identity import callee_identity, caller_identity
from agent.calls.macs import MacTable
from agent.calls.numbers import is_feature_code, normalise_number
from agent.config import Config

class Recording(TypedDict, total=False):
    """The record's ``recording``: the file the recorder wrote (recorder.py)."""
    file: str                    # name beside the record (replay --out) / in the spool
    format: str                  # "mp3" | "wav"
    sample_rate_hz: int
    channels: int
    duration_ms: int
    undecodable: list[str]       # encodings / "pt<N>" the decoders could not decode
    dtmf_masked_ms: int          # with [recording] mask_dtmf_audio: audio silenced over key presses


class CallRecord(TypedDict, total=False):
    """The record of one call: what ``inspect --json`` prints, ``replay --out`` writes, the
    spool stores and the client sends. The 14 API v1 fields first, under their exact names;
    then the agent's own. Built here (``build_record``); the pipeline adds ``streams`` and
    DTMF from the media, the conversation grouper the leg fields, the recorder
    ``recording`` (or ``no_audio_reason``)."""
    # API v1
    startdatetimeutc: str
    callername: str
    callerphone: str
    callerdtmf: str
    callermacaddress: str
    callermediaendpoint: str
    destinationname: str
    destinationphone: str
    destinationdtmf: str
    destinationmacaddress: str
    destinationmediaendpoint: str
    clientoperatingsystem: str
    servername: str
    location: str
    # the dialog
    callid: str
    from_tag: str
    to_tag: str
    leg: int
    answered: bool
    end_reason: str | None
    final_status: int | None
    partial_start: bool
    start_ts_ns: int
    answer_ts_ns: int | None
    end_ts_ns: int | None
    duration_ms: int
    transport: str
    codecs_offered: list[str]
    codecs_answered: list[str]
    user_agents: dict[str, str]
    telephonyplatform: str
    connected: dict[str, str]
    raw: dict[str, Any]
    media: dict[str, dict[str, Any]]
    dtmf: list[dict[str, Any]]
    encrypted: bool
    srtp: dict[str, Any]              # SDES-SRTP facts (calls/srtp_keys.py, media/srtp.py): no keys
    reinvites: int
    # conversations (calls/legs.py)
    conversation_id: str
    conversation_legs: list[dict[str, Any]]
    upload: bool
    leg_of: str
    # media and recording
    streams: list[dict[str, Any]]
    quality: dict[str, Any]           # per direction: MOS, loss, jitter (media/quality.py), mos_below
    recording: Recording | None
    no_audio_reason: str
    capture_files: list[str]
    # optional v2 inputs a record may carry (deliver/client.py api_body_v2); absent: derived
    keypresses: dict[str, list[dict[str, Any]]]     # {"caller"|"destination": [{timems, key}]}
    connecteddatetimeutc: str
    notes: str


def record_from_json(data: bytes | str) -> CallRecord:
    """A record read back from JSON (the spool's ``record.json``, ``replay --out`` files),
    as written by this or an older version: every field a record may lack is read with
    ``.get`` downstream. ValueError when the text is not a JSON object."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError(f"a call record is a JSON object, not {type(obj).__name__}")
    return cast(CallRecord, obj)


@lru_cache(maxsize=1)
def host_operating_system() -> str:
    """e.g. ``Linux 6.1.0-18-amd64 x86_64 (Debian GNU/Linux 12 (bookworm))``."""
    text = f"{platform.system()} {platform.release()} {platform.machine()}"
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        pretty = None
    return f"{text} ({pretty})" if pretty else text


def utc_text(ts_ns: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, truncated to the second (API format)."""
    return _utc_second(ts_ns // 1_000_000_000)


@lru_cache(maxsize=256)         # calls that start in the same second (a scan: thousands)
def _utc_second(ts_s: int) -> str:
    return _dt.datetime.fromtimestamp(ts_s, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def endpoint_text(endpoint: tuple[str, int] | None) -> str:
    if endpoint is None:
        return ""
    ip, port = endpoint
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _media_endpoint(call: Call, side: int) -> tuple[str, str]:
    party = call.parties[side]
    sdp = endpoint_text(party.sdp_endpoints[0]) if party.sdp_endpoints else ""
    seen = endpoint_text(party.seen_endpoint)
    return sdp, seen


def _party_ip(call: Call, side: int) -> str:
    party = call.parties[side]
    if party.seen_endpoint:
        return party.seen_endpoint[0]
    if party.sdp_endpoints:
        return party.sdp_endpoints[0][0]
    host = party.sip_addr.rsplit(":", 1)[0]
    return host.strip("[]")


def _name_addr_text(addr: Any) -> str:
    if addr is None:
        return ""
    display = f'"{addr.display}" ' if addr.display else ""
    return f"{display}<{addr.uri.raw}>"


def build_record(call: Call, config: Config, macs: MacTable,
                 extra: CallRecord | None = None) -> CallRecord:
    """The call record of an ended call (``extra`` adds media fields: streams, recording...)."""
    caller_name, caller_raw = caller_identity(call, config.sip.caller_identity)
    ruri_user = ""
    if call.request_uri:
        from agent.sip.uri import parse_uri  # local: only needed once per call
        try:
            ruri_user = parse_uri(call.request_uri).user or ""
        except ValueError:
            ruri_user = ""
    callee_name, callee_raw = callee_identity(call, config.sip.callee_identity, ruri_user)
    digits = {"caller": "", "callee": ""}
    for press in call.dtmf:
        digits[press["side"]] += press["digit"]
    media = {}
    macs_text = {}
    for side, name in ((CALLER, "caller"), (CALLEE, "callee")):
        party = call.parties[side]
        sdp_ep, seen_ep = _media_endpoint(call, side)
        mac = macs.mac_for(_party_ip(call, side), party.rtp_mac, party.sip_mac)
        macs_text[name] = mac
        media[name] = {"sdp_endpoint": sdp_ep, "seen_endpoint": seen_ep, "mac": mac,
                       "sip_addr": party.sip_addr}
    duration_ms = 0
    if call.answer_ts_ns is not None and call.end_ts_ns is not None:
        duration_ms = max(0, (call.end_ts_ns - call.answer_ts_ns) // 1_000_000)
    connected = {"name": "", "phone": ""}
    if call.connected is not None:
        connected = {"name": (call.connected.display or "").strip(),
                     "phone": normalise_number(call.connected.uri.user or "", config.numbers)}
    destination_phone = normalise_number(callee_raw, config.numbers)
    if is_feature_code(callee_raw):
        # *8, **201: a service code is never a party's number; the party reached is
        # (legs.py fills it from the conversation when the answer did not name it).
        destination_phone = connected["phone"]
        callee_name = connected["name"] or callee_name
    record: CallRecord = {
        "startdatetimeutc": utc_text(call.start_ts_ns),
        "callername": caller_name,
        "callerphone": normalise_number(caller_raw, config.numbers),
        "callerdtmf": digits["caller"],
        "callermacaddress": macs_text["caller"],
        "callermediaendpoint": media["caller"]["seen_endpoint"] or media["caller"]["sdp_endpoint"],
        "destinationname": callee_name,
        "destinationphone": destination_phone,
        "destinationdtmf": digits["callee"],
        "destinationmacaddress": macs_text["callee"],
        "destinationmediaendpoint": media["callee"]["seen_endpoint"] or media["callee"]["sdp_endpoint"],
        "clientoperatingsystem": host_operating_system(),
        "servername": config.agent.servername,
        "location": config.agent.location,
        "callid": call.callid,
        "from_tag": call.from_tag,
        "to_tag": call.to_tag,
        "leg": 0,
        "answered": call.answered,
        "end_reason": call.end_reason,
        "final_status": call.final_status,
        "partial_start": call.partial_start,
        "start_ts_ns": call.start_ts_ns,
        "answer_ts_ns": call.answer_ts_ns,
        "end_ts_ns": call.end_ts_ns,
        "duration_ms": duration_ms,
        "transport": call.transport,
        "codecs_offered": call.codecs_offered,
        "codecs_answered": call.codecs_answered,
        "user_agents": {"caller": call.parties[CALLER].user_agent,
                        "callee": call.parties[CALLEE].user_agent},
        "telephonyplatform": "",        # legs.py: the PBX side's User-Agent / Server header
        "connected": connected,
        "raw": {"from": call.from_header, "to": call.to_header, "request_uri": call.request_uri,
                "caller_number": caller_raw, "callee_number": callee_raw,
                "pai": [_name_addr_text(a) for a in call.pai], "rpid": _name_addr_text(call.rpid),
                "diversion": [_name_addr_text(a) for a in call.diversion],
                "history_info": list(call.history_info), "replaces": call.replaces,
                "referred_by": call.referred_by, "refer_to": [to for _, to in call.refers]},
        "media": media,
        "dtmf": list(call.dtmf),
        "encrypted": call.srtp.media_encrypted,       # negotiated, not merely offered
        "conversation_id": call.session_id or call.callid,   # legs.py links PBX legs
        "upload": True,                 # legs.py: False for a leg another leg's upload covers
        "leg_of": "",                   # legs.py: the conversation_id of a leg not uploaded
        "reinvites": call.reinvites,
        "streams": [],
        "recording": None,
    }
    if call.srtp.seen or call.srtp.offered_crypto:
        record["srtp"] = call.srtp.facts()      # suites and reasons, never keys
    if extra:
        record.update(extra)
    return record


def merge_dtmf_presses(record: CallRecord, presses: list[dict[str, Any]], *,
                       redact: bool) -> CallRecord:
    """A copy of ``record`` with key ``presses`` (dicts: digit, side, offset_ms, source,
    duration_ms) added to ``dtmf`` in call-time order and the v1 digit strings recomputed;
    every digit blanked when ``redact`` (PCI: the times of the presses stay, the digits go)."""
    merged = [dict(p) for p in record.get("dtmf") or []] + [dict(p) for p in presses]
    merged.sort(key=lambda p: p.get("offset_ms") or 0)
    if redact:
        for press in merged:
            press["digit"] = ""
    digits = {"caller": "", "callee": ""}
    for press in merged:
        digits["caller" if press.get("side") == "caller" else "callee"] += press["digit"]
    return {**record, "dtmf": merged, "callerdtmf": digits["caller"], "destinationdtmf": digits["callee"]}


def presses_from_events(events: list[dict[str, Any]], start_ts_ns: int) -> list[dict[str, Any]]:
    """Key presses for the record from media events (dicts with digit, direction 0/1, ts_ns,
    duration_ms, source): side names and offsets from the call start."""
    return [{"digit": ev["digit"], "side": "caller" if ev["direction"] == CALLER else "callee",
             "offset_ms": (ev["ts_ns"] - start_ts_ns) // 1_000_000, "source": ev["source"],
             "duration_ms": ev["duration_ms"]} for ev in events]

"""Closing lines of the commands: what happened, in words an operator can act on.

Pure functions of counters, spool summaries and records, so each wording is tested once
and shared by ``inspect``, ``replay`` and ``demo``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from agent.deliver.spool_state import ACTIVE_STATES, PARKED
from agent.textsafe import terminal_safe

MAX_LISTED = 20     # calls without a recording named one per line, the rest counted


def delivery_line(counters: Mapping[str, int], spool_summary: Mapping[str, int]) -> str:
    """``replay --deliver`` / ``demo``: delivered, unconfirmed, parked and pending calls.

    Delivered calls leave the spool at once (retention 0), so delivered and unconfirmed are
    this run's upload counters; parked and pending are what the spool still holds."""
    delivered = counters.get("deliver.upload.delivered", 0)
    unconfirmed = counters.get("deliver.upload.delivered_unconfirmed", 0)
    parked = sum(n for state, n in spool_summary.items() if state.startswith(PARKED))
    pending = sum(n for state, n in spool_summary.items() if state in ACTIVE_STATES)
    parts = [f"{delivered} call(s) delivered", f"{unconfirmed} delivered unconfirmed",
             f"{parked} parked", f"{pending} pending"]
    duplicates = counters.get("deliver.spool.duplicate", 0)
    if duplicates:
        parts.append(f"{duplicates} already delivered before (not sent again)")
    skipped = counters.get("deliver.spool.skipped_unanswered", 0)
    if skipped:
        parts.append(f"{skipped} unanswered not uploaded")
    line = "delivery: " + ", ".join(parts)
    if parked:
        line += " (calln-agent spool list shows why)"
    return line


def skipped_input_line(counters: Mapping[str, int]) -> str | None:
    """One line when input was skipped (malformed SIP/SDP, RTP of no call, refused calls),
    else None: "0 call(s)" must not look like a clean result when every message was dropped."""
    parts = []
    sip = {k: v for k, v in counters.items() if v and k.startswith(("sip.skip.", "sdp.skip."))}
    if sip:
        detail = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in sorted(sip.items()))
        parts.append(f"{sum(sip.values())} SIP/SDP message(s) skipped ({detail})")
    if counters.get("rtp.unmatched"):
        parts.append(f"{counters['rtp.unmatched']} RTP packet(s) matched no call")
    if counters.get("calls.refused_limit"):
        parts.append(f"{counters['calls.refused_limit']} call(s) refused at [sip] max_calls")
    if not parts:
        return None
    return "calln-agent: " + "; ".join(parts) + " (--counters for every counter)"


def _party(record: Mapping[str, Any], phone: str, name: str) -> str:
    number = record.get(phone) or "?"
    return terminal_safe(f"{record[name]} <{number}>" if record.get(name) else number)


def without_recording_lines(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """``replay --out``: which calls have no recording, and why (end reason, answered or not,
    the recorder's no-audio reason)."""
    missing = [r for r in records if not r.get("recording")]
    lines = []
    for record in missing[:MAX_LISTED]:
        why = [record.get("end_reason") or "?", "answered" if record.get("answered") else "unanswered"]
        if record.get("no_audio_reason"):
            why.append(f"no audio: {record['no_audio_reason']}")
        lines.append(f"  no recording: {record.get('startdatetimeutc', '')}  "
                     f"{_party(record, 'callerphone', 'callername')} -> "
                     f"{_party(record, 'destinationphone', 'destinationname')}  ({', '.join(why)})")
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more without a recording (see their JSON records)")
    return lines

"""The closing lines: delivery outcome, skipped input, calls without a recording, and the
terminal escaping of text from the wire."""

from __future__ import annotations

from collections import Counter

from agent.summaries import MAX_LISTED, delivery_line, skipped_input_line, without_recording_lines
from agent.textsafe import terminal_safe


def test_delivery_line_counts_every_outcome() -> None:
    counters = Counter({"deliver.upload.delivered": 30, "deliver.upload.delivered_unconfirmed": 2,
                        "deliver.spool.duplicate": 1})
    summary = {"parked": 1, "ready": 2, "uploading": 1, "delivered": 5}
    assert delivery_line(counters, summary) == (
        "delivery: 30 call(s) delivered, 2 delivered unconfirmed, 1 parked, 3 pending, "
        "1 already delivered before (not sent again) (calln-agent spool list shows why)")
    assert delivery_line(Counter(), {}) == (
        "delivery: 0 call(s) delivered, 0 delivered unconfirmed, 0 parked, 0 pending")


def test_skipped_input_line() -> None:
    assert skipped_input_line(Counter({"sip.messages": 5, "calls.started": 1})) is None
    line = skipped_input_line(Counter({"sip.skip.malformed": 5, "sdp.skip.malformed": 1,
                                       "rtp.unmatched": 40, "calls.refused_limit": 2}))
    assert line == ("calln-agent: 6 SIP/SDP message(s) skipped (malformed 1, malformed 5); "
                    "40 RTP packet(s) matched no call; 2 call(s) refused at [sip] max_calls "
                    "(--counters for every counter)")


def _record(n: int, **kw) -> dict:
    return dict({"startdatetimeutc": f"2026-01-15 10:00:{n:02d}", "callerphone": f"20{n:02d}",
                 "callername": "", "destinationphone": "3001", "destinationname": "Dave",
                 "end_reason": "bye", "answered": True, "recording": {"file": "x.mp3"}}, **kw)


def test_without_recording_names_each_call_and_why() -> None:
    records = [_record(0), _record(1, end_reason="cancel", answered=False, recording=None,
                                   no_audio_reason="no_rtp"),
               _record(2, end_reason="rejected:486", answered=False, recording=None,
                       destinationname="\x1b[2J")]
    assert without_recording_lines(records) == [
        "  no recording: 2026-01-15 10:00:01  2001 -> Dave <3001>  (cancel, unanswered, no audio: no_rtp)",
        "  no recording: 2026-01-15 10:00:02  2002 -> \\x1b[2J <3001>  (rejected:486, unanswered)"]
    many = [_record(n % 60, recording=None) for n in range(MAX_LISTED + 5)]
    lines = without_recording_lines(many)
    assert len(lines) == MAX_LISTED + 1 and lines[-1].startswith("  ... and 5 more")


def test_terminal_safe_escapes_controls_and_bidi_only() -> None:
    assert terminal_safe("Zoë \"Z\" Smith <1001>") == "Zoë \"Z\" Smith <1001>"
    assert terminal_safe("a\x1b[31mb\x07c\x00d\x7fe\x9bf") == "a\\x1b[31mb\\x07c\\x00d\\x7fe\\x9bf"
    assert (terminal_safe("\u202aa\u202bb\u202cc\u202dd\u202ee\u2066f\u2067g\u2068h\u2069")
            == "\\u202aa\\u202bb\\u202cc\\u202dd\\u202ee\\u2066f\\u2067g\\u2068h\\u2069")
    assert terminal_safe("x\r\ny\tz") == "x\\x0d\\x0ay\\x09z"

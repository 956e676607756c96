"""DTMF carried in SIP INFO bodies: application/dtmf-relay and application/dtmf.

Owns: ``parse_dtmf_info``, body in, (digit, duration_ms) out. Does not own
deciding which INFO belongs to which call or direction (the tracker), nor
RFC 4733 telephone-events in RTP (``agent/media``).
"""

from __future__ import annotations

__all__ = ["parse_dtmf_info"]

_DIGITS = frozenset("0123456789*#ABCD")
# RFC 4733 event codes as some gateways write them in Signal=.
_EVENT_CODES = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}
_MAX_BODY_BYTES = 4096


def _normalise_digit(text: str, allow_event_codes: bool = True) -> str | None:
    value = text.strip().upper()
    if allow_event_codes and value in _EVENT_CODES:
        return _EVENT_CODES[value]
    if len(value) == 1 and value in _DIGITS:
        return value
    return None


def _parse_duration_ms(text: str) -> int | None:
    value = text.strip()
    if not value or len(value) > 9 or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def parse_dtmf_info(content_type: str, body: bytes) -> tuple[str, int | None] | None:
    """Return (digit, duration_ms) for a DTMF INFO body, or None when it is not one.

    ``content_type`` may carry parameters and any case. Digits come back as
    one of ``0-9 * # A-D``; the duration is None when the body has none.
    """
    if not content_type or len(body) > _MAX_BODY_BYTES:
        return None
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type not in ("application/dtmf-relay", "application/dtmf"):
        return None
    text = bytes(body).decode("latin-1")
    digit: str | None = None
    duration_ms: int | None = None
    saw_key = False
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if not eq:
            continue
        saw_key = True
        key = key.strip().lower()
        if key == "signal" and digit is None:
            digit = _normalise_digit(value)
        elif key == "duration" and duration_ms is None:
            duration_ms = _parse_duration_ms(value)
    if media_type == "application/dtmf" and not saw_key:
        # RFC-less but common: the body is just the digit.
        digit = _normalise_digit(text, allow_event_codes=False)
    if digit is None:
        return None
    return digit, duration_ms

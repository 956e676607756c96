"""Text from the wire made inert for a terminal.

Display names and numbers come from SIP headers anyone can write. Printed raw, an ESC
sequence could move the cursor, rewrite earlier lines or set the window title, BEL rings,
and bidi overrides (U+202A-202E, U+2066-2069) reorder what the operator reads. Tables and
listings print ``terminal_safe(text)``; JSON output keeps the exact text (json.dumps
escapes control characters itself, so it stays valid).
"""

from __future__ import annotations

import re

# C0 and DEL, C1, and the invisible direction marks, embeddings, overrides and isolates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every control or bidi-control character shown as ``\\xNN`` / ``\\uNNNN``."""
    return _UNSAFE.sub(_escape, text)

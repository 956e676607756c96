"""Phone number normalisation for the API fields (the ``[numbers]`` settings).

The CallN server matches accounts by phone number, so the form sent decides
whether a call is accepted. Only values that look like numbers are touched; a
user part like ``alice`` or a feature code like ``*8`` passes through unchanged
(apart from whitespace). The raw value always stays in the call record.

Steps, in order (each only for a value that is a number once visual separators are gone):
1. URI wrapping goes: ``<>``, quotes, ``sip:``/``sips:``/``tel:``, ``@host``, URI
   parameters (``;user=phone``, ``;ext=``, ``;isub=``), %-escapes (``%2B`` is ``+``).
   A ``tel:`` local number with a global ``;phone-context=+CC...`` gets that prefix (RFC 3966).
2. Visual separators go (space, NBSP, ``-``, Unicode dashes, ``.``, ``/``, ``()``), and the
   "(0)" that people write after a country code (``+49 (0)30 ...``) is dropped.
3. ``extension_map`` (exact match on the compacted value) wins over everything else.
4. ``outside_line_prefix`` (the 9 or 0 dialled for an outside line) is stripped from numbers
   long enough to be external ones.
5. The international access prefix (``00``; ``011`` in the NANP, country code 1) becomes ``+``.
6. ``strip_country_code`` turns ``+CC...`` into national form (``national_prefix`` + rest);
   ``add_country_code`` turns a national number (``national_prefix`` + rest) into ``+CC...``.
Pure functions; no I/O.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote

from agent.config import NumbersSection

VISUAL_SEPARATORS = str.maketrans("", "", " -.()/\t\u00a0\u2010\u2011\u2012\u2013\u2014\u2212\u3000")
_FEATURE_CHARS = frozenset("0123456789*#")
MIN_EXTERNAL_DIGITS = 7      # shorter all-digit values are extensions: never re-prefixed


def _uri_params(text: str) -> tuple[str, dict[str, str]]:
    head, *params = text.split(";")
    out: dict[str, str] = {}
    for p in params:
        key, _, value = p.partition("=")
        out[key.strip().lower()] = value.strip()
    return head, out


@lru_cache(maxsize=4096)      # a record, its legs and the live index ask for the same few values
def _strip_uri(value: str) -> str:
    text = value.strip().strip('"').strip()
    if text.startswith("<") and ">" in text:
        text = text[1:text.index(">")]
    lower = text.lower()
    scheme = ""
    for candidate in ("tel:", "sip:", "sips:"):
        if lower.startswith(candidate):
            scheme = candidate
            text = text[len(candidate):]
            break
    if "@" in text:
        text = text.split("@", 1)[0]       # the user part; its own ;params are handled below
    text, params = _uri_params(text)
    text = unquote(text).strip()
    context = unquote(params.get("phone-context", ""))
    if scheme == "tel:" and context.startswith("+") and not text.startswith("+"):
        # RFC 3966 local number whose context is a global number prefix.
        text = context + text
    return text


@lru_cache(maxsize=4096)
def compact_number(value: str) -> str:
    """The value without URI wrapping and visual separators (no prefix rules applied)."""
    text = _strip_uri(value)
    if text.startswith(("+", "00")) and "(0)" in text:
        text = text.replace("(0)", "", 1)
    return text.translate(VISUAL_SEPARATORS)


def is_feature_code(value: str) -> bool:
    """``*8``, ``**201``, ``#31#``, ``*72``: PBX service codes, never a party's number."""
    text = compact_number(value)
    return bool(text) and all(ch in _FEATURE_CHARS for ch in text) and (
        text[0] in "*#" or "*" in text or "#" in text)


def is_number(value: str) -> bool:
    text = compact_number(value)
    body = text[1:] if text.startswith("+") else text
    return bool(body) and body.isdigit()


def normalise_number(value: str, rules: NumbersSection) -> str:
    text = _strip_uri(value)
    compact = compact_number(value)
    body = compact[1:] if compact.startswith("+") else compact
    if not body or not body.isdigit():
        return text.strip()                # a name, a feature code, or empty: leave it
    number = compact
    if rules.extension_map and number in rules.extension_map:
        return rules.extension_map[number]
    prefix = rules.outside_line_prefix
    if prefix and number.startswith(prefix) and len(number) > len(prefix) + 4:
        number = number[len(prefix):]
    cc = rules.country_code.lstrip("+")
    international = "011" if cc == "1" else "00"
    if number.startswith(international) and len(number) >= len(international) + MIN_EXTERNAL_DIGITS:
        number = "+" + number[len(international):]
    if cc:
        national = rules.national_prefix
        if rules.strip_country_code and number.startswith("+" + cc):
            number = (national or "") + number[1 + len(cc):]
        elif rules.add_country_code and not number.startswith("+") and len(number) >= MIN_EXTERNAL_DIGITS:
            if national and number.startswith(national):
                number = "+" + cc + number[len(national):]
            elif not national:
                number = "+" + cc + number
    return number

"""Phone number normalisation for the API fields (the ``[numbers]`` settings).

The CallN server matches accounts by phone number, so the form sent decides
whether a call is accepted. Only values that look like numbers are touched; a
user part like ``alice`` or a feature code like ``*8`` passes through unchanged
(apart from whitespace). The raw value always stays in the call record.
"""

from __future__ import annotations

from urllib.parse import unquote

from agent.config import NumbersSection

VISUAL_SEPARATORS = str.maketrans("", "", " -.()/\t")


def _strip_uri(value: str) -> str:
    text = value.strip()
    lower = text.lower()
    for scheme in ("tel:", "sip:", "sips:"):
        if lower.startswith(scheme):
            text = text[len(scheme):]
            break
    text = text.split(";", 1)[0]          # ;phone-context=..., ;ext=..., ;user=phone
    if "@" in text:
        text = text.split("@", 1)[0]
    return unquote(text)


def normalise_number(value: str, rules: NumbersSection) -> str:
    text = _strip_uri(value)
    compact = text.translate(VISUAL_SEPARATORS)
    body = compact[1:] if compact.startswith("+") else compact
    if not body or not body.isdigit():
        return text.strip()                # a name, a feature code, or empty: leave it
    number = compact
    if rules.extension_map and number in rules.extension_map:
        return rules.extension_map[number]
    if rules.outside_line_prefix and number.startswith(rules.outside_line_prefix) and \
            len(number) > len(rules.outside_line_prefix) + 4:
        number = number[len(rules.outside_line_prefix):]
    cc = rules.country_code.lstrip("+")
    if cc:
        if number.startswith("00" + cc):
            number = "+" + number[2:]
        if rules.strip_country_code and number.startswith("+" + cc):
            number = (rules.national_prefix or "") + number[1 + len(cc):]
        elif rules.add_country_code and not number.startswith("+"):
            national = rules.national_prefix
            if national and number.startswith(national) and len(number) > 6:
                number = "+" + cc + number[len(national):]
            elif len(number) > 6 and not national:
                number = "+" + cc + number
    return number

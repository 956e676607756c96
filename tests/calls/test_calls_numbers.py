"""normalise_number / is_feature_code over real-world number forms (the [numbers] rules)."""

from __future__ import annotations

import pytest

from agent.calls.numbers import compact_number, is_feature_code, normalise_number
from agent.config import NumbersSection

DE_INTL = NumbersSection(country_code="49", national_prefix="0", add_country_code=True)
DE_NATIONAL = NumbersSection(country_code="49", national_prefix="0", strip_country_code=True)
US = NumbersSection(country_code="1", national_prefix="1", add_country_code=True)
FR_PBX = NumbersSection(outside_line_prefix="0", country_code="33", national_prefix="0",
                        add_country_code=True, extension_map={"201": "+33123456201"})
PLAIN = NumbersSection()

CASES = [
    # (raw value as found in a header / URI, rules, expected)
    ("1001", PLAIN, "1001"),                                            # extension
    ("alice", PLAIN, "alice"),                                          # SIP user name
    ("anonymous", PLAIN, "anonymous"),
    ("", PLAIN, ""),
    ("+49 30 1234567", PLAIN, "+49301234567"),                          # spaces
    ("+49 (0)30 123-4567", PLAIN, "+49301234567"),                      # "(0)" after country code
    ("+1 (555) 123-0002", PLAIN, "+15551230002"),                       # NANP punctuation
    ("tel:+1-555-123-0002;phone-context=example.com", PLAIN, "+15551230002"),
    ("tel:7042;phone-context=+1-555-123", PLAIN, "+15551237042"),       # RFC 3966 local number
    ("sip:+4930123456@gw.example;user=phone", PLAIN, "+4930123456"),
    ("<sip:+4930123456@gw.example:5060;transport=udp>", PLAIN, "+4930123456"),
    ("%2B4930123456", PLAIN, "+4930123456"),                            # %-escaped plus
    ("0049301234567", PLAIN, "+49301234567"),                           # 00 international prefix
    ("011 44 20 7946 0958", US, "+442079460958"),                       # NANP 011 prefix
    ("030 1234567", DE_INTL, "+49301234567"),                           # national -> E.164
    ("030/1234567", DE_INTL, "+49301234567"),                           # slash separator
    ("+49301234567", DE_NATIONAL, "0301234567"),                        # E.164 -> national
    ("1 555 123 0002", US, "+15551230002"),                             # NANP national prefix 1
    ("5551230002", NumbersSection(country_code="1", add_country_code=True), "+15551230002"),
    ("00612345678", FR_PBX, "+33612345678"),                            # outside line 0 + national 0
    ("201", FR_PBX, "+33123456201"),                                    # extension map
    ("202", FR_PBX, "202"),                                             # short: never re-prefixed
    ("+33\u00a01\u00a023\u00a045\u00a067\u00a089", PLAIN, "+33123456789"),  # NBSP separators
    ("+44\u20117946\u20110958", PLAIN, "+4479460958"),                  # non-breaking hyphens
    ("sip:1002;ext=22@pbx.example", PLAIN, "1002"),                     # user-part parameter
    ("*8", PLAIN, "*8"),                                                # feature codes untouched
    ("**201", DE_INTL, "**201"),
    ("#31#0301234567", DE_INTL, "#31#0301234567"),
    ("  1002 ", PLAIN, "1002"),
    ("0012", PLAIN, "0012"),                                            # short 00...: an extension
]


@pytest.mark.parametrize("raw,rules,want", CASES, ids=[c[0] or "empty" for c in CASES])
def test_normalise_number_real_world_forms(raw: str, rules: NumbersSection, want: str) -> None:
    assert normalise_number(raw, rules) == want


@pytest.mark.parametrize("value", ["*8", "**201", "*72", "#31#", "*78*1002#", "sip:*8@pbx", "%2A8"])
def test_feature_codes(value: str) -> None:
    assert is_feature_code(value)


@pytest.mark.parametrize("value", ["1002", "+49301234567", "alice", "", "anonymous"])
def test_not_feature_codes(value: str) -> None:
    assert not is_feature_code(value)


def test_compact_number_keeps_non_numbers() -> None:
    assert compact_number("<sip:telephone2@10.0.0.1>") == "telephone2"

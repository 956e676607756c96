"""DTMF in SIP INFO bodies."""

import pytest

from agent.sip.dtmf_info import parse_dtmf_info


@pytest.mark.parametrize(
    "ctype,body,expected",
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
        ("application/dtmf-relay", b"Signal=1\r\nDuration=180\r\n", ("1", 180)),  # dtmfsipinfo.pcap
        ("Application/DTMF-Relay; charset=x", b"signal = * \nDURATION = 250\n", ("*", 250)),
        ("application/dtmf-relay", b"Signal=#\r\nDuration=100", ("#", 100)),
        ("application/dtmf-relay", b"Signal=10\r\nDuration=100", ("*", 100)),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=100", ("#", 100)),
        ("application/dtmf-relay", b"Signal=a\r\nDuration=100", ("A", 100)),
        ("application/dtmf-relay", b"Signal=D\r\n", ("D", None)),
        ("application/dtmf-relay", b"Signal=7\r\nDuration=forever\r\n", ("7", None)),
        ("application/dtmf", b"9", ("9", None)),
        ("application/dtmf", b" # \r\n", ("#", None)),
        ("application/dtmf", b"Signal=3\r\nDuration=40", ("3", 40)),
    ],
)
def test_dtmf_bodies(ctype, body, expected):
    assert parse_dtmf_info(ctype, body) == expected


@pytest.mark.parametrize(
    "ctype,body",
    [
        ("application/sdp", b"Signal=5\r\n"),
        ("application/dtmf-relay", b"Signal=E\r\nDuration=100"),
        ("application/dtmf-relay", b"Signal=16\r\n"),
        ("application/dtmf-relay", b"Duration=100\r\n"),
        ("application/dtmf-relay", b""),
        ("application/dtmf", b"12"),
        ("application/dtmf", b""),
        ("", b"Signal=5"),
        ("application/dtmf-relay", b"Signal=5" + b" " * 10000),
    ],
)
def test_not_dtmf(ctype, body):
    assert parse_dtmf_info(ctype, body) is None

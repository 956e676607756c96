"""calln-agent show: the ladder and quality lines against golden text, choosing the call,
and hostile text from the wire kept inert."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER, T0_S, _sdp, _sip, udp_frame
from tests.conftest import PCAPS, REPO

GOLDEN = Path(__file__).parent / "golden"


def show(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "show", *args], capture_output=True, cwd=REPO,
                          timeout=300)
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc


@pytest.mark.parametrize("golden, args", [
    ("dtmf_rfc4733.unicode.txt", ["dtmf_rfc4733.pcap"]),
    ("sipp_proxy_rtpengine.ascii.txt", ["sipp_proxy_rtpengine.pcap", "--ascii"]),
    ("multi_call_2.ascii.txt", ["multi_call.pcap", "--ascii", "--number", "2"]),
])
def test_output_matches_golden_text(golden, args):
    capture, *rest = args
    out = show(str(PCAPS / capture), *rest).stdout.decode()
    assert out == (GOLDEN / golden).read_text(encoding="utf-8")


def test_ascii_output_is_plain_ascii_and_unicode_draws_lines():
    ascii_out = show(str(PCAPS / "dtmf_rfc4733.pcap"), "--ascii").stdout
    ascii_out.decode("ascii")                                   # raises on any non-ASCII byte
    assert b"|----- INVITE (SDP) --->|" in ascii_out
    assert "\u2502\u2500\u2500\u2500\u2500\u2500 INVITE (SDP) \u2500\u2500\u2500\u25b6\u2502" in \
        show(str(PCAPS / "dtmf_rfc4733.pcap")).stdout.decode()


def test_call_chosen_by_call_id_and_errors_are_clean():
    out = show(str(PCAPS / "multi_call.pcap"), "--call", "multi_call-0003@callntest.example", "--ascii").stdout
    assert out.startswith(b"call multi_call-0003@callntest.example ")
    assert b"end reason: " in out
    assert b"no call with Call-ID" in show(str(PCAPS / "multi_call.pcap"), "--call", "nope", ok=False).stderr
    assert b"the capture has 3 call(s)" in show(str(PCAPS / "multi_call.pcap"), "--number", "9", ok=False).stderr


def test_hostile_text_is_escaped(tmp_path):
    """A Call-ID and an SDP codec name carrying terminal escapes: shown as \\x1b (the 180 whose
    reason phrase has one is rejected by the SIP parser, so it is not drawn at all)."""
    path = tmp_path / "hostile.pcap"
    a, b = bytes([10, 7, 0, 1]), bytes([10, 7, 0, 2])
    callid, evil = "evil\x1b]0;owned\x07@x", "\x1b[2J"
    sdp = _sdp("10.7.0.1", 40000).replace("PCMU/8000", f"PCMU{evil}/8000")
    frames = [
        (0, a, b, _sip("INVITE sip:200@pbx.example SIP/2.0", callid, "f", "", "1 INVITE", "100", "200", sdp)),
        (10, b, a, _sip("SIP/2.0 180 Ring\x1b[31ming", callid, "f", "t", "1 INVITE", "100", "200")),
        (20, b, a, _sip("SIP/2.0 486 Busy", callid, "f", "t", "1 INVITE", "100", "200")),
    ]
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for n, (ms, src, dst, payload) in enumerate(frames):
            frame = udp_frame(ETH_CALLER if src == a else ETH_PBX, ETH_PBX if src == a else ETH_CALLER, src, dst,
                              5060, 5060, payload.encode("latin-1") if isinstance(payload, str) else payload, n)
            fh.write(struct.pack("<IIII", T0_S, ms * 1000, len(frame), len(frame)))
            fh.write(frame)
    out = show(str(path), "--ascii").stdout
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"call evil\\x1b]0;owned\\x07@x " in out
    assert b"PCMU\\x1b[2J/8000" in out


def test_call_whose_invite_was_not_captured_is_still_shown(public_dir):
    """fragmented_udp_sip.pcap holds only the INVITE's first fragment: the call is its answers."""
    out = show(str(public_dir / "fragmented_udp_sip.pcap"), "--ascii").stdout.decode()
    assert out.startswith("call 1-21520@10.192.243.79 (5 SIP messages)")
    assert "|----- 200 OK (SDP) --->|" in out and "end reason: bye" in out

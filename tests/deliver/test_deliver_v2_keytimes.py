"""Issue 18: each v2 key press's ``timems`` is within 40 ms of the truth.

The truth is derived without the agent: tshark gives the INVITE's capture time and, for RFC 4733,
each event's FIRST packet seen (an event = one RTP timestamp of one SSRC), for SIP INFO the
message's capture time and the digit from its body. In-band tones need ``replay`` (inspect does
not decode audio); their onsets are known by construction of a capture written here with the
DTMF generator's building blocks."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.deliver.client import api_body_v2
from agent.media.g711 import linear_to_ulaw
from tests.conftest import PCAPS, PUBLIC, REPO, run_inspect

sys.path.insert(0, str(PCAPS))
import make_dtmf_pcaps as gen  # noqa: E402
from make_pcaps import MS, T0, write_scenario  # noqa: E402

TOLERANCE_MS = 40
EVENT_DIGITS = "0123456789*#ABCD"
SIDES = {"caller": "caller", "callee": "destination"}

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def _tshark(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    proc = subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields",
                           *[a for f in fields for a in ("-e", f)]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]


def _calls(path: Path) -> dict[str, dict]:
    """Call-ID -> first INVITE time (s), the INVITE sender's IP, and every SDP media port."""
    calls: dict[str, dict] = {}
    for t, callid, method, src in _tshark(path, 'sip.Method == "INVITE"', "frame.time_epoch",
                                          "sip.Call-ID", "sip.CSeq.method", "ip.src"):
        calls.setdefault(callid, {"invite_s": float(t), "caller_ip": src, "ports": set()})
    for callid, ports in _tshark(path, "sdp", "sip.Call-ID", "sdp.media.port"):
        if callid in calls:
            calls[callid]["ports"].update(int(p) for p in ports.split(",") if p)
    return calls


def _truth_rfc4733(path: Path, calls: dict[str, dict]) -> dict[str, list[tuple[str, str, float]]]:
    """Call-ID -> [(side, digit, ms from the INVITE)] from each event's first packet seen."""
    first: dict[tuple, tuple[float, int, str, int, int]] = {}
    for t, src, sport, dport, ssrc, ts, event in _tshark(
            path, "rtpevent", "frame.time_epoch", "ip.src", "udp.srcport", "udp.dstport",
            "rtp.ssrc", "rtp.timestamp", "rtpevent.event_id"):
        key = (ssrc, int(ts))
        if key not in first or float(t) < first[key][0]:
            first[key] = (float(t), int(event), src, int(sport), int(dport))
    out: dict[str, list] = {c: [] for c in calls}
    for t, event, src, sport, dport in first.values():
        # The call whose SDP names this stream's port; latest INVITE first when ports repeat.
        owners = [c for c, v in calls.items() if {sport, dport} & v["ports"] and v["invite_s"] <= t]
        callid = max(owners, key=lambda c: calls[c]["invite_s"])
        side = "caller" if src == calls[callid]["caller_ip"] else "callee"
        out[callid].append((side, EVENT_DIGITS[event], (t - calls[callid]["invite_s"]) * 1000))
    return out


def _info_digit(payload_hex: str) -> str:
    body = bytes.fromhex(payload_hex).split(b"\r\n\r\n", 1)[1].decode()
    m = re.search(r"Signal\s*=\s*(\S)", body, re.I)      # application/dtmf-relay
    return m.group(1) if m else body.strip()[:1]           # application/dtmf: the digit alone


def _truth_info(path: Path, calls: dict[str, dict]) -> dict[str, list[tuple[str, str, float]]]:
    out: dict[str, list] = {c: [] for c in calls}
    for t, callid, src, payload in _tshark(path, 'sip.Method == "INFO"', "frame.time_epoch",
                                           "sip.Call-ID", "ip.src", "udp.payload"):
        side = "caller" if src == calls[callid]["caller_ip"] else "callee"
        out[callid].append((side, _info_digit(payload), (float(t) - calls[callid]["invite_s"]) * 1000))
    return out


def _sent(record: dict) -> list[tuple[str, str, int]]:
    body = api_body_v2(record)
    return [(side, p["key"], p["timems"]) for side, party in SIDES.items()
            for p in body[party]["keypresses"] or []]


def _assert_close(truth: list[tuple[str, str, float]], sent: list[tuple[str, str, int]],
                  *, check_side: bool) -> None:
    def norm(presses):
        return sorted(((s if check_side else "", d, t) for s, d, t in presses), key=lambda p: p[2])
    truth, sent = norm(truth), norm(sent)
    assert [(s, d) for s, d, _ in sent] == [(s, d) for s, d, _ in truth], (sent, truth)
    errors_ms = [abs(got - want) for (_, _, got), (_, _, want) in zip(sent, truth)]
    assert max(errors_ms, default=0) <= TOLERANCE_MS, list(zip(sent, truth))


CAPTURES = [(PCAPS / "dtmf_rfc4733.pcap", _truth_rfc4733, True),
            (PCAPS / "dtmf_pt_mismatch.pcap", _truth_rfc4733, True),
            (PCAPS / "dtmf_sipinfo.pcap", _truth_info, True),
            # Public captures: sides are not checked (sip_dtmf2's INVITE and 200 OK both come
            # through a B2BUA at .110, so the sender's IP does not tell the side).
            (PUBLIC / "sip_dtmf2.pcap", _truth_rfc4733, False),
            (PUBLIC / "dtmfsipinfo.pcap", _truth_info, False)]


@pytest.mark.parametrize("capture,truth_of,check_side", CAPTURES, ids=lambda v: getattr(v, "stem", ""))
def test_signalled_key_times_within_40_ms(capture: Path, truth_of, check_side: bool) -> None:
    if not capture.exists():
        pytest.skip(f"{capture} is not present")
    calls = _calls(capture)
    truth = truth_of(capture, calls)
    records = {r["callid"]: r for r in run_inspect(capture)}
    assert sum(len(v) for v in truth.values()) > 0
    for callid, presses in truth.items():
        _assert_close(presses, _sent(records[callid]), check_side=check_side)


# ----------------------------------------------------------------------------- in-band
KEY_HZ = {"1": (697, 1209), "5": (770, 1336), "9": (852, 1477), "#": (941, 1477),
          "0": (941, 1336)}


def _tone_packets(sender: "gen.Sender", start_ns: int, digit: str, n: int) -> int:
    """``n`` 20 ms PCMU packets of ``digit``'s tone pair in place of audio; returns the onset."""
    onset_ns = sender.t(start_ns)
    fl, fh = KEY_HZ[digit]
    for _ in range(n):
        k = np.arange(160) + sender.tick * 160
        x = 6000 * np.sin(2 * np.pi * fl * k / 8000) + 5000 * np.sin(2 * np.pi * fh * k / 8000)
        sender._put(sender.t(start_ns), 0, False, sender.seq, sender.ts0 + sender.tick * 160,
                    linear_to_ulaw(np.round(x).astype(np.int16)))
        sender.seq += 1
        sender.tick += 1
    return onset_ns


def _inband_capture(out_dir: Path) -> tuple[Path, list[tuple[str, str, float]]]:
    onsets: list[tuple[str, str, float]] = []

    def make() -> "gen.Capture":
        cap = gen.Capture("dtmf_inband", "In-band DTMF: caller '1' '5' '9', callee '#' '0'.")
        a, b = gen._parties()
        d = gen.Dialog("dtmf-inband-0001@callntest.example", a, b, from_tag="ft-ib", to_tag="tt-ib")

        def script(s_a, s_b, fa: int, fb: int) -> int:
            for sender, start, side, keys in ((s_a, fa, "caller", "159"), (s_b, fb, "callee", "#0")):
                sender.audio(start, 20)
                for digit in keys:
                    onset = _tone_packets(sender, start, digit, 5)
                    onsets.append((side, digit, (onset - T0) / MS))
                    sender.audio(start, 12)
            return max(s_a.t(fa), s_b.t(fb))

        cap.calls.append(gen._call(cap, d, 101, 101, script))
        return cap

    path = write_scenario("dtmf_inband", make, out_dir, generator="tests (in-band DTMF)", notes="")
    return path, onsets


def test_inband_key_times_within_40_ms(tmp_path: Path) -> None:
    capture, onsets = _inband_capture(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, CALLN_RECORDING_CHANNELS="2")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(out),
                           "--format", "wav", "--workers", "1", str(capture)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [record] = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert {p["source"] for p in record["dtmf"]} == {"inband"}
    _assert_close(onsets, _sent(record), check_side=True)

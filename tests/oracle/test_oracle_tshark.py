"""tshark (through pyshark) as an independent oracle for pcaps/ and the agent.

Two checks per capture in pcaps/:
- test_truth_agrees_with_tshark: the truth file's Call-IDs, caller/callee numbers and display
  names match the INVITEs tshark dissects, and its RTP packet counts per side match what
  tshark sees with ``-o rtp.heuristic_rtp:TRUE`` (distinct (SSRC, seq) per sending IP). This
  validates the captures and truth independently of the agent.
- test_agent_agrees_with_tshark: ``inspect --json`` lists the same Call-IDs with the same
  From/To users (PAI when From is anonymous) as tshark.

SIP over TCP in these captures uses port 5060, which tshark dissects as SIP by default; other
ports would need ``decode_as={"tcp.port==N": "sip"}``. Skips cleanly without tshark/pyshark.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "captures"))
from _captures_testlib import (PCAPS_DIR, capture_files, inspect_cached,  # noqa: E402
                               load_truth)

pyshark = pytest.importorskip("pyshark")
if shutil.which("tshark") is None:
    pytest.skip("tshark is not installed", allow_module_level=True)

# tshark (Debian 12's 4.0) has no HEP3 dissector: HEP captures are checked against their SPAN
# twin instead (tests/hep/test_hep_capture.py).
CAPTURES = [p for p in capture_files() if not p.name.startswith("hep_")]
_VISUAL_SEPARATORS = re.compile(r"[-.()\s]")


def normalise_number(user: str) -> str:
    return _VISUAL_SEPARATORS.sub("", user)


def _user_of(addr: str | None, user: str | None) -> str:
    """User part as tshark gives it; tel: URIs have no user field, so take the number."""
    if user:
        return user
    if addr and addr.startswith("tel:"):
        return addr[4:].split(";")[0]
    return ""


def _display(info: str | None) -> str:
    """tshark keeps quotes and escapes of a display name; undo them."""
    if not info:
        return ""
    info = info.strip()
    if len(info) >= 2 and info[0] == '"' and info[-1] == '"':
        return re.sub(r"\\(.)", r"\1", info[1:-1])
    return info


_INVITE_CACHE: dict[Path, dict[str, dict]] = {}


def tshark_invites(path: Path) -> dict[str, dict]:
    """Call-ID -> facts of its FIRST INVITE, in capture order (pyshark, display filter sip)."""
    if path in _INVITE_CACHE:
        return _INVITE_CACHE[path]
    calls: dict[str, dict] = {}
    cap = pyshark.FileCapture(str(path), display_filter='sip.Method == "INVITE"',
                              keep_packets=False)
    try:
        for pkt in cap:
            s = pkt.sip
            callid = s.get_field("call_id")
            if callid in calls:
                continue
            from_user = _user_of(s.get_field("from_addr"), s.get_field("from_user"))
            calls[callid] = {
                "from_user": from_user,
                "to_user": _user_of(s.get_field("to_addr"), s.get_field("to_user")),
                "from_name": _display(s.get_field("from_display_info")),
                "to_name": _display(s.get_field("to_display_info")),
                "pai_user": s.get_field("pai_user") or "",
                "pai_name": _display(s.get_field("pai_display_info")),
                "in_dialog": bool(s.get_field("to_tag")),
            }
    finally:
        cap.close()
    _INVITE_CACHE[path] = calls
    return calls


def expected_caller(inv: dict) -> tuple[str, str]:
    """(phone, name) of the caller: the PAI identity when From is anonymous."""
    if inv["from_user"].lower() == "anonymous" and inv["pai_user"]:
        return normalise_number(inv["pai_user"]), inv["pai_name"]
    return normalise_number(inv["from_user"]), inv["from_name"]


def tshark_rtp_counts(path: Path) -> Counter:
    """(source IP, SSRC) -> distinct RTP packets (by seq) that tshark finds heuristically."""
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-Y", "rtp",
         "-T", "fields", "-E", "separator=\t", "-e", "ip.src", "-e", "ipv6.src", "-e",
         "rtp.ssrc", "-e", "rtp.seq"],
        check=True, capture_output=True, text=True).stdout
    distinct = set()
    for line in out.splitlines():
        ip4, ip6, ssrc, seq = line.split("\t")
        # A tunnelled packet (VXLAN) lists the outer address first: the RTP's is the last
        # (IPv6 inside an IPv4 tunnel: the IPv6 one).
        distinct.add(((ip6 or ip4).split(",")[-1], int(ssrc, 16), int(seq)))
    return Counter((ip, ssrc) for ip, ssrc, _ in distinct)


def _host_of(endpoint: str) -> str:
    host = endpoint.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def _truth_for(capture: Path) -> dict | None:
    t = PCAPS_DIR / (capture.name.rsplit(".", 1)[0] + ".truth.json")
    return load_truth(t) if t.is_file() else None


@pytest.mark.slow  # ~2 s a capture (two tshark runs); rerun whenever pcaps/ changes
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_truth_agrees_with_tshark(capture: Path) -> None:
    truth = _truth_for(capture)
    assert truth is not None, f"{capture.name} has no truth file"
    invites = tshark_invites(capture)
    assert sorted(invites) == sorted(c["callid"] for c in truth["calls"])
    rtp = tshark_rtp_counts(capture)
    claimed: Counter = Counter()
    for call in truth["calls"]:
        inv = invites[call["callid"]]
        phone, name = expected_caller(inv)
        assert normalise_number(call["callerphone"]) == phone, call["callid"]
        assert call["callername"] == name, call["callid"]
        if not inv["to_user"].startswith(("*", "#")):   # [legs edit] *8 is never the number
            assert normalise_number(call["destinationphone"]) == normalise_number(inv["to_user"])
            assert call["destinationname"] == inv["to_name"], call["callid"]
        assert inv["in_dialog"] == call["partial_start"], call["callid"]
        audio = call.get("audio")
        if audio is None:
            continue
        # RTP a side still sent after the BYE (baresip captures): the call's
        # streams end at the BYE, the truth lists those packets as audio.after_bye_rtp.
        after_bye = Counter({(r["ip"], r["ssrc"]): r["packets"]
                             for r in audio.get("after_bye_rtp", [])})
        for side, endpoint_key in (("caller", "callermediaendpoint"),
                                   ("callee", "destinationmediaendpoint")):
            ip = _host_of(call[endpoint_key])
            keys = [(ip, ssrc) for ssrc in audio[f"{side}_ssrcs"]]
            got = sum(rtp[k] - after_bye[k] for k in keys)
            assert got == audio[f"{side}_rtp_packets"], (call["callid"], side, got)
            claimed.update({k: rtp[k] for k in keys})
        # [proxy edit] RTP a media relay forwarded (sipp_proxy_rtpengine: same SSRC/seq from
        # the relay's IP on the second hop), listed by the truth as audio.relay_rtp.
        for r in audio.get("relay_rtp", []):
            assert rtp[(r["ip"], r["ssrc"])] == r["packets"], (call["callid"], r)
            claimed[(r["ip"], r["ssrc"])] += r["packets"]
    # No RTP in the capture that the truth does not account for.
    assert claimed == +rtp, f"unclaimed RTP: {dict(+rtp - claimed)}"


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_agent_agrees_with_tshark(capture: Path) -> None:
    invites = tshark_invites(capture)
    records = inspect_cached(str(capture))
    assert sorted(r["callid"] for r in records) == sorted(invites)
    for r in records:
        inv = invites[r["callid"]]
        phone, _ = expected_caller(inv)
        assert normalise_number(r["callerphone"]) == phone, r["callid"]
        if inv["to_user"].startswith(("*", "#")):   # [legs edit] a feature code is never the number
            assert r["raw"]["callee_number"] == inv["to_user"], r["callid"]
            continue
        assert normalise_number(r["destinationphone"]) == normalise_number(inv["to_user"]), \
            r["callid"]

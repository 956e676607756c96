"""Voice quality against Wireshark: ``tshark -q -z rtp,streams``, stream by stream, on every
public capture with RTP and on synthetic calls with known loss, copies, reordering and jitter.

What is compared (tshark's columns): packets, lost, max delta, mean jitter, max jitter.
tshark counts a copy as a received packet and its "expected" runs from the first to the last
packet *to arrive*; so its "lost" is the agent's lost minus its duplicates on streams whose
first and last arrivals are the lowest and highest numbers (every stream here). Loss must
agree exactly; delta and jitter within 0.1 ms or 1 %. The T.38 fax capture is left out: on
its ports tshark decodes the RTP sent after the re-INVITE as T.38 (and, with T.38 off, the
UDPTL as RTP), so its streams are not the ones on the wire.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER, T0_S, _sdp, _sip, udp_frame, write_calls
from tests.conftest import run_inspect

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+0x([0-9A-Fa-f]+)\s+(.+?)\s+(\d+)\s+(-?\d+)\s+"
                  r"\(.*?\)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)")


def tshark_streams(path: Path) -> dict[tuple[str, int], list[dict]]:
    """{("ip:port", ssrc): [{packets, lost, max_delta, mean_jitter, max_jitter}, ...]} from
    tshark: one row per destination (tshark's stream key has it, the agent's does not)."""
    out = subprocess.run(["tshark", "-n", "-q", "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams", "-r", str(path)],
                         capture_output=True, text=True, timeout=300).stdout
    rows = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m:
            src = f"{m[1]}:{m[2]}" if ":" not in m[1] else f"[{m[1]}]:{m[2]}"
            rows.setdefault((src, int(m[5], 16)), []).append({"packets": int(m[7]), "lost": int(m[8]), "max_delta": float(m[11]),
                                          "mean_jitter": float(m[13]), "max_jitter": float(m[14])})
    return rows


def close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= max(0.1, 0.01 * abs(theirs))


def compare(path: Path) -> int:
    """Every agent stream with quality against tshark's row of the same source and SSRC;
    returns how many were compared."""
    theirs = tshark_streams(path)
    compared = split = 0
    for record in run_inspect(path):
        for st in record.get("streams", []):
            q = st.get("quality")
            if q is None:
                continue
            rows = theirs.get((st["src"], st["ssrc"]))
            assert rows, (path.name, st["src"], hex(st["ssrc"]), sorted(theirs))
            where = (path.name, st["src"], hex(st["ssrc"]), q, rows)
            # A few packets of a stream can fall outside the call (before its SDP is known, after
            # its BYE): the agent does not count them, tshark does (3 public captures, 2-4 packets).
            outside = sum(row["packets"] for row in rows) - q["received"]
            assert 0 <= outside <= 4, where
            if len(rows) > 1:            # sent to a new destination mid-stream: tshark splits it
                split += 1
                continue
            row = rows[0]
            assert q["lost"] - q["duplicated"] == row["lost"], where
            assert close(q["max_delta_ms"], row["max_delta"]), where
            assert close(q["jitter_mean_ms"], row["mean_jitter"]), where
            assert close(q["jitter_max_ms"], row["max_jitter"]), where
            compared += 1
    assert split <= compared, (path.name, split, compared)
    return compared


NOT_COMPARABLE = {"fax-call-t38-ca-tdm-sip-fb-1.pcap"}


def public_captures_with_rtp(public: Path) -> list[Path]:
    return sorted(p for p in public.iterdir() if p.suffix in (".pcap", ".pcapng") and p.name not in NOT_COMPARABLE)


# The public captures with plain RTP in a call, and how many of their streams are compared
# (G.711, G.722, G.726, G.729, GSM, iLBC, L16, LPC, Opus, Speex, DVI4): 45 streams.
STREAMS_COMPARED = {
    "asterisk_zfone_xlite.pcap": 1, "b2bua-asterisk.pcapng": 2, "magicjack_short_call.pcap": 2,
    "nb6-telephone.pcap": 2, "rtp-protocol.pcap": 2, "sip-over-tcp.pcap": 2, "sip-rtp-dvi4.pcap": 2,
    "sip-rtp-g711.pcap": 2, "sip-rtp-g722.pcap": 1, "sip-rtp-g726.pcap": 8, "sip-rtp-g729a.pcap": 1,
    "sip-rtp-gsm.pcap": 1, "sip-rtp-ilbc.pcap": 1, "sip-rtp-l16.pcap": 4, "sip-rtp-lpc.pcap": 1,
    "sip-rtp-opus-hybrid.pcap": 1, "sip-rtp-opus.pcap": 1, "sip-rtp-speex.pcap": 3,
    "sip_call_rtp_g711.pcap": 2, "sip_dtmf2.pcap": 2, "voipshark_sip-rtp-normal_call_two_parties.pcap": 4,
}


def test_public_captures_agree_with_tshark(public_dir: Path) -> None:
    compared = {p.name: compare(p) for p in public_captures_with_rtp(public_dir)}
    # A capture whose streams were not all compared is named, with (wanted, compared).
    short = {name: (want, compared.get(name, 0)) for name, want in STREAMS_COMPARED.items()
             if compared.get(name, 0) < want}
    assert short == {}


def test_synthetic_loss_and_reordering_agree_with_tshark(tmp_path: Path) -> None:
    path = tmp_path / "lossy.pcap"
    write_calls(path, calls=3, concurrent=3, duration_s=20, loss=0.02, reorder=0.02, seed=7)
    records = run_inspect(path)
    assert sum(st["quality"]["lost"] for r in records for st in r["streams"]) > 20       # the test is not vacuous
    assert sum(st["quality"]["reordered"] for r in records for st in r["streams"]) > 20
    assert compare(path) == 6


def write_impaired_call(path: Path, *, packets: int, lost: set[int], copies: set[int], late: dict[int, float],
                        jitter_ms: float, seed: int) -> None:
    """One G.711 call; the caller's stream has packets ``lost`` (indices), ``copies`` sent
    twice, ``late`` ones delayed by the given ms, and every packet a random delay of up to
    ``jitter_ms``; the callee's stream is clean."""
    rng = random.Random(seed)
    a_ip, b_ip = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    callid, ftag, ttag = "impaired@10.9.0.1", "fa", "tb"
    t0 = T0_S * 10**9
    frames = [
        (t0, ETH_CALLER, ETH_PBX, a_ip, b_ip, 5060, 5060,
         _sip("INVITE sip:200@pbx.example SIP/2.0", callid, ftag, "", "1 INVITE", "100", "200", _sdp("10.9.0.1", 40000))),
        (t0 + 20_000_000, ETH_PBX, ETH_CALLER, b_ip, a_ip, 5060, 5060,
         _sip("SIP/2.0 200 OK", callid, ftag, ttag, "1 INVITE", "100", "200", _sdp("10.9.0.2", 50000))),
        (t0 + 25_000_000, ETH_CALLER, ETH_PBX, a_ip, b_ip, 5060, 5060,
         _sip("ACK sip:200@pbx.example SIP/2.0", callid, ftag, ttag, "1 ACK", "100", "200")),
    ]
    media0 = t0 + 30_000_000
    payload = bytes(160)
    for i in range(packets):
        at = media0 + i * 20_000_000
        hdr_b = struct.pack("!BBHII", 0x80, 0, (500 + i) & 0xFFFF, 7000 + 160 * i, 0xB0B)
        frames.append((at + 400_000, ETH_PBX, ETH_CALLER, b_ip, a_ip, 50000, 40000, hdr_b + payload))
        if i in lost:
            continue
        hdr_a = struct.pack("!BBHII", 0x80, 0, (65_000 + i) & 0xFFFF, (0xFFFF0000 + 160 * i) & 0xFFFFFFFF, 0xA0A)
        delay_ns = int((rng.uniform(0, jitter_ms) + late.get(i, 0.0)) * 1e6)
        frames.append((at + delay_ns, ETH_CALLER, ETH_PBX, a_ip, b_ip, 40000, 50000, hdr_a + payload))
        if i in copies:
            frames.append((at + delay_ns + 3_000_000, ETH_CALLER, ETH_PBX, a_ip, b_ip, 40000, 50000, hdr_a + payload))
    end = media0 + packets * 20_000_000 + 100_000_000
    frames.append((end, ETH_CALLER, ETH_PBX, a_ip, b_ip, 5060, 5060,
                   _sip("BYE sip:200@pbx.example SIP/2.0", callid, ftag, ttag, "2 BYE", "100", "200")))
    frames.append((end + 5_000_000, ETH_PBX, ETH_CALLER, b_ip, a_ip, 5060, 5060,
                   _sip("SIP/2.0 200 OK", callid, ftag, ttag, "2 BYE", "100", "200")))
    frames.sort(key=lambda f: f[0])
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for n, (at, smac, dmac, sip_, dip, sport, dport, data) in enumerate(frames):
            frame = udp_frame(smac, dmac, sip_, dip, sport, dport, data, n)
            fh.write(struct.pack("<IIII", at // 10**9, (at % 10**9) // 1000, len(frame), len(frame)))
            fh.write(frame)


def test_synthetic_copies_jitter_and_late_packets_agree_with_tshark(tmp_path: Path) -> None:
    path = tmp_path / "impaired.pcap"
    lost = {40, 41, 42, 300, 777}
    copies = {100, 101, 500}
    late = {200: 45.0, 600: 70.0, 601: 30.0}            # 600 arrives after 601..603: reordered
    write_impaired_call(path, packets=1000, lost=lost, copies=copies, late=late, jitter_ms=8.0, seed=3)
    assert compare(path) == 2
    (record,) = run_inspect(path)
    caller = next(st["quality"] for st in record["streams"] if st["ssrc"] == 0xA0A)
    assert (caller["expected"], caller["lost"], caller["duplicated"]) == (1000, len(lost), len(copies))
    assert caller["reordered"] >= 1
    assert caller["jitter_max_ms"] > 3.0                   # 8 ms of random delay and the spikes show
    assert caller["late_fixed"] >= 1                       # the 70 ms spike is past a 50 ms buffer
    callee = next(st["quality"] for st in record["streams"] if st["ssrc"] == 0xB0B)
    assert (callee["lost"], callee["jitter_max_ms"], callee["late_fixed"]) == (0, 0.0, 0)
    assert record["quality"]["caller"]["mos"] < record["quality"]["callee"]["mos"]

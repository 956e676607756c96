#!/usr/bin/env python3
"""Write pcaps/sipp_g711a.truth.json for a capture made by record_sipp.sh.

Owns the truth of the SIPp recording. The expected values come from the SIPp scenario and the
namespace setup (users, names, addresses, MACs, packet counts of the played pcap files,
answered/bye); only what SIPp makes up per run (Call-ID, tags, the capture time) is read from
the capture with tshark. It then checks the capture's RTP counts against the scenario and
exits non-zero when they differ, so a bad recording is never committed silently.

Usage: python3 pcaps/sipp_truth.py pcaps/sipp_g711a.pcap
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

UAC_IP, UAS_IP = "10.77.0.1", "10.77.0.2"
UAC_MAC, UAS_MAC = "02000A4D0001", "02000A4D0002"
MEDIA_PORT = 6000
# /usr/share/sip-tester/g711a.pcap holds 236 PCMA packets; dtmf_2833_1.pcap 10 event packets
# (PT 101) of which the last 3 are the RFC 4733 end-of-event retransmissions sharing ONE
# sequence number: 8 distinct packets. Counts are of distinct (SSRC, seq) packets, the way a
# stream counts them (duplicates are dropped and counted apart). The UAS (-rtp_echo) echoes
# each packet back, so the callee direction carries the same packets.
SCENARIO_CALLER_PACKETS = 236 + 8
SCENARIO_CALLEE_PACKETS = 236 + 8


def tshark_fields(path: Path, display_filter: str, fields: list[str],
                  extra: list[str] | None = None) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(path), *(extra or []), "-Y", display_filter, "-T", "fields",
           "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def main(pcap: Path) -> int:
    inv = tshark_fields(pcap, "sip.Method == INVITE",
                        ["frame.time_epoch", "sip.Call-ID", "sip.from.tag"])
    ok200 = tshark_fields(pcap, "sip.Status-Code == 200 && sip.CSeq.method == INVITE",
                          ["sip.to.tag"])
    rtp = tshark_fields(pcap, "rtp", ["frame.time_epoch", "ip.src", "rtp.ssrc", "rtp.seq"],
                        ["-o", "rtp.heuristic_rtp:TRUE"])
    if len(inv) != 1 or not ok200:
        print(f"expected 1 INVITE and a 200 OK, got {len(inv)} INVITE(s)", file=sys.stderr)
        return 1
    t_inv, callid, from_tag = float(inv[0][0]), inv[0][1], inv[0][2]
    counts = Counter(ip for ip, _, _ in {(r[1], r[2], r[3]) for r in rtp})
    first = {ip: min(float(r[0]) for r in rtp if r[1] == ip) for ip in counts}
    ssrcs = {ip: sorted({int(r[2], 16) for r in rtp if r[1] == ip}) for ip in counts}
    if counts[UAC_IP] != SCENARIO_CALLER_PACKETS or counts[UAS_IP] != SCENARIO_CALLEE_PACKETS:
        print(f"RTP counts differ from the scenario: {dict(counts)}", file=sys.stderr)
        return 1
    start = dt.datetime.fromtimestamp(int(t_inv), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    call = {
        "callid": callid,
        "from_tag": from_tag,
        "to_tag": ok200[0][0],
        "callerphone": "sipp",
        "callername": "sipp",
        "destinationphone": "service",
        "destinationname": "service",
        "startdatetimeutc": start,
        "answered": True,
        "end_reason": "bye",
        "final_status": 200,
        "callermacaddress": UAC_MAC,
        "destinationmacaddress": UAS_MAC,
        "callermediaendpoint": f"{UAC_IP}:{MEDIA_PORT}",
        "destinationmediaendpoint": f"{UAS_IP}:{MEDIA_PORT}",
        "partial_start": False,
        "transport": "udp",
        "callerdtmf": "1",
        "audio": {
            "caller_tone_hz": None,
            "callee_tone_hz": None,
            "caller_rtp_packets": SCENARIO_CALLER_PACKETS,
            "callee_rtp_packets": SCENARIO_CALLEE_PACKETS,
            "caller_ssrcs": ssrcs[UAC_IP],
            "callee_ssrcs": ssrcs[UAS_IP],
            "first_rtp_offset_ms": {
                "caller": int((first[UAC_IP] - t_inv) * 1000),
                "callee": int((first[UAS_IP] - t_inv) * 1000),
            },
        },
    }
    truth = {
        "capture": pcap.name,
        "description": "Real SIPp 3.6.1 call between two network namespaces (record_sipp.sh): "
                       "built-in uac_pcap scenario (PCMA, plays sip-tester's g711a.pcap then an "
                       "RFC 2833 DTMF '1', BYE) against the built-in uas scenario with -rtp_echo.",
        "generator": "pcaps/record_sipp.sh + pcaps/sipp_truth.py",
        "calls": [call],
        "notes": "Call-ID, tags, start time and first_rtp_offset_ms are read from the capture "
                 "(SIPp derives them from its PID and the clock); everything else is the "
                 "scenario's. Audio is PCMA speech from g711a.pcap, not a tone (tone fields "
                 "null). The UAS echoes every packet including the DTMF events, so the callee "
                 "direction also carries an RFC 2833 '1' with the caller's SSRC; destinationdtmf "
                 "is therefore not asserted. The echo keeps the caller's SSRCs. RTP packet "
                 "counts are distinct (SSRC, seq) packets: the 3 end-of-event DTMF packets "
                 "share one seq, so 10 DTMF packets on the wire count as 8 per direction.",
    }
    out = pcap.with_name(pcap.name.rsplit(".", 1)[0] + ".truth.json")
    out.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

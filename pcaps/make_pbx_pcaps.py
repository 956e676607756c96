#!/usr/bin/env python3
"""Generate the PBX-leg test captures (``pcaps/pbx_*.pcap``) and their truth files.

Owns the scenarios where one phone call is several SIP dialogs through a B2BUA PBX at
10.0.0.1 that relays the media (its own RTP ports per leg): a plain leg pair, a blind
transfer (REFER), a call pickup (``*8``), a forward (Diversion + History-Info) and the
leg pair seen twice by a doubled mirror. Reuses the packet/SIP/RTP builders of
``make_pcaps.py`` (same conventions: caller 440 Hz, callee 1000 Hz, PCMU 20 ms, fixed
times/MACs/tags, byte-identical output on every run). Truth files add the leg fields:
``conversation_id``, ``leg``, ``upload``, ``leg_of``, ``connected``.

Usage: ``python3 pcaps/make_pbx_pcaps.py [--out DIR] [scenario ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_pcaps as mp  # noqa: E402
from make_pcaps import (CALLEE_TONE_HZ, CALLER_TONE_HZ, MS, T0, Capture, Dialog, Party,  # noqa: E402
                        RtpStream, audio_truth, call_truth, sdp, send_rtp, ssrc_for, udp)

OUT_DIR = Path(__file__).resolve().parent
PBX_IP = "10.0.0.1"
RTP_PACKETS = 50            # 1 s of audio per leg and direction keeps the files small


def pbx_party(user: str, rtp_port: int, pbx_mac: str) -> Party:
    return Party(user=user, display=None, ip=PBX_IP, mac=pbx_mac, rtp_port=rtp_port)


def with_header(msg: bytes, name: str, value: str) -> bytes:
    """Insert one header just before Content-Length (the last header sip_msg writes)."""
    head, sep, rest = msg.partition(b"\r\nContent-Length:")
    return head + f"\r\n{name}: {value}".encode() + sep + rest


def leg(cap: Capture, d: Dialog, t_invite: int, t_answer: int | None, t_end: int, *,
        answer_pai: str | None = None, invite_headers: list[tuple[str, str]] | None = None,
        bye_from_callee: bool = False, cancel: bool = False,
        talk_ns: int | None = None) -> tuple[list[RtpStream], list[RtpStream], int, int]:
    """One dialog: INVITE/100/180[/200/ACK, RTP both ways, BYE] or CANCEL/487.

    Returns (caller streams, callee streams, first caller RTP ns, first callee RTP ns)."""
    a, b = d.caller, d.callee
    d.extra_invite_headers = list(invite_headers or [])
    inv, via = d.request("INVITE", body=sdp(a, 1000 + a.rtp_port))
    cap.add(t_invite, a, b, udp(a, b, inv))
    cap.add(t_invite + 3 * MS, b, a, udp(b, a, d.response(100, "Trying", via, "INVITE", 1, to_tag="")))
    cap.add(t_invite + 40 * MS, b, a, udp(b, a, d.response(180, "Ringing", via, "INVITE", 1)))
    if cancel:
        cancel_msg, _ = d.request("CANCEL", via=via, to_tag="")
        cap.add(t_end, a, b, udp(a, b, cancel_msg))
        cap.add(t_end + 3 * MS, b, a, udp(b, a, d.response(200, "OK", via, "CANCEL", 1)))
        cap.add(t_end + 5 * MS, b, a, udp(b, a, d.response(487, "Request Terminated", via, "INVITE", 1)))
        ack, _ = d.request("ACK", via=via)
        cap.add(t_end + 8 * MS, a, b, udp(a, b, ack))
        return [], [], 0, 0
    assert t_answer is not None
    ok = d.response(200, "OK", via, "INVITE", 1, body=sdp(b, 2000 + b.rtp_port))
    if answer_pai:
        ok = with_header(ok, "P-Asserted-Identity", answer_pai)
    cap.add(t_answer, b, a, udp(b, a, ok))
    ack, _ = d.request("ACK")
    cap.add(t_answer + 10 * MS, a, b, udp(a, b, ack))
    s_a = RtpStream(ssrc_for(d.callid, 0), 1000, 16000, CALLER_TONE_HZ)
    s_b = RtpStream(ssrc_for(d.callid, 1), 5000, 32000, CALLEE_TONE_HZ)
    first_b, first_a = t_answer + 20 * MS, t_answer + 30 * MS
    n = RTP_PACKETS if talk_ns is None else talk_ns // (20 * MS)
    send_rtp(cap, s_b, b, a, first_b, n)
    send_rtp(cap, s_a, a, b, first_a, n)
    mp.bye_and_ok(cap, d, t_end, from_callee=bye_from_callee)
    return [s_a], [s_b], first_a, first_b


def truth_of(d: Dialog, t_invite: int, streams: tuple, *, answered: bool = True,
             end_reason: str = "bye", final_status: int | None = 200, **fields) -> dict:
    sa, sb, first_a, first_b = streams
    a, b = d.caller, d.callee
    t = call_truth(d, start_ns=t_invite, answered=answered, end_reason=end_reason,
                   final_status=final_status,
                   caller_media=a.media_endpoint, callee_media=b.media_endpoint,
                   caller_mac=a.mac_truth, callee_mac=b.mac_truth,
                   audio=audio_truth(sa, sb, t_invite, first_a or None, first_b or None) if sa else None)
    if not sa:
        # No RTP: the media endpoints are the SDP ones, the MACs the SIP ones (same values here).
        t.pop("audio", None)
    if d.from_hdr and d.from_hdr.startswith('"'):
        t["callername"] = d.from_hdr.split('"')[1]       # the PBX keeps the caller's name
    t.update(fields)
    return t


def legs_fields(conversation_id: str, leg: int, upload: bool, connected: dict | None = None) -> dict:
    out = {"conversation_id": conversation_id, "leg": leg, "upload": upload,
           "leg_of": "" if upload else conversation_id}
    if connected is not None:
        out["connected"] = connected
    return out


# ----------------------------------------------------------------------------- scenarios
def sc_b2bua() -> Capture:
    cap = Capture("pbx_b2bua", "Phone 1001 calls 1002 through a B2BUA PBX 10.0.0.1 that relays media: "
                  "leg 1 phone->PBX (PBX RTP port 30000), leg 2 PBX->phone 1002 (PBX RTP port 30002), "
                  "50 ms apart; the PBX's 200 OK on leg 1 asserts the connected party (PAI Bob). "
                  "One upload: leg 1.")
    pbx_mac = mp.mac("pbx")
    a = mp.phone("1001", '"Alice Caller"', "10.0.0.10", 40000)
    b = mp.phone("1002", '"Bob Callee"', "10.0.0.20", 50000)
    d1 = Dialog("pbx_b2bua-leg1@callntest.example", a, pbx_party("1002", 30000, pbx_mac), from_tag="ft-b2b-1",
                to_tag="tt-b2b-1")
    d2 = Dialog("pbx_b2bua-leg2@pbx.callntest.example", pbx_party("1001", 30002, pbx_mac), b,
                from_tag="ft-b2b-2", to_tag="tt-b2b-2", from_hdr=f'"Alice Caller" <sip:1001@{PBX_IP}>')
    s2 = leg(cap, d2, T0 + 50 * MS, T0 + 1500 * MS, T0 + 2600 * MS)
    s1 = leg(cap, d1, T0, T0 + 1510 * MS, T0 + 2610 * MS,
             answer_pai=f'"Bob Callee" <sip:1002@{PBX_IP}>', bye_from_callee=True)
    cid = d1.callid
    cap.calls += [
        truth_of(d1, T0, s1, destinationname="", **legs_fields(cid, 0, True, {"name": "Bob Callee", "phone": "1002"})),
        truth_of(d2, T0 + 50 * MS, s2, **legs_fields(cid, 1, False)),
    ]
    return cap


def sc_transfer() -> Capture:
    cap = Capture("pbx_transfer", "Blind transfer through the PBX: 1001 -> PBX (leg 1, whole talk), "
                  "PBX -> 1002 (leg 2) talks 1 s, 1002 sends REFER (Refer-To 1003) on leg 2 and hangs "
                  "up, PBX -> 1003 (leg 3, Referred-By 1002) talks 1 s. One conversation, one upload "
                  "(leg 1); connected = 1003, the party reached last.")
    pbx_mac = mp.mac("pbx")
    a = mp.phone("1001", '"Alice Caller"', "10.0.0.10", 40000)
    b = mp.phone("1002", '"Bob Callee"', "10.0.0.20", 50000)
    c = mp.phone("1003", '"Carol Third"', "10.0.0.30", 52000)
    frm = f'"Alice Caller" <sip:1001@{PBX_IP}>'
    d1 = Dialog("pbx_transfer-leg1@callntest.example", a, pbx_party("1002", 30000, pbx_mac),
                from_tag="ft-xfer-1", to_tag="tt-xfer-1")
    d2 = Dialog("pbx_transfer-leg2@pbx.callntest.example", pbx_party("1001", 30002, pbx_mac), b,
                from_tag="ft-xfer-2", to_tag="tt-xfer-2", from_hdr=frm)
    d3 = Dialog("pbx_transfer-leg3@pbx.callntest.example", pbx_party("1001", 30004, pbx_mac), c,
                from_tag="ft-xfer-3", to_tag="tt-xfer-3", from_hdr=frm)
    t_refer = T0 + 2600 * MS
    s2 = leg(cap, d2, T0 + 50 * MS, T0 + 1500 * MS, t_refer + 200 * MS, bye_from_callee=True)
    # REFER from 1002 on leg 2 (the PBX accepts with 202).
    refer, via = d2.request("REFER", cseq=601, from_callee=True,
                            extra=[("Refer-To", f"<sip:1003@{PBX_IP}>"),
                                   ("Referred-By", f"<sip:1002@{PBX_IP}>")])
    cap.add(t_refer, b, d2.caller, udp(b, d2.caller, refer))
    cap.add(t_refer + 3 * MS, d2.caller, b, udp(d2.caller, b, d2.response(202, "Accepted", via, "REFER", 601,
                                                                             from_caller=True)))
    t3 = t_refer + 100 * MS
    s3 = leg(cap, d3, t3, t3 + 1000 * MS, t3 + 2200 * MS,
             invite_headers=[("Referred-By", f"<sip:1002@{PBX_IP}>")])
    s1 = leg(cap, d1, T0, T0 + 1510 * MS, t3 + 2210 * MS, talk_ns=t3 + 2150 * MS - (T0 + 1510 * MS))
    cid = d1.callid
    cap.calls += [
        truth_of(d1, T0, s1, destinationname="",
                 **legs_fields(cid, 0, True, {"name": "Carol Third", "phone": "1003"})),
        truth_of(d2, T0 + 50 * MS, s2, **legs_fields(cid, 1, False)),
        truth_of(d3, t3, s3, **legs_fields(cid, 2, False)),
    ]
    return cap


def sc_pickup() -> Capture:
    cap = Capture("pbx_pickup", "Call pickup: 1001 -> PBX for 1002 (leg 1, ringing); 1003 dials *8 "
                  "(leg 2) and the PBX bridges it to 1001 (200 OKs assert the connected parties: "
                  "Carol 1003 on leg 1, Alice 1001 on leg 2). *8 is never a number: leg 2's "
                  "destination is 1001. One upload (leg 1). (The PBX's ringing leg to 1002 is "
                  "not in the capture: the recording tests need audio in every call.)")
    pbx_mac = mp.mac("pbx")
    a = mp.phone("1001", '"Alice Caller"', "10.0.0.10", 40000)
    c = mp.phone("1003", '"Carol Third"', "10.0.0.30", 52000)
    d1 = Dialog("pbx_pickup-leg1@callntest.example", a, pbx_party("1002", 30000, pbx_mac),
                from_tag="ft-pick-1", to_tag="tt-pick-1")
    d3 = Dialog("pbx_pickup-leg2@callntest.example", c, pbx_party("*8", 30004, pbx_mac),
                from_tag="ft-pick-2", to_tag="tt-pick-2")
    t3 = T0 + 3000 * MS
    s3 = leg(cap, d3, t3, t3 + 400 * MS, t3 + 1500 * MS, answer_pai=f'"Alice Caller" <sip:1001@{PBX_IP}>')
    s1 = leg(cap, d1, T0, t3 + 410 * MS, t3 + 1510 * MS,
             answer_pai=f'"Carol Third" <sip:1003@{PBX_IP}>', bye_from_callee=True)
    cid = d1.callid
    cap.calls += [
        truth_of(d1, T0, s1, destinationname="",
                 **legs_fields(cid, 0, True, {"name": "Carol Third", "phone": "1003"})),
        truth_of(d3, t3, s3, destinationphone="1001", destinationname="Alice Caller",
                 **legs_fields(cid, 1, False, {"name": "Alice Caller", "phone": "1001"})),
    ]
    return cap


def sc_forward() -> Capture:
    cap = Capture("pbx_forward", "Call forward: 1001 -> PBX for 1002 (leg 1); 1002 forwards "
                  "unconditionally, the PBX calls 1003 (leg 2, To 1003, Diversion and History-Info "
                  "naming 1002, From still 1001). One upload (leg 1): destination 1002 (dialled), "
                  "connected 1003 (reached).")
    pbx_mac = mp.mac("pbx")
    a = mp.phone("1001", '"Alice Caller"', "10.0.0.10", 40000)
    c = mp.phone("1003", '"Carol Third"', "10.0.0.30", 52000)
    d1 = Dialog("pbx_forward-leg1@callntest.example", a, pbx_party("1002", 30000, pbx_mac),
                from_tag="ft-fwd-1", to_tag="tt-fwd-1")
    d2 = Dialog("pbx_forward-leg2@pbx.callntest.example", pbx_party("1001", 30002, pbx_mac), c,
                from_tag="ft-fwd-2", to_tag="tt-fwd-2", from_hdr=f'"Alice Caller" <sip:1001@{PBX_IP}>')
    s2 = leg(cap, d2, T0 + 60 * MS, T0 + 1500 * MS, T0 + 2600 * MS, invite_headers=[
        ("Diversion", f"<sip:1002@{PBX_IP}>;reason=unconditional;counter=1"),
        ("History-Info", f"<sip:1002@{PBX_IP}>;index=1"),
        ("History-Info", f"<sip:1003@{PBX_IP}?Reason=SIP%3Bcause%3D302>;index=1.1")])
    s1 = leg(cap, d1, T0, T0 + 1510 * MS, T0 + 2610 * MS)
    cid = d1.callid
    cap.calls += [
        truth_of(d1, T0, s1, destinationname="",
                 **legs_fields(cid, 0, True, {"name": "Carol Third", "phone": "1003"})),
        truth_of(d2, T0 + 60 * MS, s2, **legs_fields(cid, 1, False)),
    ]
    return cap


def sc_doubled() -> Capture:
    cap = sc_b2bua()
    cap.name = "pbx_doubled"
    cap.description = ("pbx_b2bua as seen by a doubled mirror (ingress and egress of one port): every "
                       "frame twice, the copy 30 us later. Same calls, same records as pbx_b2bua.")
    doubled = []
    for p in cap.pkts:
        doubled.append(p)
        doubled.append(mp.Pkt(p.ts_ns + 30_000, p.src_mac, p.dst_mac, p.l3, p.seq + 1_000_000))
    cap.pkts = doubled
    return cap


SCENARIOS = {"pbx_b2bua": sc_b2bua, "pbx_transfer": sc_transfer, "pbx_pickup": sc_pickup,
             "pbx_forward": sc_forward, "pbx_doubled": sc_doubled}


NOTES = ("PBX 10.0.0.1 relays media (its own RTP port per leg). Leg fields: conversation_id, "
         "leg (order of start), upload (exactly one true per conversation here), leg_of. "
         "Conventions as make_pcaps.py: caller 440 Hz, callee 1000 Hz, PCMU 20 ms; "
         "direction 0 = caller->callee.")


def build(name: str, out_dir: Path = OUT_DIR) -> Path:
    seed = "pbx_b2bua" if name == "pbx_doubled" else name    # identical MACs to the single copy
    return mp.write_scenario(name, SCENARIOS[name], out_dir, generator="pcaps/make_pbx_pcaps.py",
                             notes=NOTES, mac_seed=seed)


def main(argv: list[str]) -> int:
    return mp.run_cli(argv, SCENARIOS, build)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

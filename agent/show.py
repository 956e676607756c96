"""``calln-agent show``: one call of a capture drawn in the terminal, as sngrep's ladder.

Owns: reading the capture's SIP messages through the public parsers (``capture.pcapfile``,
``net.decode``, ``sip.framing`` / ``sip.message`` / ``sip.sdp``), choosing the call, and the
text: a column per host, one arrow per message (method or status, relative time, SDP
summary), then each RTP stream's quality line and the call's end reason, which come from the
same call record ``inspect`` builds (``replay`` with counters-only media). Every text from the
wire is passed through ``terminal_safe`` first, as the inspect table does.
Does not own parsing, call building or quality (it calls what the project has).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from agent.errors import AgentError
from agent.textsafe import terminal_safe

if TYPE_CHECKING:
    from agent.calls.record import CallRecord

__all__ = ["SipEvent", "read_sip", "ladder", "stream_lines", "register"]

COLUMN_W = 24            # characters between two host columns


@dataclass(frozen=True, slots=True)
class SipEvent:
    ts_ns: int
    src: str             # "ip:port"
    dst: str
    call_id: str
    label: str           # method, or "code reason"
    sdp: str             # one-line SDP summary, "" without SDP
    invite: bool         # part of an INVITE transaction (CSeq method INVITE)


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _sdp_summary(body: bytes | None) -> str:
    """ "audio 10.0.0.1:40000 PCMU/8000 telephone-event/8000 sendrecv" for each m= line."""
    if not body:
        return ""
    from agent.errors import SdpParseError
    from agent.sip.sdp import parse_sdp
    try:
        sdp = parse_sdp(body)
    except (SdpParseError, ValueError):
        return "SDP (unparsable)"
    parts = []
    for m in sdp.media:
        codecs = " ".join(f"{r.encoding}/{r.clock_rate_hz}" for pt in m.payload_types
                          if (r := m.rtpmaps.get(pt)) is not None) or " ".join(m.formats)
        ip = m.connection_ip or sdp.connection_ip or "?"
        # Encryption by name only (suites and tags): the keys never reach a terminal.
        crypto = "".join(f" crypto:{c.tag} {c.suite}" for c in m.crypto)
        secure = f" {m.proto}{crypto}" if m.encrypted else ""
        parts.append(f"{m.kind} {_endpoint(ip, m.port)} {codecs} {m.direction}{secure}")
    return "; ".join(parts)


def read_sip(paths: Iterable[str | Path], counters: Counter) -> list[SipEvent]:
    """Every SIP message of the captures, in capture order (UDP datagrams and TCP streams)."""
    from agent.capture.pcapfile import read_capture
    from agent.net.datagram import TCP
    from agent.net.decode import FrameDecoder
    from agent.sip.framing import SipStreamFramer
    from agent.errors import SipParseError
    from agent.sip.message import looks_like_sip, parse_message

    decoder = FrameDecoder(counters)
    framers: dict[tuple[str, str], SipStreamFramer] = {}
    events = []
    for path in paths:
        for ts_ns, linktype, frame in read_capture(path, counters):
            dgram = decoder.decode(ts_ns, linktype, frame)
            if dgram is None:
                continue
            src, dst = _endpoint(dgram.src_ip, dgram.src_port), _endpoint(dgram.dst_ip, dgram.dst_port)
            if dgram.transport == TCP:
                chunks = framers.setdefault((src, dst), SipStreamFramer()).feed(dgram.payload)
            elif looks_like_sip(dgram.payload):
                chunks = [dgram.payload]
            else:
                continue
            for data in chunks:
                try:
                    msg = parse_message(data, stream=dgram.transport == TCP)
                    call_id = msg.call_id
                    invite = msg.cseq_method == "INVITE"
                except (SipParseError, ValueError):
                    counters["show.sip_unparsable"] += 1
                    continue
                label = msg.method if msg.is_request else f"{msg.status_code} {msg.reason}"
                events.append(SipEvent(dgram.ts_ns, src, dst, call_id, label, _sdp_summary(msg.sdp_body()), invite))
    return events


def calls_in(events: list[SipEvent]) -> list[str]:
    """Call-IDs with an INVITE transaction, in the order of their first message (a call whose
    INVITE was not captured still has its answers)."""
    seen: dict[str, bool] = {}
    for e in events:
        seen[e.call_id] = seen.get(e.call_id, False) or e.invite
    return [cid for cid, invited in seen.items() if invited]


_GLYPHS = {True: {"line": "-", "right": ">", "left": "<", "col": "|"},
           False: {"line": "\u2500", "right": "\u25b6", "left": "\u25c0", "col": "\u2502"}}


def ladder(events: list[SipEvent], *, ascii_only: bool = False) -> list[str]:
    """The ladder of one call's messages: header of host columns, one arrow per message."""
    g = _GLYPHS[ascii_only]
    hosts: list[str] = []
    for e in events:
        for h in (e.src, e.dst):
            if h not in hosts:
                hosts.append(h)
    margin = 10                                   # "+12.345s " then the first column
    width = margin + COLUMN_W * (len(hosts) - 1) + 1
    names = [terminal_safe(h) for h in hosts]
    head = [" "] * (width + COLUMN_W)
    for i, name in enumerate(names):
        at = max(0, margin + COLUMN_W * i - len(name) // 2)
        head[at:at + len(name)] = list(name)
    lines = ["".join(head).rstrip()]

    def blank() -> list[str]:
        row = [" "] * width
        for i in range(len(hosts)):
            row[margin + COLUMN_W * i] = g["col"]
        return row

    lines.append("".join(blank()).rstrip())
    t0 = events[0].ts_ns if events else 0
    for e in events:
        row = blank()
        stamp = f"{(e.ts_ns - t0) / 1e9:8.3f}s"
        row[0:len(stamp)] = list(stamp)
        a, b = margin + COLUMN_W * hosts.index(e.src), margin + COLUMN_W * hosts.index(e.dst)
        label = terminal_safe(e.label + (" (SDP)" if e.sdp else ""))
        if a == b:                                # to itself: the label beside the column
            text = f" {g['left']}{g['line']} {label}"
            row[a + 1:a + 1 + len(text)] = list(text)
        else:
            lo, hi = min(a, b), max(a, b)
            span = hi - lo - 1
            label = label[:max(0, span - 6)]        # keep two line characters each side
            body = f" {label} ".center(span, g["line"])
            body = (body[:-1] + g["right"]) if b > a else (g["left"] + body[1:])
            row[lo + 1:hi] = list(body)
        lines.append("".join(row).rstrip())
        if e.sdp:
            note = blank()
            text = "  " + terminal_safe(e.sdp)
            start = min(a, b) + 1
            merged = note[:start] + list(text)
            lines.append("".join(merged).rstrip())
    return lines


def stream_lines(record: CallRecord) -> list[str]:
    """Each RTP stream's quality line, the call's MOS per direction and its end reason."""
    lines = []
    for st in record.get("streams") or []:
        q = st.get("quality")
        side = "caller->callee" if st.get("direction") == 0 else "callee->caller"
        where = terminal_safe(f"{st.get('src') or '?'} -> {st.get('dst') or '?'}")
        if q is None:
            lines.append(f"RTP {side} {where}: {st.get('packets', 0)} packets (no quality figures)")
            continue
        ssrc = f"0x{st['ssrc']:08X}" if isinstance(st.get("ssrc"), int) else "?"
        loss = 100.0 * q["lost"] / q["expected"] if q["expected"] else 0.0
        mos = {m["buffer"]: m for m in q.get("mos", [])}.get("adaptive_500ms")
        mos_text = f", MOS {mos['mos']:.2f} (adaptive buffer, {mos['assumed_delay_ms']:.0f} ms assumed)" if mos else ""
        lines.append(f"RTP {side} {where} {terminal_safe(q.get('codec') or '?')} ssrc {ssrc}: "
                     f"{q['received']} packets, lost {q['lost']} ({loss:.1f} %), dup {q['duplicated']}, "
                     f"reordered {q['reordered']}, jitter {q['jitter_mean_ms']:.2f}/{q['jitter_max_ms']:.2f} ms "
                     f"(mean/max), max delta {q['max_delta_ms']:.1f} ms{mos_text}")
    lines.append(f"end reason: {terminal_safe(str(record.get('end_reason') or '?'))}, "
                 f"duration {int(record.get('duration_ms') or 0) / 1000:.1f} s")
    return lines


def _records(paths: list[str], args: argparse.Namespace) -> dict[str, CallRecord]:
    """The call records inspect would print, by Call-ID (for quality and end reason)."""
    from agent.cli import _config
    from agent.counters import new_counters
    from agent.pipeline.engine import MediaMode
    from agent.replay import replay

    records: dict[str, CallRecord] = {}

    def on_finished(finished) -> None:
        records.setdefault(finished.record["callid"], finished.record)

    engine = replay(paths, _config(args), on_finished, counters=new_counters(), progress=False,
                    media=MediaMode.COUNTERS)
    engine.close()
    return records


def cmd_show(args: argparse.Namespace) -> int:
    counters: Counter = Counter()
    paths = [args.capture]
    events = read_sip(paths, counters)
    calls = calls_in(events)
    if args.call is not None:
        if args.call not in {e.call_id for e in events}:
            raise AgentError(f"no call with Call-ID {terminal_safe(args.call)!r} in {args.capture}")
        call_id = args.call
    else:
        if not calls:
            raise AgentError(f"no INVITE transaction in {args.capture}")
        if not 1 <= args.number <= len(calls):
            raise AgentError(f"--number {args.number}: the capture has {len(calls)} call(s)")
        call_id = calls[args.number - 1]
    mine = [e for e in events if e.call_id == call_id]
    out = [f"call {terminal_safe(call_id)} ({len(mine)} SIP messages)"]
    out += ladder(mine, ascii_only=args.ascii)
    out.append("")
    record = _records(paths, args).get(call_id)
    out += stream_lines(record) if record else ["(the agent built no call record for this Call-ID)"]
    print("\n".join(out))
    return 0


SHOW_EPILOG = """examples:
  calln-agent show capture.pcap                     the first call's ladder and quality
  calln-agent show capture.pcap --number 3          the third call (in order of first message)
  calln-agent show capture.pcap --call 'a84b4c76e66710@pc33' --ascii
"""


def register(sub) -> None:
    p = sub.add_parser("show", help="draw one call of a capture: SIP ladder, RTP quality, end reason",
                       description="Draw one call of a capture in the terminal: a column per host, an "
                       "arrow per SIP message (method or status, time since the first, SDP summary), "
                       "then each RTP stream's quality and the call's end reason.",
                       epilog=SHOW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("capture", metavar="CAPTURE", help="a pcap or pcapng file")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--call", metavar="CALL-ID", help="the call with this SIP Call-ID")
    which.add_argument("--number", type=int, default=1, metavar="N",
                       help="the N-th call (Call-ID with an INVITE transaction), in order of first "
                            "message (default: 1)")
    p.add_argument("--ascii", action="store_true", help="plain ASCII lines and arrows (default: Unicode)")
    p.set_defaults(func=cmd_show)

"""Messages that cannot open a dialog are classified from their start line, CSeq and Call-ID
without a full parse (a scanner's OPTIONS/REGISTER flood), and still reach a call they belong
to."""

from collections import Counter

import pytest

from agent.config import load_config
from agent.pipeline.engine import Engine, MediaMode
from agent.sip.message import dialogless_call_id, parse_message
from bench.synth import ETH_CALLER, ETH_PBX, udp_frame

NS = 1_000_000_000


def msg(start: str, cseq: str, call_id: str = "abc@10.0.0.1", extra: str = "") -> bytes:
    return (f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:1@x>;tag=f\r\n"
            f"To: <sip:2@x>\r\nCall-ID: {call_id}\r\n{extra}CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("data, want", [
    (msg("OPTIONS sip:100@10.0.0.2 SIP/2.0", "1 OPTIONS"), "abc@10.0.0.1"),
    (msg("REGISTER sip:10.0.0.2 SIP/2.0", "7 REGISTER"), "abc@10.0.0.1"),
    (msg("SIP/2.0 200 OK", "7 REGISTER"), "abc@10.0.0.1"),
    (msg("SIP/2.0 401 Unauthorized", "1 SUBSCRIBE").replace(b"Call-ID", b"i"), "abc@10.0.0.1"),
    (msg("INVITE sip:100@10.0.0.2 SIP/2.0", "1 INVITE"), None),        # opens a dialog
    (msg("BYE sip:100@10.0.0.2 SIP/2.0", "2 BYE"), None),              # may open a partial one
    (msg("SIP/2.0 180 Ringing", "1 INVITE"), None),                    # INVITE answers may too
    (msg("OPTIONS sip:100@10.0.0.2 SIP/2.0", "1 OPTIONS", extra="Call-ID: other\r\n"), None),
    (msg("OPTIONS sip:100@10.0.0.2 SIP/2.0", "1 OPTIONS").replace(b"abc@10.0.0.1\r\n", b"abc\r\n x\r\n"), None),
    (b"\r\n" + msg("OPTIONS sip:100@10.0.0.2 SIP/2.0", "1 OPTIONS"), None),  # the parser strips that
    (msg("ACK sip:100@10.0.0.2 SIP/2.0", "1 ACK"), None),              # only what scans send is peeked
    (msg("SIP/2.0 200 OK", "2 BYE"), None),
    # Malformed (a bare CR LF in a display name; no To): the parser rejects and counts them.
    (msg("OPTIONS sip:100@10.0.0.2 SIP/2.0", "1 OPTIONS").replace(b"<sip:1@x>", b'"Bob\r\nJ" <sip:1@x>'), None),
    (msg("OPTIONS sip:100@10.0.0.2 SIP/2.0", "1 OPTIONS").replace(b"To: <sip:2@x>\r\n", b""), None),
])
def test_dialogless_call_id(data, want):
    assert dialogless_call_id(data) == want
    if want is not None:
        assert parse_message(data).call_id == want       # the peek reads what the parser reads


CALLER, PBX = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _sip(engine: Engine, ts_s: float, data: bytes, src: bytes = CALLER, dst: bytes = PBX) -> None:
    engine.feed(int(ts_s * NS), 1, udp_frame(ETH_CALLER, ETH_PBX, src, dst, 5060, 5060, data))


def test_an_options_flood_opens_nothing_but_an_in_dialog_options_keeps_its_call_alive():
    records, counters = [], Counter()
    engine = Engine(load_config(None, {}), lambda f: records.append(f.record), counters=counters,
                    media=MediaMode.COUNTERS)
    _sip(engine, 1.0, msg("INVITE sip:2@x SIP/2.0", "1 INVITE", "call-1"))
    _sip(engine, 1.1, msg("SIP/2.0 200 OK", "1 INVITE", "call-1").replace(b"<sip:2@x>", b"<sip:2@x>;tag=t"),
         PBX, CALLER)
    for n in range(500):                                   # a scan: opens nothing
        _sip(engine, 2.0 + n / 1000, msg("OPTIONS sip:2@x SIP/2.0", "1 OPTIONS", f"scan-{n}"))
    # An answered call with no media ends after signalling_timeout_s (3600 s) of silence; the
    # in-dialog OPTIONS at 3000 s is life.
    _sip(engine, 3000.0, msg("OPTIONS sip:2@x SIP/2.0", "5 OPTIONS", "call-1"))
    engine.advance(int(4000 * NS))
    assert records == []
    engine.finish()
    assert [(r["callid"], r["end_reason"]) for r in records] == [("call-1", "capture_end")]
    assert counters["calls.started"] == 1
    assert counters["sip.messages"] == 2 + 500 + 1

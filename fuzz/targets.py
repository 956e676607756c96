"""Fuzz targets: each parser fed hostile input returns a result or a counted, typed rejection.

Owns: the hypothesis strategies (mutations of real captures and messages reach far deeper
than uniform random bytes) and one ``check_*`` function per target that states the contract:
only ``ParseError`` subclasses (parsers) or counters (readers, decoders, the engine) may come
out; any other exception is a bug. ``TARGETS`` maps a name to ``(strategy, check)``; the test
suite runs each briefly (tests/hostile/test_hostile_fuzz.py), ``fuzz/run.py`` runs them long.
Does not own: fixing what they find (that is the parser's module).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

from hypothesis import strategies as st

from agent.capture.pcapfile import MAX_RECORD_BYTES, read_capture
from agent.errors import CaptureFormatError, ParseError, SdpParseError, SipParseError
from agent.net.datagram import Datagram
from agent.net.decode import FrameDecoder
from agent.net.fragments import MAX_IP_PAYLOAD, FragmentReassembler
from agent.net.hep import HepStreamSplitter, HepUnwrapper
from agent.net.tcp import TcpReassembler
from agent.sip.dtmf_info import parse_dtmf_info
from agent.sip.framing import SipStreamFramer
from agent.sip.message import looks_like_sip, parse_message
from agent.sip.sdp import parse_sdp
from agent.sip.uri import parse_name_addr, parse_uri, split_header_values
from agent.media.rtp import is_zrtp, parse_rtp, parse_telephone_event

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
# Scratch files for the reader (it takes a path): RAM-backed when available.
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147, 9999)


# ----------------------------------------------------------------------------- seeds

@lru_cache(maxsize=1)
def seed_files() -> tuple[tuple[str, bytes], ...]:
    """The real captures of pcaps/ (small ones only: mutation cost grows with size)."""
    out = []
    for p in sorted(PCAPS.glob("*.pcap*")):
        if p.stat().st_size <= 400_000:
            out.append((p.name, p.read_bytes()))
    # The same captures as pcapng too (the readers walk pcapng blocks differently).
    for name, data in list(out[:6]):
        if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            out.append((name + "ng", _as_pcapng(data)))
    return tuple(out)


def _as_pcapng(pcap: bytes) -> bytes:
    """A little-endian classic pcap rewritten as pcapng (one section, one interface)."""
    nanos = pcap[:4] == b"\x4d\x3c\xb2\xa1"
    linktype = struct.unpack_from("<I", pcap, 20)[0] & 0xFFFF

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    # if_tsresol 9 (ns) when the pcap has ns timestamps, else the default µs.
    options = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0) if nanos else b""
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", linktype, 0, 65535) + options)]
    pos = 24
    while pos + 16 <= len(pcap):
        sec, frac, caplen, origlen = struct.unpack_from("<IIII", pcap, pos)
        frame = pcap[pos + 16:pos + 16 + caplen]
        units = sec * (1_000_000_000 if nanos else 1_000_000) + frac
        out.append(block(6, struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(frame), origlen) + frame))
        pos += 16 + caplen
    return b"".join(out)


@lru_cache(maxsize=1)
def seed_frames() -> tuple[tuple[int, bytes], ...]:
    """(linktype, frame) of every record in pcaps/: SIP, RTP, fragments, TCP, VLAN, SLL..."""
    frames: list[tuple[int, bytes]] = []
    for name, _ in seed_files():
        if not (PCAPS / name).exists():
            continue                      # a pcapng rewrite of one of them: the same frames
        for _ts, lt, frame in read_capture(PCAPS / name, Counter()):
            frames.append((lt, bytes(frame)))
    # Keep every non-RTP-looking frame and a sample of the rest so SIP is well represented.
    sip = [f for f in frames if b"SIP/2.0" in f[1]]
    other = [f for f in frames if b"SIP/2.0" not in f[1]][::25]
    return tuple(sip + other)


@lru_cache(maxsize=1)
def seed_sip() -> tuple[bytes, ...]:
    """SIP messages (UDP payloads) found in the seed captures."""
    out = []
    dec = FrameDecoder(Counter(), dedup=False)
    for lt, frame in seed_frames():
        d = dec.decode(0, lt, frame)
        if d is not None and looks_like_sip(bytes(d.payload)):
            out.append(bytes(d.payload))
    return tuple(dict.fromkeys(out))[:200]


# ----------------------------------------------------------------------------- mutations

def _mutate(data: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply (kind, position, value, junk) edits: bit flip, byte set, u32 length clobber,
    truncation, insertion, deletion. Positions are taken modulo the current length."""
    buf = bytearray(data)
    for kind, pos, value, junk in ops:
        n = len(buf)
        if n == 0:
            buf += junk
            continue
        pos %= n
        if kind == 0:
            buf[pos] ^= 1 << (value & 7)
        elif kind == 1:
            buf[pos] = value & 0xFF
        elif kind == 2:                      # length fields are u16/u32: clobber 4 bytes
            word = struct.pack("<I", value & 0xFFFFFFFF)
            buf[pos:pos + 4] = word[: max(0, min(4, n - pos))]
        elif kind == 3:
            del buf[pos:]
        elif kind == 4:
            buf[pos:pos] = junk
        else:
            del buf[pos:pos + 1 + (value & 0x3F)]
    return bytes(buf)


edit_ops = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 24),
                              st.integers(0, 0xFFFFFFFF), st.binary(max_size=16)),
                    min_size=1, max_size=6)


def mutated(seeds: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(_mutate, seeds, edit_ops)


# ----------------------------------------------------------------------------- 1. capture reader

capture_files = st.builds(
    lambda seed, ops, gz: (gzip.compress(_mutate(seed[1], ops), 1) if gz == 1
                           else gzip.compress(seed[1], 1)[: max(10, len(seed[1]) // (gz or 1))]
                           if gz > 1 else _mutate(seed[1], ops)),
    st.sampled_from(seed_files()) if seed_files() else st.just(("x", b"")),
    edit_ops, st.sampled_from((0, 0, 0, 0, 1, 2, 3)))


def check_capture_reader(data: bytes) -> None:
    fd, name = tempfile.mkstemp(suffix=".pcap", dir=_TMP)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        counters: Counter = Counter()
        try:
            records = []
            for ts_ns, linktype, frame in read_capture(name, counters):
                assert isinstance(ts_ns, int) and isinstance(linktype, int)
                assert isinstance(frame, (bytes, memoryview)) and len(frame) <= MAX_RECORD_BYTES
                records.append((ts_ns, linktype, bytes(frame)))
        except CaptureFormatError:
            return
        # The batch reader (replay's front end) yields exactly what the record reader and the
        # per-file clock re-basing yield, and counts the same damage.
        from agent.capture.batches import read_batches
        from agent.capture.files import open_captures

        merged_counters: Counter = Counter()
        expected = [(ts, lt, bytes(f)) for ts, lt, f in open_captures([name], merged_counters)]
        batch_counters: Counter = Counter()
        got = [(int(b.ts_ns[i]), b.linktype, b.frame(i)) for b in read_batches([name], batch_counters)
               for i in range(len(b))]
        assert got == expected
        assert batch_counters == merged_counters
    finally:
        os.unlink(name)


capture_sets = st.lists(capture_files, min_size=2, max_size=3)


def check_capture_merge(files: list[bytes]) -> None:
    """Several (damaged) files merged by time: the batch merge yields the record merge's
    records in its order, with its counters (or both refuse the set)."""
    from agent.capture.batches import read_batches
    from agent.capture.files import open_captures

    folder = tempfile.mkdtemp(dir=_TMP)
    try:
        for n, data in enumerate(files):
            with open(os.path.join(folder, f"part_{n}.pcap"), "wb") as fh:
                fh.write(data)
        merged_counters: Counter = Counter()
        try:
            expected = [(ts, lt, bytes(f)) for ts, lt, f in open_captures([folder], merged_counters)]
        except CaptureFormatError:
            expected = None
        batch_counters: Counter = Counter()
        try:
            got = [(int(b.ts_ns[i]), b.linktype, b.frame(i)) for b in read_batches([folder], batch_counters)
                   for i in range(len(b))]
        except CaptureFormatError:
            got = None
        assert got == expected
        assert batch_counters == merged_counters
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- 2. frame decoder

frames = st.one_of(
    st.tuples(st.sampled_from(LINKTYPES), st.binary(max_size=200)),
    st.builds(lambda seed, ops, lt: (lt if lt is not None else seed[0], _mutate(seed[1], ops)),
              st.sampled_from(seed_frames()), edit_ops,
              st.one_of(st.none(), st.none(), st.sampled_from(LINKTYPES))),
)
frame_sequences = st.lists(st.tuples(st.integers(0, 10**11), frames), min_size=1, max_size=30)


def check_frame_decoder(seq: list[tuple[int, tuple[int, bytes]]]) -> None:
    counters: Counter = Counter()
    dec = FrameDecoder(counters, max_fragment_datagrams=8, max_fragment_bytes=64 * 1024,
                       tcp_flow_max_bytes=4096, tcp_total_max_bytes=16384, tcp_max_flows=8)
    for ts_ns, (lt, frame) in sorted(seq, key=lambda x: x[0]):
        d = dec.decode(ts_ns, lt, frame)
        if d is not None:
            assert isinstance(d, Datagram)
            assert 0 <= d.src_port <= 65535 and 0 <= d.dst_port <= 65535
            assert isinstance(d.src_ip, str) and isinstance(d.dst_ip, str)
            len(d.payload)
    assert dec.fragments.pending_bytes <= 64 * 1024 + MAX_IP_PAYLOAD
    assert len(dec.tcp) <= 8 + 1


# ----------------------------------------------------------------------------- 3. reassembly

fragment_seqs = st.lists(
    st.tuples(st.integers(0, 3),                            # datagram id (few: they collide)
              st.integers(0, 8191).map(lambda x: x * 8),    # offset
              st.booleans(),                                # more fragments
              st.binary(max_size=600),
              st.integers(0, 5 * 10**10)),
    max_size=60)


def check_fragments(seq) -> None:
    counters: Counter = Counter()
    fr = FragmentReassembler(counters, max_pending=3, max_bytes=20_000, timeout_ns=10**10)
    for ident, off, more, data, ts in seq:
        whole = fr.add(ts, (b"\x01" * 4, b"\x02" * 4, ident, 17), off, more, data)
        if whole is not None:
            assert isinstance(whole, bytes) and len(whole) <= MAX_IP_PAYLOAD
        fr.expire(ts)
        assert len(fr) <= 3
        assert fr.pending_bytes <= 20_000 + 2 * MAX_IP_PAYLOAD


tcp_seqs = st.lists(
    st.tuples(st.integers(0, 2),                              # flow
              st.integers(0, 0xFFFFFFFF) | st.integers(0, 3000),
              st.sampled_from((0, 0, 0, 1, 2, 4, 0x18, 0x11)),  # flags
              st.binary(max_size=400),
              st.integers(0, 10**12)),
    max_size=60)


def check_tcp(seq) -> None:
    counters: Counter = Counter()
    tcp = TcpReassembler(counters, flow_max_bytes=2048, total_max_bytes=4096, max_flows=2,
                         idle_timeout_ns=10**11)
    for flow, seqno, flags, data, ts in seq:
        out = tcp.segment(ts, (b"\x01" * 4, 1000 + flow, b"\x02" * 4, 5060), seqno, flags, data)
        if out is not None:
            assert isinstance(out, (bytes, bytearray))
        tcp.expire(ts)
        assert len(tcp) <= 2
        assert tcp.buffered_bytes <= 4096 + 400


# ----------------------------------------------------------------------------- 4. SIP / SDP / URI

SIP_TOKENS = st.sampled_from(
    [b"SIP/2.0", b" ", b"\r\n", b"\n", b":", b";", b",", b"<", b">", b'"', b"\\", b"sip:", b"tel:",
     b"INVITE", b"Call-ID", b"From", b"To", b"CSeq", b"l", b"Content-Length", b"1", b"0", b"\t",
     b"@", b"[", b"]", b"=", b"tag", b"\xff", b"\x00", b"multipart/mixed", b"boundary", b"--",
     b"\xc3\xa9", b"%", b"99999999999", b"Via", b"v", b"i", b"f", b"t"])
sip_messages = st.one_of(
    mutated(st.sampled_from(seed_sip())) if seed_sip() else st.binary(),
    st.lists(SIP_TOKENS, max_size=80).map(b"".join),
    st.binary(max_size=1500),
)


def check_sip_message(data: bytes) -> None:
    looks_like_sip(data)
    for stream in (False, True):
        try:
            msg = parse_message(data, stream=stream)
        except SipParseError:
            continue
        msg.call_id, msg.from_addr, msg.to_addr, msg.from_tag, msg.to_tag, msg.cseq_num
        msg.pai, msg.rpid, msg.diversion, msg.session_id, msg.via_branch, msg.via_transport
        msg.content_type, msg.user_agent, msg.header_values("via"), msg.header_values("contact")
        body = msg.sdp_body()
        if body is not None:
            try:
                parse_sdp(body)
            except SdpParseError:
                pass
        ctype = msg.header("content-type")
        if ctype:
            parse_dtmf_info(ctype, msg.body)


@lru_cache(maxsize=1)
def seed_sdp() -> tuple[bytes, ...]:
    out = []
    for raw in seed_sip():
        try:
            body = parse_message(raw).sdp_body()
        except ParseError:
            continue
        if body:
            out.append(body)
    return tuple(dict.fromkeys(out)) or (b"v=0\r\nm=audio 1 RTP/AVP 0\r\n",)


SDP_TOKENS = st.sampled_from(
    [b"v=0", b"m=", b"c=", b"a=", b"o=", b"audio ", b"IN IP4 ", b"IN IP6 ", b"rtpmap:", b"fmtp:",
     b"ptime:", b"rtcp:", b"crypto:", b"sendonly", b"RTP/AVP ", b"/", b" ", b"\r\n", b"\n", b"0",
     b"96", b"65535", b"99999999999", b"-1", b"::", b"0.0.0.0", b"\xff", b"1.5"])
sdp_bodies = st.one_of(mutated(st.sampled_from(seed_sdp())),
                       st.lists(SDP_TOKENS, max_size=100).map(b"".join))


def check_sdp(data: bytes) -> None:
    try:
        sdp = parse_sdp(data)
    except SdpParseError:
        return
    for m in sdp.media:
        assert 0 <= m.port <= 65535 and 1 <= m.port_count <= 65536
        assert all(0 <= pt <= 127 for pt in m.payload_types)
        for rm in m.rtpmaps.values():
            assert 0 < rm.clock_rate_hz <= 1_000_000 and 1 <= rm.channels <= 64
        m.is_hold, m.disabled


URI_TOKENS = st.sampled_from(
    ["sip:", "sips:", "tel:", "<", ">", '"', "\\", "@", ":", ";", "=", "[", "]", "::1", "2001:db8::1",
     "5060", "99999", "user", "%41", "%", "é", " ", "\t", ",", "?", "tag", "host.example", "+1",
     "urn:service:sos", "*"])
uri_texts = st.one_of(st.text(max_size=200), st.lists(URI_TOKENS, max_size=40).map("".join))


def check_uri(text: str) -> None:
    for func in (parse_uri, parse_name_addr):
        try:
            r = func(text)
        except SipParseError:
            continue
        uri = r.uri if hasattr(r, "uri") else r
        assert uri.port is None or 0 <= uri.port <= 65535
    split_header_values(text)


# ----------------------------------------------------------------------------- 5. TCP framing

framer_chunks = st.lists(st.one_of(st.binary(max_size=300), mutated(st.sampled_from(seed_sip())),
                                   st.lists(SIP_TOKENS, max_size=40).map(b"".join),
                                   st.sampled_from((b"\r\n\r\n", b"\x16\x03\x01", b"GET / HTTP/1.1\r\n",
                                                    b"\x81\x7e\xff\xff"))),
                         max_size=25)


def check_framer(chunks: list[bytes]) -> None:
    framer = SipStreamFramer(max_buffer=4096)
    for chunk in chunks:
        for msg in framer.feed(chunk):
            assert isinstance(msg, bytes)
            try:
                parse_message(msg, stream=True)
            except SipParseError:
                pass
        # The buffer may exceed max_buffer only by what one feed added.
        assert framer.buffered_bytes <= 4096 + len(chunk) + 8192


# ----------------------------------------------------------------------------- 6. RTP

rtp_packets = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda b0, b1, rest: bytes([b0, b1]) + rest, st.integers(0x80, 0xBF),
              st.integers(0, 255), st.binary(max_size=80)))


def check_rtp(data: bytes) -> None:
    r = parse_rtp(data)
    if r is not None:
        pt, marker, seq, ts, ssrc, start, end = r
        assert 0 <= pt <= 127 and 12 <= start <= end <= len(data)
        ev = parse_telephone_event(data[start:end])
        if ev is not None:
            assert 0 <= ev[0] <= 255 and 0 <= ev[2] <= 63 and 0 <= ev[3] <= 0xFFFF
    is_zrtp(data)
    parse_telephone_event(data)


# ----------------------------------------------------------------------------- 6b. HEP3

def seed_hep() -> tuple[bytes, ...]:
    """HEP3 messages (UDP payloads to port 9060) found in the seed captures."""
    dec = FrameDecoder(Counter(), dedup=False)
    out = [bytes(d.payload) for d in (dec.decode(0, lt, f) for lt, f in seed_frames())
           if d is not None and d.payload[:4] == b"HEP3"]
    return tuple(dict.fromkeys(out))[:100] or (b"HEP3\x00\x06",)


hep_inputs = st.tuples(st.lists(st.one_of(mutated(st.sampled_from(seed_hep())), st.binary(max_size=120)),
                                min_size=1, max_size=8),
                       st.integers(1, 200))


def check_hep(inp) -> None:
    """Each message alone (UDP) and all of them as one stream cut every ``step`` bytes (TCP):
    a datagram or exactly one counted reason, never an exception."""
    messages, step = inp
    for key in (b"", b"k"):
        counters: Counter = Counter()
        unwrap = HepUnwrapper(counters, key)
        for m in messages:
            before = sum(n for k, n in counters.items() if k.startswith("hep.skip."))
            d = unwrap.datagram(m, 7)
            skipped = sum(n for k, n in counters.items() if k.startswith("hep.skip.")) - before
            assert (d is None) == (skipped == 1), (d, counters)
            if d is not None:
                assert 0 <= d.src_port <= 65535 and 0 <= d.dst_port <= 65535 and d.payload
        splitter = HepStreamSplitter(counters)
        stream = b"".join(messages)
        for i in range(0, len(stream), step):
            for m in splitter.feed(stream[i:i + step]):
                assert m[:4] == b"HEP3" and int.from_bytes(m[4:6], "big") == len(m)
                unwrap.datagram(m, 7)


# ----------------------------------------------------------------------------- 7. the engine

record_edits = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 10_000), edit_ops,
                                  st.integers(-10**10, 10**13)), max_size=20)
engine_inputs = st.tuples(st.sampled_from([n for n, _ in seed_files() if not n.endswith("ng")]
                                          or ["multi_call.pcap"]), record_edits)


@lru_cache(maxsize=None)
def _records(name: str) -> tuple[tuple[int, int, bytes], ...]:
    return tuple((ts, lt, bytes(f)) for ts, lt, f in read_capture(PCAPS / name, Counter()))


def mutate_records(records, edits):
    """Record-level damage: mutate a frame, drop/duplicate/swap records, shift time."""
    recs = list(records)
    for kind, idx, ops, delta in edits:
        if not recs:
            break
        i = idx % len(recs)
        ts, lt, frame = recs[i]
        if kind in (0, 1, 2):
            recs[i] = (ts, lt, _mutate(frame, ops))
        elif kind == 3:
            del recs[i]
        elif kind == 4:
            recs.insert(i, recs[i])
        elif kind == 5:
            j = (i + 1) % len(recs)
            recs[i], recs[j] = recs[j], recs[i]
        elif kind == 6:                       # a clock jump from here on
            recs[i:] = [(max(0, t + delta), l, f) for t, l, f in recs[i:]]
        else:
            recs.insert(i, (ts, lt, _mutate(b"", ops) * 3))
    return recs


def check_engine(inp) -> None:
    from agent.config import Config
    from agent.pipeline.engine import Engine, MediaMode

    import json

    from agent.capture.batches import group_records

    name, edits = inp
    records = list(mutate_records(_records(name), edits))
    # Every media mode: recordings (raw log, sequenced later), inline, and inspect's counters-only;
    # frame by frame (live capture's unit until it batches) and in batches (replay), which
    # must agree exactly.
    for mode in MediaMode:
        outcomes = []
        for batched in (False, True):
            finished: list = []
            counters: Counter = Counter()
            with tempfile.TemporaryDirectory(dir=_TMP) as work:
                engine = Engine(Config(), finished.append, counters=counters, workdir=Path(work),
                                batch_min=1, media=mode)
                if batched:
                    for batch in group_records(iter(records)):
                        engine.feed_batch(batch)
                else:
                    for ts, lt, frame in records:
                        engine.feed(ts, lt, frame)
                engine.finish()
                logs = [f.media_log.read_bytes() if f.media_log else b"" for f in finished]
            for f in finished:
                rec = f.record
                assert isinstance(rec["callid"], str) and rec["end_reason"]
                assert rec["duration_ms"] >= 0
            outcomes.append(([json.dumps(f.record, sort_keys=True, default=str) for f in finished],
                             dict(counters), logs))
        assert outcomes[0] == outcomes[1]


TARGETS = {
    "capture_reader": (capture_files, check_capture_reader),
    "capture_merge": (capture_sets, check_capture_merge),
    "frame_decoder": (frame_sequences, check_frame_decoder),
    "fragments": (fragment_seqs, check_fragments),
    "tcp_reassembly": (tcp_seqs, check_tcp),
    "sip_message": (sip_messages, check_sip_message),
    "sdp": (sdp_bodies, check_sdp),
    "uri": (uri_texts, check_uri),
    "framer": (framer_chunks, check_framer),
    "rtp": (rtp_packets, check_rtp),
    "hep": (hep_inputs, check_hep),
    "engine": (engine_inputs, check_engine),
}

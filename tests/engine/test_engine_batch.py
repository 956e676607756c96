"""The batch path (read_batches + Engine.feed_batch) gives exactly what feeding frame by frame
gives (live capture feeds frames one at a time): the same records, counters and media logs,
for every project capture and every public capture, in every media mode, whatever the batch
boundaries."""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from agent.capture.batches import group_records, read_batches
from agent.capture.files import open_captures
from agent.config import load_config
from agent.pipeline.engine import Engine, MediaMode


REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"
PUBLIC = REPO.parent / "shared" / "pcaps" / "public"
CAPTURES = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng", ".gz"))
PUBLIC_CAPTURES = sorted(PUBLIC.glob("*.pcap*")) if PUBLIC.is_dir() else []


MODES = {"inspect": MediaMode.COUNTERS, "inline": MediaMode.INLINE, "deferred": MediaMode.DEFERRED}


def _run(path: Path, mode: str, feeding: str, tmp_path: Path, made=lambda engine: None
         ) -> tuple[list[dict], dict, list[str]]:
    finished = []
    counters = Counter()
    workdir = tmp_path / f"work-{mode}-{feeding}"
    eng = Engine(load_config(None, env={}), finished.append, counters=counters, workdir=workdir,
                 media=MODES[mode], batch_min=1)
    made(eng)
    if feeding == "frames":
        for ts_ns, linktype, frame in open_captures([path], counters):
            eng.feed(ts_ns, linktype, frame)
    elif feeding == "batches":
        for batch in read_batches([path], counters):
            eng.feed_batch(batch)
    else:                                   # small batches: flushes across batch boundaries
        for batch in group_records(open_captures([path], counters)):
            for start in range(0, len(batch), 37):
                part = type(batch)(batch.buf, batch.starts[start:start + 37], batch.lens[start:start + 37],
                                   batch.ts_ns[start:start + 37], batch.linktype)
                eng.feed_batch(part)
    eng.finish()
    records = [json.loads(json.dumps(f.record, sort_keys=True, default=str)) for f in finished]
    logs = [hashlib.sha256(f.media_log.read_bytes()).hexdigest() if f.media_log else "" for f in finished]
    eng.close()
    return records, dict(counters), logs


@pytest.mark.parametrize("mode", ["inspect", "inline", "deferred"])
@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_batches_equal_frames_project_captures(path, mode, tmp_path):
    expected = _run(path, mode, "frames", tmp_path)
    assert _run(path, mode, "batches", tmp_path) == expected
    assert _run(path, mode, "small", tmp_path) == expected


@pytest.mark.parametrize("path", PUBLIC_CAPTURES, ids=lambda p: p.name)
def test_batches_equal_frames_public_captures(path, tmp_path):
    for mode in ("inspect", "inline"):
        expected = _run(path, mode, "frames", tmp_path)
        assert _run(path, mode, "batches", tmp_path) == expected
        assert _run(path, mode, "small", tmp_path) == expected


def _batched(path: Path, tmp_path: Path) -> tuple[float, Counter]:
    """Replay ``path`` in batches: the fraction of its frames handed to calls by the batch
    path, and the counters."""
    eng = Engine(load_config(None, env={}), lambda f: None, counters=Counter(), workdir=tmp_path / "w",
                 media=MediaMode.COUNTERS, batch_min=1)
    for batch in read_batches([path], eng.counters):
        eng.feed_batch(batch)
    eng.finish()
    return eng.batches.packets_routed / sum(1 for _ in open_captures([path], Counter())), eng.counters


@pytest.mark.parametrize("name", ["basic_udp.pcap", "vlan.pcap", "qinq.pcap", "sll.pcap", "ipv6.pcap", "vxlan.pcap",
                                  "erspan.pcap"])
def test_batch_path_takes_the_rtp(name, tmp_path):
    """Not a vacuous equality: on a plain G.711 call most frames take the batch path."""
    assert _batched(PCAPS / name, tmp_path)[0] > 0.9


def _orphaned(records: list) -> list:
    """Call 0 loses its signalling (its RTP belongs to no call: held, then unmatched); call 1's
    signalling arrives 1.5 s late (its first RTP is held, then adopted by its SDP)."""
    out = []
    for ts, lt, frame in records:
        sip = frame[12:14] == b"\x08\x00" and frame[23] == 17 and 5060 in (
            int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big"))
        call = frame[29] if frame[27] == 1 else frame[33]          # 10.1.0.n -> 10.2.0.n
        if sip and call == 0:
            continue
        out.append((ts + 1_500_000_000 if sip and call == 1 else ts, lt, frame))
    return sorted(out, key=lambda r: r[0])


def _cooked(frame: bytes, linktype: int) -> bytes:
    """An Ethernet frame as Linux cooked capture (SLL 113 / SLL2 276) writes it."""
    if frame[12:14] == b"\x81\x00":
        frame = frame[:12] + frame[16:]                       # cooked captures carry no tag here
    proto, body, src_mac = frame[12:14], frame[14:], frame[6:12]
    if linktype == 113:
        return struct.pack("!HHH", 0, 1, 6) + src_mac + b"\0\0" + proto + body
    return proto + b"\0\0" + struct.pack("!IHBB", 2, 1, 0, 6) + src_mac + b"\0\0" + body


def _tags(kind, rng) -> bytes:
    """VLAN tags for a frame of a tagged SPAN port: 802.1Q, QinQ (802.1ad carrier tag outside
    the customer's), or a mix of none to three tags with every TPID (three: the batch path
    leaves the frame to the decoder)."""
    if kind == "qinq":
        return b"\x88\xa8\x00\x64\x81\x00\x00\x07"         # synth.QINQ_TAGS
    if kind == "mixed":
        return b"".join(rng.choice((b"\x81\x00", b"\x88\xa8", b"\x91\x00")) + rng.randbytes(2)
                        for _ in range(rng.choice((0, 1, 2, 2, 3))))
    return b"\x81\x00\x00\x07"


def _host_macs(frame: bytes) -> bytes:
    """RTP from each host with its own MAC (02:00 + its IPv4 address), so the records report
    the MACs of RTP frames (one MAC sending for many addresses, as the signalling's here, is
    a router's, which the agent leaves out)."""
    at = 12
    while frame[at:at + 2] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
        at += 4
    if frame[at:at + 2] != b"\x08\x00" or frame[at + 30] != 0x80:
        return frame
    return b"\x02\x00" + frame[at + 18:at + 22] + b"\x02\x00" + frame[at + 14:at + 18] + frame[12:]


def _mangled_capture(path: Path, seed: int, tag_all: bool | str = False, orphans: bool = False,
                     linktype: int = 1, ipv6: bool = False, tunnel: str = "",
                     host_macs: bool = False, port_groups: int = 10000) -> None:
    """A synthetic capture of overlapping G.711 calls, then mirrored duplicates, reordering,
    loss, a sequence restart and an SSRC change sprinkled over its RTP."""
    import random
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from synth import PCAP_HEADER, in_erspan, in_vxlan, to_ipv6, write_calls

    clean = path.with_suffix(".clean.pcap")
    write_calls(clean, calls=6, concurrent=4, duration_s=4.0, port_groups=port_groups)
    records = list(open_captures([clean], Counter()))
    if orphans:
        records = _orphaned(records)
    records = [(ts, frame) for ts, _lt, frame in records]
    rng = random.Random(seed)
    out = []
    i = 0
    while i < len(records):
        ts, frame = records[i]
        rtp = len(frame) > 54 and frame[42] == 0x80
        roll = rng.random()
        if rtp and roll < 0.03:
            out.append((ts, frame))
            copy = frame if rng.random() < 0.5 else frame[:12] + b"\x81\x00\x00\x2a" + frame[12:]
            out.append((ts + rng.randrange(0, 30_000_000), copy))           # mirrored copy (other VLAN)
        elif rtp and roll < 0.05 and i + 1 < len(records):
            out.append((records[i + 1][0], records[i + 1][1]))                # swapped pair
            out.append((records[i + 1][0] + 1000, frame))
            i += 1
        elif rtp and roll < 0.06:
            pass                                                              # lost
        elif rtp and roll < 0.062:
            f = bytearray(frame)
            f[50:54] = rng.randbytes(4)                                       # another SSRC
            out.append((ts, bytes(f)))
        elif rtp and roll < 0.063:
            f = bytearray(frame)
            f[44:46] = rng.randbytes(2)                                       # sequence jump
            out.append((ts, bytes(f)))
        elif tag_all and frame[12:14] == b"\x08\x00":
            out.append((ts, frame[:12] + _tags(tag_all, rng) + frame[12:]))   # a tagged SPAN port
        else:
            out.append((ts, frame))
        i += 1
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER[:20] + struct.pack("<I", linktype))
        for n, (ts, frame) in enumerate(out):
            if host_macs:
                frame = _host_macs(frame)
            if ipv6:
                frame = to_ipv6(frame)
            if tunnel == "vxlan":
                frame = in_vxlan(frame, n)
            elif tunnel:
                frame = in_erspan(frame, n, {"erspan1": 1, "erspan2": 2, "erspan3": 3, "gre_teb": 0}[tunnel])
            if linktype != 1:
                frame = _cooked(frame, linktype)
            fh.write(struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, len(frame), len(frame)))
            fh.write(frame)


@pytest.mark.parametrize("seed,tag_all,orphans,linktype,ipv6,tunnel", [
    (1, False, False, 1, False, ""), (2, False, True, 1, False, ""), (3, True, True, 1, False, ""),
    (4, False, True, 113, False, ""), (5, False, True, 276, False, ""), (6, "qinq", False, 1, False, ""),
    (7, "mixed", True, 1, False, ""), (8, False, True, 1, True, ""), (9, "mixed", False, 1, True, ""),
    (10, False, False, 276, True, ""), (12, False, True, 1, False, "vxlan"), (13, "mixed", False, 1, True, "vxlan"),
    (14, False, True, 113, False, "vxlan"), (16, False, True, 1, False, "erspan2"),
    (17, "mixed", False, 1, True, "erspan3"), (18, False, True, 276, False, "erspan1"),
    (19, True, False, 1, False, "gre_teb"), (20, False, True, 1, False, "shared_ports"),
    (21, "mixed", False, 1, True, "shared_ports")])
@pytest.mark.parametrize("mode", ["inspect", "inline"])
def test_batches_equal_frames_mangled_traffic(seed, tag_all, orphans, linktype, ipv6, tunnel, mode, tmp_path):
    path = tmp_path / "mangled.pcap"
    # shared_ports: every phone and every PBX leg on the same two RTP ports (other addresses).
    shared = tunnel == "shared_ports"
    _mangled_capture(path, seed, tag_all, orphans, linktype, ipv6, "" if shared else tunnel,
                     port_groups=1 if shared else 10000)
    expected = _run(path, mode, "frames", tmp_path)
    records = expected[0]
    assert len(records) == (5 if orphans else 6)
    if orphans:
        assert expected[1]["rtp.unmatched"] > 100 and expected[1]["rtp.pending_adopted"] > 10
    if tunnel and not shared:
        assert expected[1]["net.tunnel.vxlan" if tunnel == "vxlan" else "net.tunnel.gre"] > 1000
    assert expected[1]["net.duplicate"] > 0                 # the mirrored copies were recognised
    assert any(s["lost"] or s["reordered"] for r in records for s in r["streams"])
    assert _run(path, mode, "batches", tmp_path) == expected
    assert _run(path, mode, "small", tmp_path) == expected


@pytest.mark.parametrize("jumps", [[(150, 5 * 365 * 86400 * 10**9)], [(150, -86400 * 10**9)],
                                   [(120, 5 * 365 * 86400 * 10**9), (200, -86400 * 10**9)]],
                         ids=["plus5y", "minus1d", "both"])
@pytest.mark.parametrize("mode", ["inspect", "inline"])
def test_batches_equal_frames_across_clock_jumps(jumps, mode, tmp_path):
    import struct

    records = list(open_captures([PCAPS / "basic_udp.pcap"], Counter()))
    path = tmp_path / "jumped.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for i, (ts, _lt, frame) in enumerate(records):
            ts += sum(delta for at, delta in jumps if i >= at)
            fh.write(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)
    expected = _run(path, mode, "frames", tmp_path)
    assert expected[1]["capture.clock_jumps"] == len(jumps)
    assert _run(path, mode, "batches", tmp_path) == expected
    assert _run(path, mode, "small", tmp_path) == expected


def test_ipv6_address_table_starts_afresh_without_changing_anything(monkeypatch, tmp_path):
    """A spray of IPv6 sources makes the engine start a new table of address ids between
    batches; what it routes and records is unchanged (here: a new table every few batches)."""
    from agent.net.fastpath import AddressIds

    path = tmp_path / "v6.pcap"
    _mangled_capture(path, 11, False, True, 1, True)
    expected = _run(path, "inline", "frames", tmp_path)
    engines = []
    monkeypatch.setattr(AddressIds, "MAX", 3)
    assert _run(path, "inline", "small", tmp_path, engines.append) == expected
    assert engines[0].batches.slot_table_resets > 10


@pytest.mark.parametrize("ipv6,tunnel", [(False, "vxlan"), (True, "vxlan"), (False, "erspan2"), (True, "erspan3")])
def test_batch_path_takes_rtp_inside_tunnels(ipv6, tunnel, tmp_path):
    """Cloud traffic mirroring (VXLAN to a collector), remote SPAN (ERSPAN): the RTP inside
    takes the batch path, with the inner frame's MACs, as the decoder reports them."""
    path = tmp_path / "tunnel.pcap"
    _mangled_capture(path, 15, False, False, 1, ipv6, tunnel, host_macs=True)
    expected = _run(path, "inline", "frames", tmp_path)
    assert _run(path, "inline", "batches", tmp_path) == expected
    # The inner frames' MACs (02:00 + the party's IPv4 address 10.1.0.n / 10.2.0.n), not
    # the mirror's (02:00:00:00:00:aa).
    assert [(r["media"]["caller"]["mac"], r["media"]["callee"]["mac"]) for r in expected[0]] == [
        (f"02000A0100{n:02X}", f"02000A0200{n:02X}") for n in range(len(expected[0]))]
    taken, counters = _batched(path, tmp_path)
    assert taken > 0.85
    frames = sum(1 for _ in open_captures([path], Counter()))
    assert counters["net.tunnel.vxlan" if tunnel == "vxlan" else "net.tunnel.gre"] == frames

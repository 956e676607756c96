"""read_capture: pcap/pcapng variants, gzip, damage handling, non-captures."""

import gzip
import struct
from collections import Counter

import pytest
from scapy.all import IP, UDP, Ether, Raw
from scapy.utils import PcapNgWriter, wrpcap

from agent.capture.pcapfile import read_capture
from agent.errors import CaptureFormatError

T0 = 1_700_000_000


_BASE = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5060, dport=5060)
              / Raw(b"pkt00000"))


def _frames(n: int) -> list[bytes]:
    return [_BASE[:-5] + b"%05d" % i for i in range(n)]


def _pcap_bytes(records, endian="<", magic=0xA1B2C3D4, linktype=1) -> bytes:
    out = bytearray(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
    for sec, frac, data in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data
    return bytes(out)


def _read(path) -> tuple[list, Counter]:
    c: Counter = Counter()
    return list(read_capture(path, c)), c


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("magic,frac,expect_ns", [(0xA1B2C3D4, 123456, 123456000),
                                                   (0xA1B23C4D, 123456789, 123456789)])
def test_pcap_byte_orders_and_resolutions(tmp_path, endian, magic, frac, expect_ns):
    frames = _frames(3)
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap_bytes([(T0 + i, frac, f) for i, f in enumerate(frames)], endian, magic))
    recs, c = _read(p)
    assert [r[2] for r in recs] == frames
    assert [r[0] for r in recs] == [(T0 + i) * 10**9 + expect_ns for i in range(3)]
    assert {r[1] for r in recs} == {1}
    assert not c


def test_pcap_linktype_ignores_fcs_bits(tmp_path):
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap_bytes([(T0, 0, b"\x45" + bytes(27))], linktype=0x14000065))
    recs, _ = _read(p)
    assert recs[0][1] == 101


def test_scapy_pcap_and_pcapng(tmp_path):
    pkts = [Ether() / IP() / UDP() / Raw(b"a" * i) for i in range(1, 6)]
    for i, pk in enumerate(pkts):
        pk.time = T0 + i * 0.25
    wrpcap(str(tmp_path / "a.pcap"), pkts)
    w = PcapNgWriter(str(tmp_path / "a.pcapng"))
    for pk in pkts:
        w.write(pk)
    w.close()
    for name in ("a.pcap", "a.pcapng"):
        recs, c = _read(tmp_path / name)
        assert [r[2] for r in recs] == [bytes(pk) for pk in pkts]
        assert [r[0] for r in recs] == [T0 * 10**9 + i * 250_000_000 for i in range(5)]
        assert not c


# -- hand-built pcapng ---------------------------------------------------------

def _block(btype: int, body: bytes, e: str = "<") -> bytes:
    body = body + b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _shb(e: str = "<") -> bytes:
    return _block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def _opt(code: int, value: bytes, e: str = "<") -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _idb(linktype: int, opts: bytes = b"", e: str = "<") -> bytes:
    if opts:
        opts += _opt(0, b"", e)
    return _block(1, struct.pack(e + "HHI", linktype, 0, 65535) + opts, e)


def _epb(if_id: int, units: int, data: bytes, e: str = "<") -> bytes:
    return _block(6, struct.pack(e + "IIIII", if_id, units >> 32, units & 0xFFFFFFFF,
                                 len(data), len(data)) + data, e)


def test_pcapng_interfaces_tsresol_tsoffset_spb_opb_unknown(tmp_path):
    e = "<"
    f1, f2, f3, f4, f5 = (b"\x45" + bytes(19) + bytes([i]) * 8 for i in range(5))
    data = (_shb(e)
            + _idb(1, e=e)                                            # if 0: Ethernet, µs
            + _idb(101, _opt(9, b"\x09", e) + _opt(14, struct.pack("<q", 100), e), e)  # ns, +100 s
            + _idb(228, _opt(9, b"\x8a", e), e)                       # 2^-10 s units
            + _epb(0, T0 * 10**6 + 5, f1, e)
            + _block(0x0BAD, b"unknown block body", e)
            + _epb(1, T0 * 10**9 + 7, f2, e)
            + _epb(2, 3 * 1024 + 512, f3, e)                          # 3.5 s
            + _block(3, struct.pack(e + "I", len(f4)) + f4, e)         # SPB on if 0
            + _block(2, struct.pack(e + "HHIIII", 1, 0, 0, 42, len(f5), len(f5)) + f5, e))  # OPB
    p = tmp_path / "x.pcapng"
    p.write_bytes(data)
    recs, c = _read(p)
    assert recs == [
        (T0 * 10**9 + 5000, 1, f1),
        ((T0 + 100) * 10**9 + 7, 101, f2),
        (3_500_000_000, 228, f3),
        (3_500_000_000, 1, f4),          # SPB has no time: previous record's
        (42 + 100 * 10**9, 101, f5),
    ]
    assert not c


def test_pcapng_big_endian_and_new_section_resets_interfaces(tmp_path):
    f1, f2 = b"\x45" + bytes(19), b"\x60" + bytes(39)
    data = (_shb(">") + _idb(1, e=">") + _epb(0, 1_000_000, f1, ">")
            + _shb("<") + _idb(229, _opt(9, b"\x03"), "<") + _epb(0, 2, f2, "<"))
    p = tmp_path / "be.pcapng"
    p.write_bytes(data)
    recs, c = _read(p)
    assert recs == [(10**9, 1, f1), (2_000_000, 229, f2)]
    assert not c


def test_pcapng_corrupt_block_stops_file(tmp_path):
    f1 = b"\x45" + bytes(19)
    bad = struct.pack("<II", 6, 13) + bytes(20)     # length not a multiple of 4
    p = tmp_path / "c.pcapng"
    p.write_bytes(_shb() + _idb(1) + _epb(0, 1, f1) + bad + _epb(0, 2, f1))
    recs, c = _read(p)
    # Changed by the hostile-input helper (issue 8): the reader now resyncs on the next good
    # block after a corrupt one instead of dropping the rest of the file.
    assert [r[0] for r in recs] == [1000, 2000]
    assert c["capture.corrupt"] == 1 and c["capture.resynced"] == 1


def test_gzip_pcap_and_pcapng(tmp_path):
    frames = _frames(50)
    raw = _pcap_bytes([(T0, i, f) for i, f in enumerate(frames)])
    p = tmp_path / "x.pcap.gz"
    p.write_bytes(gzip.compress(raw))
    recs, c = _read(p)
    assert [r[2] for r in recs] == frames and not c
    ng = tmp_path / "y.pcapng.gz"
    ng.write_bytes(gzip.compress(_shb() + _idb(1) + _epb(0, 9, frames[0])))
    recs, _ = _read(ng)
    assert recs == [(9000, 1, frames[0])]


def test_truncated_last_record(tmp_path, caplog):
    frames = _frames(5)
    raw = _pcap_bytes([(T0, i, f) for i, f in enumerate(frames)])
    p = tmp_path / "t.pcap"
    p.write_bytes(raw[:-10])
    recs, c = _read(p)
    assert [r[2] for r in recs] == frames[:4]
    assert c["capture.truncated"] == 1
    assert "byte offset" in caplog.text and "t.pcap" in caplog.text
    # cut inside a record header too
    p.write_bytes(raw[:24 + 2 * (16 + len(frames[0])) + 7])
    recs, c = _read(p)
    assert len(recs) == 2 and c["capture.truncated"] == 1


def test_truncated_gzip_stream(tmp_path):
    frames = _frames(200)
    gz = gzip.compress(_pcap_bytes([(T0, i, f) for i, f in enumerate(frames)]))
    p = tmp_path / "t.pcap.gz"
    p.write_bytes(gz[: len(gz) * 2 // 3])
    recs, c = _read(p)
    assert 0 < len(recs) < 200
    assert [r[2] for r in recs] == frames[: len(recs)]
    assert c["capture.truncated"] == 1


def test_truncated_pcapng(tmp_path):
    f1 = b"\x45" + bytes(19)
    data = _shb() + _idb(1) + _epb(0, 1, f1) + _epb(0, 2, f1)
    p = tmp_path / "t.pcapng"
    p.write_bytes(data[:-6])
    recs, c = _read(p)
    assert len(recs) == 1 and c["capture.truncated"] == 1


def test_corrupt_pcap_record_length(tmp_path):
    raw = _pcap_bytes([(T0, 0, b"abc")]) + struct.pack("<IIII", T0, 0, 0x7FFFFFFF, 5) + b"x" * 40
    p = tmp_path / "c.pcap"
    p.write_bytes(raw)
    recs, c = _read(p)
    assert len(recs) == 1 and c["capture.corrupt"] == 1


@pytest.mark.parametrize("content", [b"", b"\xd4\xc3", b"hello, this is not a capture file at all",
                                     gzip.compress(b"plain text, gzipped")])
def test_not_a_capture_raises(tmp_path, content):
    p = tmp_path / "bogus.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureFormatError, match="bogus.pcap"):
        list(read_capture(p, Counter()))


def test_missing_file_raises(tmp_path):
    with pytest.raises(CaptureFormatError, match="nope.pcap"):
        list(read_capture(tmp_path / "nope.pcap", Counter()))


def test_large_records_across_chunks(tmp_path):
    # Records bigger than one read chunk, and many small ones spanning chunk edges.
    big = bytes(range(256)) * 5000          # 1.28 MB > CHUNK_BYTES
    small = _frames(20000)
    recs_in = [(T0, 0, big)] + [(T0, i, f) for i, f in enumerate(small)] + [(T0, 1, big)]
    p = tmp_path / "big.pcap"
    p.write_bytes(_pcap_bytes(recs_in))
    recs, c = _read(p)
    assert [r[2] for r in recs] == [big] + small + [big]
    assert not c

"""RTP header parsing, ZRTP recognition, RFC 4733 events, and the media log format."""

import struct

import pytest

from agent.media.medialog import RECORD_HEADER, MediaLogWriter, read_media_log
from agent.media.rtp import is_zrtp, parse_rtp, parse_telephone_event


def rtp(pt=0, seq=1, ts=160, ssrc=0x11223344, payload=b"\xff" * 160, marker=False,
        csrc=(), ext: bytes | None = None, pad=0, version=2):
    b0 = (version << 6) | len(csrc)
    if ext is not None:
        b0 |= 0x10
    if pad:
        b0 |= 0x20
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrc)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += b"\x00" * (pad - 1) + bytes([pad])
    return out


def test_plain_header():
    data = rtp(pt=8, seq=65535, ts=0xFFFFFFF0, ssrc=0xDEADBEEF, payload=b"abc", marker=True)
    assert parse_rtp(data) == (8, True, 65535, 0xFFFFFFF0, 0xDEADBEEF, 12, 15)


def test_csrc_extension_padding():
    data = rtp(pt=96, csrc=(1, 2), ext=b"\x01\x02\x03\x04" * 2, pad=4, payload=b"PAYLOAD!")
    pt, marker, seq, ts, ssrc, s, e = parse_rtp(data)
    assert (pt, marker) == (96, False)
    assert s == 12 + 8 + 4 + 8
    assert data[s:e] == b"PAYLOAD!"


def test_empty_payload_is_rtp():
    data = rtp(payload=b"")
    assert parse_rtp(data)[5:] == (12, 12)


@pytest.mark.parametrize("data", [
    b"",
    b"\x80\x00\x00\x01",                                   # too short
    rtp(version=1),                                         # wrong version
    rtp(version=0),
    rtp(csrc=(1, 2, 3), payload=b"")[:20],                  # CSRC list past the end
    rtp(ext=b"\x00" * 8, payload=b"")[:18],                 # extension past the end
    rtp(payload=b"ab")[:-2] + b"\x00\x40",                  # (same length) - see below
])
def test_not_rtp(data):
    if data.endswith(b"\x00\x40"):
        # padding flag with a count larger than the packet
        data = bytes([data[0] | 0x20]) + data[1:-1] + b"\x40"
    assert parse_rtp(data) is None


def test_zero_padding_count_rejected():
    data = bytearray(rtp(payload=b"abcd"))
    data[0] |= 0x20
    data[-1] = 0
    assert parse_rtp(bytes(data)) is None


@pytest.mark.parametrize("rtcp_type", [192, 200, 201, 202, 203, 204, 205, 206, 207, 223])
def test_rtcp_mux_is_not_rtp(rtcp_type):
    data = struct.pack("!BBH", 0x81, rtcp_type, 7) + b"\x00" * 28
    assert parse_rtp(data) is None


def test_marker_with_ordinary_pt_is_rtp():
    assert parse_rtp(rtp(pt=0, marker=True))[0:2] == (0, True)   # second byte 128
    assert parse_rtp(rtp(pt=127, marker=True))[0] == 127            # second byte 255


def test_zrtp():
    hello = b"\x10\x00\x00\x01ZRTP" + b"\x00" * 4 + b"PZ\x00\x1dHello   "
    assert is_zrtp(hello)
    assert parse_rtp(hello) is None
    assert not is_zrtp(rtp())
    assert not is_zrtp(b"\x10\x00\x00\x01ZRT")


def test_telephone_event():
    assert parse_telephone_event(bytes([5, 0x8A, 0x03, 0x20])) == (5, True, 10, 800)
    assert parse_telephone_event(bytes([11, 0x0A, 0x00, 0xA0, 1, 2, 3, 4])) == (11, False, 10, 160)
    assert parse_telephone_event(b"\x01\x02\x03") is None


# ---------------------------------------------------------------- media log

def test_media_log_roundtrip_and_batching(tmp_path):
    path = tmp_path / "call.media"
    w = MediaLogWriter(path, flush_bytes=1000)
    for i in range(100):
        w.append(i % 3, (65530 + i) & 0xFFFF, i * 160, 1_700_000_000_000_000_000 + i,
                 0 if i % 2 else 101, i % 5 == 0, bytes([i]) * (i % 40))
        if i == 10:
            assert not path.exists()          # still buffered, no file opened yet
    w.close()
    assert w.failed is None
    assert w.bytes_written == path.stat().st_size
    assert w.bytes_written == sum(RECORD_HEADER.size + i % 40 for i in range(100))
    recs = list(read_media_log(path, chunk_bytes=37))   # chunk smaller than a record
    assert len(recs) == 100
    for i, (idx, seq, ts, arr, pt, marker, payload) in enumerate(recs):
        assert (idx, seq, ts, arr, pt, marker) == (
            i % 3, (65530 + i) & 0xFFFF, i * 160, 1_700_000_000_000_000_000 + i,
            0 if i % 2 else 101, i % 5 == 0)
        assert payload == bytes([i]) * (i % 40)


def test_media_log_truncated_tail_and_missing_file(tmp_path):
    path = tmp_path / "call.media"
    w = MediaLogWriter(path)
    w.append(0, 1, 2, 3, 0, False, b"x" * 10)
    w.append(0, 2, 3, 4, 0, False, b"y" * 10)
    w.close()
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    assert [r[1] for r in read_media_log(path)] == [1]
    assert list(read_media_log(tmp_path / "absent.media")) == []


def test_media_log_failure_never_raises(tmp_path):
    w = MediaLogWriter(tmp_path / "no" / "such" / "dir" / "call.media", flush_bytes=10)
    w.append(0, 1, 2, 3, 0, False, b"x" * 50)    # flush fails here
    assert w.failed is not None and "FileNotFoundError" in w.failed
    w.append(0, 2, 3, 4, 0, False, b"x" * 50)
    w.close()
    assert w.dropped == 1 and w.bytes_written == 0


@pytest.mark.parametrize("sizes", [[160, 160, 160], [0, 7, 160, 0x10005, 3]], ids=["same", "mixed+oversized"])
def test_media_log_append_records_equals_append(tmp_path, sizes):
    """Records appended many at once (one structured array, or headers and payloads
    scattered) are byte for byte the records ``append`` writes one by one, an oversized
    payload cut to 0xFFFF bytes the same way."""
    import numpy as np
    payloads = [bytes((i * 7 + j) & 0xFF for j in range(n)) for i, n in enumerate(sizes)]
    buf = b"".join(payloads)
    starts = np.cumsum([0] + sizes[:-1]).astype(np.int64)
    n = len(sizes)
    cols = dict(stream_index=np.arange(n) % 2, seq=np.arange(n) + 65534, rtp_ts=np.arange(n) * 160 + 0xFFFFFF00,
                arrival_ns=np.arange(n) + 10**18, pt=np.array([0, 101, 8, 0, 101][:n]),
                marker=np.array([1, 0, 0, 1, 0][:n]))
    one, many = MediaLogWriter(tmp_path / "one"), MediaLogWriter(tmp_path / "many")
    for i in range(n):
        one.append(*(int(cols[k][i]) for k in ("stream_index", "seq", "rtp_ts", "arrival_ns", "pt")),
                   bool(cols["marker"][i]), payloads[i])
    many.append_records(*cols.values(), buf, starts, np.array(sizes))
    one.close()
    many.close()
    assert (tmp_path / "many").read_bytes() == (tmp_path / "one").read_bytes()
    assert many.records == one.records == n
    assert [len(r[6]) for r in read_media_log(tmp_path / "many")] == [min(s, 0xFFFF) for s in sizes]

"""open_captures / iter_capture_paths: directories, merge order; real public captures."""

import json
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from agent.capture.files import iter_capture_paths, open_captures
from agent.capture.pcapfile import read_capture
from agent.errors import CaptureFormatError

PUBLIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "public"


def _write(path: Path, stamps_ms: list[int], tag: bytes) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    for ms in stamps_ms:
        data = b"\x45" + bytes(19) + tag + b"%06d" % ms
        out += struct.pack("<IIII", 1000 + ms // 1000, (ms % 1000) * 1000, len(data), len(data))
        out += data
    path.write_bytes(out)


def test_two_overlapping_files_are_merged_by_time(tmp_path):
    _write(tmp_path / "tap1.pcap", [0, 10, 20, 30, 40], b"A")
    _write(tmp_path / "tap2.pcap", [5, 15, 16, 45], b"B")
    recs = list(open_captures([tmp_path / "tap1.pcap", tmp_path / "tap2.pcap"], Counter()))
    ts = [r[0] for r in recs]
    assert ts == sorted(ts)
    assert [r[2][20:21] for r in recs] == [b"A", b"B", b"A", b"B", b"B", b"A", b"A", b"A", b"B"]


def test_directory_of_rotated_files_sorted_by_name(tmp_path):
    d = tmp_path / "rot"
    d.mkdir()
    _write(d / "trace_002.pcap", [2000, 2500], b"2")
    _write(d / "trace_001.pcap", [1000, 1500], b"1")
    _write(d / "trace_003.pcap.gz", [], b"3")   # not gzip really: a plain empty pcap with .gz name
    (d / "notes.txt").write_text("ignore me")
    paths = iter_capture_paths([d])
    assert [p.name for p in paths] == ["trace_001.pcap", "trace_002.pcap", "trace_003.pcap.gz"]
    recs = list(open_captures([d], Counter()))
    assert [r[2][20:21] for r in recs] == [b"1", b"1", b"2", b"2"]


def test_directory_and_file_mixed_interleave(tmp_path):
    d = tmp_path / "rot"
    d.mkdir()
    _write(d / "a1.pcap", [0, 100], b"a")
    _write(d / "a2.pcap", [200, 300], b"a")
    _write(tmp_path / "b.pcap", [50, 250], b"b")
    recs = list(open_captures([d, tmp_path / "b.pcap"], Counter()))
    assert [r[2][20:21] for r in recs] == [b"a", b"b", b"a", b"a", b"b", b"a"]


def test_missing_path_and_bad_file_raise(tmp_path):
    with pytest.raises(CaptureFormatError):
        iter_capture_paths([tmp_path / "missing"])
    (tmp_path / "bad.pcap").write_bytes(b"not a capture")
    _write(tmp_path / "ok.pcap", [1], b"x")
    with pytest.raises(CaptureFormatError, match="bad.pcap"):
        list(open_captures([tmp_path / "ok.pcap", tmp_path / "bad.pcap"], Counter()))


# -- real public captures ------------------------------------------------------

def _public(name: str) -> Path:
    p = PUBLIC / name
    if not p.exists():
        pytest.skip(f"public capture {name} not available")
    return p


def test_sip_call_rtp_g711_frame_count_matches_truth():
    p = _public("sip_call_rtp_g711.pcap")
    truth = json.loads((PUBLIC / "truth" / "sip_call_rtp_g711.pcap.json").read_text())
    c: Counter = Counter()
    n = sum(1 for _ in read_capture(p, c))
    assert n == truth["file"]["packets"] == 4269
    assert not c


@pytest.mark.parametrize("name", ["b2bua-asterisk.pcapng", "ndpi-rtp.pcapng",
                                  "erspan_sip_ipv4_udp.pcapng", "ipv6frag.pcap",
                                  "sip-over-tcp.pcap"])
def test_public_frame_counts_match_truth(name):
    p = _public(name)
    truth = json.loads((PUBLIC / "truth" / f"{name}.json").read_text())
    recs = list(read_capture(p, Counter()))
    assert len(recs) == truth["file"]["packets"]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("name", ["ndpi-rtp.pcapng", "sip_sctp.pcap"])
def test_timestamps_and_lengths_agree_with_tshark(name):
    p = _public(name)
    out = subprocess.run(["tshark", "-r", str(p), "-T", "fields", "-e", "frame.time_epoch",
                          "-e", "frame.cap_len"], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split("\n")
    rows = [line.split("\t") for line in out if line]
    recs = list(read_capture(p, Counter()))
    assert len(recs) == len(rows)
    for (ts_ns, _lt, frame), (epoch, caplen) in zip(recs, rows):
        assert len(frame) == int(caplen)
        sec, _, frac = epoch.partition(".")
        assert ts_ns == int(sec) * 10**9 + int(frac.ljust(9, "0")[:9])

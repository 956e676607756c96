"""Truncated and corrupt captures: every call before the damage is recovered intact, and
the reader resyncs after garbage so the calls after it are recovered too."""

from __future__ import annotations

import gzip
import struct

import pytest

from _hostile_lib import (PCAPS, essentials, pcap_bytes, pcapng_bytes, read_records, run_engine)

MULTI = PCAPS / "multi_call.pcap"


@pytest.fixture(scope="module")
def full():
    recs, _ = run_engine(MULTI)
    assert len(recs) == 3 and all(r["end_reason"] == "bye" for r in recs)
    return {r["callid"]: r for r in recs}


@pytest.fixture(scope="module")
def records():
    return read_records(MULTI)


def _offsets(records, header: int = 24, per_record: int = 16) -> list[int]:
    """File offset of each record's header."""
    out, off = [], header
    for _ts, _lt, frame in records:
        out.append(off)
        off += per_record + len(frame)
    return out


# Cuts: mid-INVITE of call 1, just after the ACKs, mid-record inside RTP, in the middle of
# call 1's BYE, just after call 1's 200 to BYE, after call 2's, one byte short of the end.
CUTS = [100, 3400, 15061, 50000, 78560, 79400, 126700, -1]


@pytest.mark.parametrize("cut", CUTS)
def test_cut_capture_equals_its_intact_prefix(tmp_path, full, records, cut):
    data = MULTI.read_bytes()
    cut = len(data) + cut if cut < 0 else cut
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[:cut])
    got, counters = run_engine(p)
    offs = _offsets(records)
    whole = [r for r, o in zip(records, offs) if o + 16 + len(r[2]) <= cut]
    # The same engine on the records that survived whole: nothing else was lost.
    want, _ = run_engine(_write(tmp_path / "prefix.pcap", pcap_bytes(whole)))
    assert [essentials(r) for r in got] == [essentials(r) for r in want]
    assert counters["capture.truncated"] == (1 if cut not in offs and cut < len(data) else 0)
    # Calls whose last message is before the cut are exactly the full capture's calls.
    for r in got:
        if r["end_reason"] == "bye":
            assert essentials(r) == essentials(full[r["callid"]])
    if cut >= 79400:
        assert essentials(got[0]) == essentials(full["multi_call-0001@callntest.example"])
    if cut >= 3400:       # every call that had started is recovered (capture_end if unfinished)
        assert len(got) >= 2


def _write(p, data):
    p.write_bytes(data)
    return p


def test_truncated_gzip_recovers_calls_before_the_cut(tmp_path, full):
    z = gzip.compress(MULTI.read_bytes())
    got, counters = run_engine(_write(tmp_path / "cut.pcap.gz", z[: int(len(z) * 0.75)]))
    assert counters["capture.truncated"] == 1
    assert essentials(got[0]) == essentials(full["multi_call-0001@callntest.example"])


def _damage_cases(records):
    """(name, pcap bytes, index of the first damaged record, index after the damage)."""
    offs = _offsets(records)
    data = pcap_bytes(records)
    i = 330                                  # after call 1's BYE/200 (record 330 ~ 79.4 kB)
    o = offs[i]
    garbage = bytes((x * 37 + 11) & 0xFF for x in range(5000))
    yield "garbage_block", data[:o] + garbage + data[o:], i, i
    yield "huge_length", data[:o + 8] + struct.pack("<I", 0x7FFFFFF0) + data[o + 12:], i, i + 1
    # A caplen 9 bytes short: the next header is read from the middle of a frame.
    cap = len(records[i][2])
    yield "short_length", data[:o + 8] + struct.pack("<II", cap - 9, cap) + data[o + 16:], i, i + 2
    yield "zeroed_block", data[:o] + bytes(3000) + data[o + 3000:], i, i + 40


@pytest.mark.parametrize("case", ["garbage_block", "huge_length", "short_length", "zeroed_block"])
def test_corrupt_middle_loses_only_the_damaged_records(tmp_path, full, records, case):
    name, data, first_bad, resume = next(c for c in _damage_cases(records) if c[0] == case)
    got, counters = run_engine(_write(tmp_path / f"{name}.pcap", data))
    assert counters["capture.corrupt"] >= 1 and counters["capture.resynced"] >= 1
    by_id = {r["callid"]: r for r in got}
    # Everything before the damage: call 1 is complete and identical.
    c1 = "multi_call-0001@callntest.example"
    assert essentials(by_id[c1]) == essentials(full[c1])
    # After the resync the other two calls continue: answered, ended by BYE, same parties,
    # and only the RTP of the damaged stretch is missing.
    for cid in ("multi_call-0002@callntest.example", "multi_call-0003@callntest.example"):
        got_e, want_e = essentials(by_id[cid]), essentials(full[cid])
        assert got_e["end_reason"] == "bye" and got_e["answered"]
        assert {k: v for k, v in got_e.items() if k != "rtp_packets"} == \
            {k: v for k, v in want_e.items() if k != "rtp_packets"}
        lost = resume - first_bad + 1
        for d in (0, 1):
            assert want_e["rtp_packets"][d] - lost <= got_e["rtp_packets"][d] <= want_e["rtp_packets"][d]


def test_pcapng_cut_and_corrupt_block(tmp_path, full, records):
    ng = pcapng_bytes(records)
    got, counters = run_engine(_write(tmp_path / "cut.pcapng", ng[: len(ng) * 2 // 3]))
    assert counters["capture.truncated"] == 1
    c1 = "multi_call-0001@callntest.example"
    assert essentials(next(r for r in got if r["callid"] == c1)) == essentials(full[c1])
    # A block whose length field is clobbered, in the middle: the reader resyncs on the next one.
    mid = ng.index(records[330][2]) - 28
    assert struct.unpack_from("<I", ng, mid)[0] == 6
    bad = ng[:mid + 4] + struct.pack("<I", 0x00100000) + ng[mid + 8:]
    got, counters = run_engine(_write(tmp_path / "bad.pcapng", bad))
    assert counters["capture.corrupt"] == 1 and counters["capture.resynced"] == 1
    assert len(got) == 3 and {r["end_reason"] for r in got} == {"bye"}
    assert essentials(next(r for r in got if r["callid"] == c1)) == essentials(full[c1])

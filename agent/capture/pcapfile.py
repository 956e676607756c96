"""Streaming reader for pcap and pcapng capture files (optionally gzip-compressed).

Owns: file-format parsing only — yields ``(ts_ns, linktype, frame_bytes)`` per
record, never loading a whole file. pcap in both byte orders with µs, ns and the
old Kuznetzov (0xa1b2cd34) magic; pcapng with SHB (either endian; a new SHB resets
the interface table), IDB (per-interface linktype, ``if_tsresol`` as a power of 10
or 2, ``if_tsoffset``), EPB, SPB and the obsolete Packet Block; other blocks are
skipped. Does not own: link-layer decoding (agent.net) or merging several files
(agent.capture.files).

Damage handling: a truncated last record is logged with its byte offset and
counted (``capture.truncated``); it ends the file. A corrupt record header or
block (impossible length, garbage written into the middle of the file) is
counted (``capture.corrupt``) and the reader scans forward (at most
RESYNC_SCAN_BYTES) for the next place where consecutive plausible records start,
resuming there (``capture.resynced``, bytes skipped in
``capture.resync_skipped_bytes``); if none is found the rest of the file is
skipped. A file that is not a capture at all raises CaptureFormatError.
The record loop works on large chunks with ``struct.unpack_from`` because this
is the hot path of replay.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agent.errors import CaptureFormatError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Largest record we believe; anything larger is a corrupt length field, not a frame.
MAX_RECORD_BYTES = 1 << 24
# Records longer than the snap length are corrupt, but some writers put a too-small snaplen in
# the header (or 0): never distrust a length below this floor.
MIN_TRUSTED_SNAPLEN = 262_144
# How far past a corrupt header we search for the next good record before giving up.
RESYNC_SCAN_BYTES = 8 << 20
# Two consecutive records found while resyncing are believed only if their clocks agree this well.
_RESYNC_MAX_STEP_S = 86_400

MAX_TS_NS = (1 << 63) - 1           # packet time is held in signed 64-bit ns from here on
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_KUZNETZOV = 0xA1B2CD34   # modified pcap: 24-byte record headers
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

_BT_IDB = 0x00000001
_BT_OPB = 0x00000002   # obsolete Packet Block
_BT_SPB = 0x00000003
_BT_EPB = 0x00000006

Record = tuple[int, int, bytes]


def _open(path: Path) -> BinaryIO:
    """Open ``path`` for reading, transparently un-gzipping by magic (1f 8b)."""
    raw = open(path, "rb", buffering=CHUNK_BYTES)
    head = raw.peek(2)[:2]
    if head == b"\x1f\x8b":
        raw.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return raw


class _Chunks:
    """A growing window over the file: ``buf[pos:]`` is unread data.

    ``base`` is the file offset of ``buf[0]`` so messages can name byte offsets.
    """

    __slots__ = ("read", "buf", "pos", "base", "eof", "error")

    def __init__(self, f: BinaryIO, initial: bytes = b"") -> None:
        # read1: one underlying read/decompress step per call, so the data that
        # precedes a truncated gzip stream is returned before the error surfaces.
        self.read = getattr(f, "read1", f.read)
        self.buf = initial
        self.pos = 0
        self.base = 0
        self.eof = False
        self.error = ""

    def need(self, n: int) -> bool:
        """Make at least ``n`` unread bytes available; False at EOF (or read error)."""
        while len(self.buf) - self.pos < n:
            if self.eof:
                return False
            try:
                data = self.read(max(CHUNK_BYTES, n - (len(self.buf) - self.pos)))
            except (EOFError, OSError, zlib.error) as exc:  # truncated/corrupt gzip stream
                self.error = f"{type(exc).__name__}: {exc}"
                data = b""
            if not data:
                self.eof = True
                return len(self.buf) - self.pos >= n
            self.base += self.pos
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        return True

    def offset(self) -> int:
        return self.base + self.pos

    def leftover(self) -> int:
        return len(self.buf) - self.pos


def read_capture(path: str | Path, counters) -> Iterator[Record]:
    """Yield ``(ts_ns, linktype, frame)`` for every record of one capture file.

    Raises CaptureFormatError (before the first record) when the file is empty or
    is not pcap/pcapng; damage later in the file is counted, never raised.
    """
    path = Path(path)
    try:
        f = _open(path)
    except OSError as exc:
        raise CaptureFormatError(f"{path}: cannot open capture: {exc}") from exc
    with f:
        chunks = _Chunks(f)
        chunks.need(24)
        if chunks.error:
            raise CaptureFormatError(f"{path}: not a readable capture ({chunks.error})")
        head = chunks.buf[:4]
        if len(head) < 4:
            raise CaptureFormatError(f"{path}: empty or too short to be a pcap/pcapng capture")
        magic_le = struct.unpack("<I", head)[0]
        if magic_le == PCAPNG_SHB:
            yield from _read_pcapng(path, chunks, counters)
            return
        magic_be = struct.unpack(">I", head)[0]
        for endian, magic in (("<", magic_le), (">", magic_be)):
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_KUZNETZOV):
                yield from _read_pcap(path, chunks, counters, endian, magic)
                return
        raise CaptureFormatError(
            f"{path}: not a pcap or pcapng capture (magic {head.hex()})")


def _warn(path: Path, counters, kind: str, offset: int, detail: str, *,
          count: bool = True) -> None:
    if count:
        counters["capture." + kind] += 1
    log.warning("%s: %s capture at byte offset %d (%s); rest of file skipped",
                path, kind, offset, detail)


def _read_pcap(path: Path, ch: _Chunks, counters, endian: str, magic: int) -> Iterator[Record]:
    if not ch.need(24):
        raise CaptureFormatError(f"{path}: pcap global header truncated")
    _, _vmaj, _vmin, _zone, _sigfigs, snaplen, network = struct.unpack_from(
        endian + "IHHiIII", ch.buf, 0)
    linktype = network & 0xFFFF   # upper bits carry FCS length flags
    ch.pos = 24
    yield from _pcap_records(path, ch, counters, endian, magic, linktype, snaplen)


def _opened_at(path: Path, offset: int) -> tuple[BinaryIO, _Chunks]:
    f = _open(path)
    f.seek(offset)
    ch = _Chunks(f)
    ch.base = offset
    return f, ch


def resume_pcap(path: Path, offset: int, counters, endian: str, magic: int, linktype: int,
                snaplen: int) -> Iterator[Record]:
    """The records of a pcap file from the record header at byte ``offset`` on, exactly as
    ``read_capture`` would yield them there (the batch reader hands over damage to this)."""
    f, ch = _opened_at(path, offset)
    with f:
        yield from _pcap_records(path, ch, counters, endian, magic, linktype, snaplen)


def _pcap_records(path: Path, ch: _Chunks, counters, endian: str, magic: int, linktype: int,
                  snaplen: int) -> Iterator[Record]:
    frac_mult = 1 if magic == PCAP_MAGIC_NS else 1000
    frac_max = 1_000_000_000 if magic == PCAP_MAGIC_NS else 1_000_000
    # Frames above the snap length are accepted (some writers lie in the header); only the
    # resync scan, which must not believe garbage, holds records to it.
    scan_cap_max = min(MAX_RECORD_BYTES, max(snaplen, MIN_TRUSTED_SNAPLEN))
    hdr_len = 24 if magic == PCAP_MAGIC_KUZNETZOV else 16
    unpack = struct.Struct(endian + "IIII").unpack_from
    # Local copies: the loop below runs once per packet.
    buf = ch.buf
    pos = ch.pos
    blen = len(buf)
    while True:
        if blen - pos < hdr_len:
            ch.pos = pos
            if not ch.need(hdr_len):
                break
            buf, pos, blen = ch.buf, ch.pos, len(ch.buf)
        sec, frac, caplen, origlen = unpack(buf, pos)
        bad = caplen > MAX_RECORD_BYTES or caplen > origlen or not origlen or frac >= frac_max
        if not bad and pos + hdr_len + caplen > blen:
            ch.pos = pos
            if not ch.need(hdr_len + caplen):
                # Runs past the end of the file: a cut last record, unless good records
                # follow (then this length is corrupt).
                probe_from = ch.pos
                bad = not ch.error and _resync_pcap(ch, unpack, hdr_len, scan_cap_max,
                                                    frac_max) >= 0
                ch.pos = probe_from   # at EOF need() reads nothing: the window did not move
                if not bad:
                    break
            buf, pos, blen = ch.buf, ch.pos, len(ch.buf)
        if bad:
            # A header no writer produces: a wrong length earlier or garbage here.
            ch.pos = pos
            bad_at = ch.offset()
            counters["capture.corrupt"] += 1
            skipped = _resync_pcap(ch, unpack, hdr_len, scan_cap_max, frac_max)
            if skipped < 0:
                _warn(path, counters, "corrupt", bad_at,
                      f"record header sec={sec} frac={frac} caplen={caplen} origlen={origlen}",
                      count=False)
                return
            _resynced(path, counters, bad_at, skipped)
            buf, pos, blen = ch.buf, ch.pos, len(ch.buf)
            continue
        start = pos + hdr_len
        end = start + caplen
        yield sec * 1_000_000_000 + frac * frac_mult, linktype, buf[start:end]
        pos = end
    if ch.leftover():
        _warn(path, counters, "truncated", ch.offset(),
              ch.error or f"{ch.leftover()} bytes of a partial record")
    elif ch.error:
        _warn(path, counters, "truncated", ch.offset(), ch.error)


def _resync_pcap(ch: _Chunks, unpack, hdr_len: int, cap_max: int, frac_max: int) -> int:
    """Scan forward from the corrupt header at ``ch.pos`` for the next offset where a plausible
    record header is followed by another one (or by the exact end of the file). Leaves
    ``ch.pos`` there and returns the bytes skipped, or -1 when none is found in
    RESYNC_SCAN_BYTES. Empty records are not believed here: runs of zero bytes look like them."""

    def plausible(sec: int, frac: int, caplen: int, origlen: int) -> bool:
        return 0 < caplen <= cap_max and caplen <= origlen <= MAX_RECORD_BYTES and frac < frac_max

    start = ch.offset()
    ch.pos += 1
    while ch.offset() - start < RESYNC_SCAN_BYTES:
        if not ch.need(hdr_len):
            return -1
        sec, frac, caplen, origlen = unpack(ch.buf, ch.pos)
        if plausible(sec, frac, caplen, origlen):
            nxt = hdr_len + caplen
            if ch.need(nxt + hdr_len):
                sec2, frac2, cap2, orig2 = unpack(ch.buf, ch.pos + nxt)
                if plausible(sec2, frac2, cap2, orig2) and abs(sec2 - sec) <= _RESYNC_MAX_STEP_S:
                    return ch.offset() - start
            elif ch.leftover() == nxt and not ch.error:
                return ch.offset() - start        # the file's last record
        ch.pos += 1
    return -1


def _resynced(path: Path, counters, bad_at: int, skipped: int) -> None:
    counters["capture.resynced"] += 1
    counters["capture.resync_skipped_bytes"] += skipped
    log.warning("%s: corrupt capture at byte offset %d; skipped %d bytes to the next good record",
                path, bad_at, skipped)


def _bad_time(counters, ts_ns: int) -> int:
    """A pcapng timestamp outside 1970..2262 (a corrupt interface resolution or offset): counted
    and clamped into range, so every later stage can hold packet time in 64 bits."""
    counters["capture.bad_timestamp"] += 1
    return min(max(ts_ns, 0), MAX_TS_NS)


def _tsresol_to_ns(code: int) -> tuple[int, int]:
    """Return (multiplier, divisor) turning interface timestamp units into ns."""
    if code & 0x80:
        # Power of two: units are 2^-n s; ns = units * 1e9 / 2^n.
        return 1_000_000_000, 1 << (code & 0x7F)
    if code <= 9:
        return 10 ** (9 - code), 1
    return 1, 10 ** (code - 9)


def _parse_idb(body: bytes, endian: str) -> tuple[int, int, int, int]:
    """Return (linktype, ts multiplier, ts divisor, ts offset ns) of an IDB body. A body too
    short to name its link type gives link type 0xFFFF (no decoder: its frames are counted
    as skipped), so the interface numbers of later blocks stay right."""
    if len(body) < 2:
        return 0xFFFF, 1000, 1, 0
    linktype = struct.unpack_from(endian + "H", body, 0)[0]
    mult, div = 1000, 1   # default if_tsresol = 6 (µs)
    offset_ns = 0
    pos = 8
    n = len(body)
    while pos + 4 <= n:
        code, length = struct.unpack_from(endian + "HH", body, pos)
        pos += 4
        if code == 0:   # opt_endofopt
            break
        value = body[pos:pos + length]
        if code == 9 and len(value) >= 1:      # if_tsresol
            mult, div = _tsresol_to_ns(value[0])
        elif code == 14 and len(value) >= 8:   # if_tsoffset, seconds
            offset_ns = struct.unpack_from(endian + "q", value, 0)[0] * 1_000_000_000
        pos += (length + 3) & ~3
    return linktype, mult, div, offset_ns


def resume_pcapng(path: Path, offset: int, counters, ifaces: list[tuple[int, int, int, int]], endian: str,
                  last_ts_ns: int) -> Iterator[Record]:
    """The records of a pcapng file from the block at byte ``offset`` on, in the section state
    given (interfaces, byte order, the last record's time), exactly as ``read_capture`` would
    yield them there (the batch reader hands over to this)."""
    f, ch = _opened_at(path, offset)
    with f:
        yield from _read_pcapng(path, ch, counters, (list(ifaces), endian, last_ts_ns))


def _read_pcapng(path: Path, ch: _Chunks, counters,
                 state: tuple[list[tuple[int, int, int, int]], str, int] | None = None) -> Iterator[Record]:
    # Per-interface (linktype, mult, div, offset_ns), reset by every SHB.
    ifaces: list[tuple[int, int, int, int]] = []
    endian = "<"
    last_ts_ns = 0
    first = True
    if state is not None:                  # resumed inside a section
        ifaces, endian, last_ts_ns = state
        first = False
    u32 = struct.Struct(endian + "I").unpack_from
    epb = struct.Struct(endian + "IIIII").unpack_from
    while True:
        if not ch.need(12):
            break
        buf, pos = ch.buf, ch.pos
        btype = u32(buf, pos)[0]
        if btype == PCAPNG_SHB:
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                if first:
                    raise CaptureFormatError(f"{path}: pcapng header has a bad byte-order magic")
                _warn(path, counters, "corrupt", ch.offset(), "bad section byte-order magic")
                return
            u32 = struct.Struct(endian + "I").unpack_from
            epb = struct.Struct(endian + "IIIII").unpack_from
            ifaces = []
        first = False
        blen = u32(buf, pos + 4)[0]
        problem = ""
        if blen < 12 or blen & 3 or blen > MAX_RECORD_BYTES:
            problem = f"block length {blen}"
        elif not ch.need(blen):
            if ch.eof and not ch.error and _pcapng_resync(ch, u32, probe=True) < 0:
                break                       # a block cut by the end of the file: truncated
            problem = f"block length {blen} runs past the end of the file"
        else:
            buf, pos = ch.buf, ch.pos
            if u32(buf, pos + blen - 4)[0] != blen:
                problem = "block trailer length mismatch"
            elif btype == _BT_EPB and blen < 32:
                problem = "short enhanced packet block"
        if problem:
            bad_at = ch.offset()
            counters["capture.corrupt"] += 1
            skipped = _pcapng_resync(ch, u32)
            if skipped < 0:
                _warn(path, counters, "corrupt", bad_at, problem, count=False)
                return
            _resynced(path, counters, bad_at, skipped)
            continue
        if btype == _BT_EPB:
            if_id, ts_hi, ts_lo, caplen, _orig = epb(buf, pos + 8)
            if if_id >= len(ifaces) or 28 + caplen > blen - 4:
                counters["capture.corrupt"] += 1
            else:
                linktype, mult, div, off_ns = ifaces[if_id]
                units = (ts_hi << 32) | ts_lo
                ts_ns = units * mult // div + off_ns if div != 1 else units * mult + off_ns
                if not 0 <= ts_ns <= MAX_TS_NS:
                    ts_ns = _bad_time(counters, ts_ns)
                last_ts_ns = ts_ns
                yield ts_ns, linktype, buf[pos + 28:pos + 28 + caplen]
        elif btype == _BT_SPB:
            if ifaces:
                orig = u32(buf, pos + 8)[0]
                caplen = min(orig, blen - 16)
                linktype = ifaces[0][0]
                # SPB carries no timestamp: reuse the previous record's time.
                yield last_ts_ns, linktype, buf[pos + 12:pos + 12 + caplen]
            else:
                counters["capture.corrupt"] += 1
        elif btype == _BT_IDB:
            ifaces.append(_parse_idb(buf[pos + 8:pos + blen - 4], endian))
        elif btype == _BT_OPB:
            if_id = struct.unpack_from(endian + "H", buf, pos + 8)[0]
            ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "IIII", buf, pos + 12)
            if if_id >= len(ifaces) or 28 + caplen > blen - 4:
                counters["capture.corrupt"] += 1
            else:
                linktype, mult, div, off_ns = ifaces[if_id]
                units = (ts_hi << 32) | ts_lo
                ts_ns = units * mult // div + off_ns
                if not 0 <= ts_ns <= MAX_TS_NS:
                    ts_ns = _bad_time(counters, ts_ns)
                last_ts_ns = ts_ns
                yield ts_ns, linktype, buf[pos + 28:pos + 28 + caplen]
        # Any other block type (NRB, ISB, DSB, custom, ...) is skipped.
        ch.pos = pos + blen
    if ch.leftover():
        _warn(path, counters, "truncated", ch.offset(),
              ch.error or f"{ch.leftover()} bytes of a partial block")
    elif ch.error:
        _warn(path, counters, "truncated", ch.offset(), ch.error)


# Block types a resync may land on (not SHB: a new section would also change the byte order).
_RESYNC_BLOCK_TYPES = frozenset((_BT_IDB, _BT_OPB, _BT_SPB, 4, 5, _BT_EPB, 0x0A, 0x0BAD, 0x40000BAD))


def _pcapng_resync(ch: _Chunks, u32, *, probe: bool = False) -> int:
    """Scan forward (4-byte steps: blocks are 32-bit aligned) from the bad block at ``ch.pos``
    for a known block type whose length is sane and whose trailer repeats it. Leaves ``ch.pos``
    there and returns the bytes skipped, or -1 when none is found in RESYNC_SCAN_BYTES.
    ``probe`` only asks whether such a block exists (``ch.pos`` is restored)."""
    origin = ch.pos
    start = ch.offset()
    ch.pos += 4
    found = -1
    while ch.offset() - start < RESYNC_SCAN_BYTES:
        if not ch.need(12):
            break
        buf, pos = ch.buf, ch.pos
        if u32(buf, pos)[0] in _RESYNC_BLOCK_TYPES:
            blen = u32(buf, pos + 4)[0]
            if 12 <= blen <= MAX_RECORD_BYTES and not blen & 3 and ch.need(blen) \
                    and u32(ch.buf, ch.pos + blen - 4)[0] == blen:
                found = ch.offset() - start
                break
        ch.pos += 4
    if probe:
        ch.pos = origin   # probes run at EOF only: need() read nothing, the window did not slide
    return found

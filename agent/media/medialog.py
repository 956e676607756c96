"""The per-call media log: every released RTP payload of a call, appended to ONE file.

Owns the on-disk record format and its buffered writer / streaming reader. One file per
call (not per stream) keeps the open-file count independent of the stream count, and the
writer opens the file only to append a batch (~64 KiB), so no descriptor stays open
between batches and memory per call is bounded by the batch size, not the call length.

Record (little-endian): stream_index u16 | seq u16 | rtp_ts u32 | arrival_ns i64 | pt u8 |
flags u8 (bit0 = marker) | payload_len u16 | payload bytes.

Does not own ordering (``sequencer.py`` releases records in sequence order per stream) nor
decoding (``render.py``). A write failure (disk full, permissions) never raises to the
capture loop: the writer records ``failed``, cuts any partial batch off the file (a torn
record would desynchronise the reader), drops that batch and the audio that follows, and
tries again at every later batch, so recording resumes by itself when space returns. One
log line per failure and per recovery, never per packet.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from agent.byterows import byte_rows

__all__ = ["MediaLogWriter", "MediaLogMemory", "NullMediaLog", "read_media_log", "read_media_log_blocks",
           "MediaBlock", "RECORD_HEADER", "MediaRecord", "encode_records"]

RECORD_HEADER = struct.Struct("<HHIqBBH")  # 20 bytes
# The same header as a numpy record (packed, little-endian), for appending many at once.
_RUN_HEADER_DTYPE = np.dtype([("stream_index", "<u2"), ("seq", "<u2"), ("rtp_ts", "<u4"), ("arrival_ns", "<i8"),
                          ("pt", "u1"), ("flags", "u1"), ("payload_len", "<u2")])
FLUSH_BYTES = 64 * 1024


@functools.lru_cache(maxsize=64)
def _record_dtype(payload_bytes: int) -> np.dtype:
    """A whole record with a payload of ``payload_bytes`` as one packed numpy record."""
    return np.dtype(_RUN_HEADER_DTYPE.descr + [("payload", "u1", (payload_bytes,))] if payload_bytes
                    else _RUN_HEADER_DTYPE)

log = logging.getLogger(__name__)


def encode_records(stream_index: np.ndarray, seq: np.ndarray, rtp_ts: np.ndarray, arrival_ns: np.ndarray,
                   pt: np.ndarray, marker: np.ndarray, buf: bytes, starts: np.ndarray,
                   sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records in the log's format, one after another, as one uint8 array, and the byte offset
    where each ends; payload i is ``buf[starts[i]:starts[i] + sizes[i]]``, cut to 0xFFFF bytes
    as ``append`` cuts it. Built with numpy: one structured record per packet when every
    payload has the same length (a stream of G.711 frames), else headers and payloads
    scattered into one byte array. A run of many calls' records is encoded at once and cut
    into each call's share by ``ends``."""
    n = len(starts)
    sizes = np.minimum(np.asarray(sizes, dtype=np.int64), 0xFFFF)     # payload_len is u16
    size = int(sizes[0]) if n else 0
    same = bool(np.all(sizes == size))
    out = np.empty(n, dtype=_record_dtype(size if same else 0))
    out["stream_index"] = stream_index & 0xFFFF
    out["seq"] = seq & 0xFFFF
    out["rtp_ts"] = rtp_ts & 0xFFFFFFFF
    out["arrival_ns"] = arrival_ns
    out["pt"] = pt & 0x7F
    out["flags"] = marker != 0
    out["payload_len"] = sizes
    data = np.frombuffer(buf, dtype=np.uint8)
    if same:
        # Header and payload side by side as one structured record per packet.
        if size:
            out["payload"] = byte_rows(data, starts, size)
        return out.view(np.uint8), np.arange(1, n + 1, dtype=np.int64) * out.dtype.itemsize
    hsize = RECORD_HEADER.size
    ends = np.cumsum(sizes + hsize)
    begins = ends - sizes - hsize
    joined = np.empty(int(ends[-1]), dtype=np.uint8)
    joined[(begins[:, None] + np.arange(hsize)).reshape(-1)] = out.view(np.uint8)
    total = int(ends[-1]) - n * hsize
    if total:
        before = np.cumsum(sizes) - sizes                # payload bytes of the records before
        offset = np.arange(total) - np.repeat(before, sizes)
        joined[np.repeat(begins + hsize, sizes) + offset] = data[np.repeat(starts, sizes) + offset]
    return joined, ends


# (stream_index, seq, rtp_ts, arrival_ns, pt, marker, payload)
MediaRecord = tuple[int, int, int, int, int, bool, bytes]


class MediaLogWriter:
    """Buffered appender of media records to one call's log file."""

    __slots__ = ("path", "flush_bytes", "bytes_written", "records", "dropped", "failed",
                 "lost_at_failure", "failures", "recoveries", "_buf", "_buf_records")

    def __init__(self, path: Path | str, *, flush_bytes: int = FLUSH_BYTES) -> None:
        self.path = Path(path)
        self.flush_bytes = flush_bytes
        self.bytes_written = 0     # bytes that reached the file
        self.records = 0           # records accepted into the buffer
        self.dropped = 0           # records appended while the log was failing, then discarded
        self.lost_at_failure = 0   # records of the batches whose write failed first
        self.failures = 0          # healthy -> failing transitions
        self.recoveries = 0        # failing -> healthy transitions
        self.failed: str | None = None   # the last write error while failing, else None
        self._buf = bytearray()
        self._buf_records = 0

    def append(self, stream_index: int, seq: int, rtp_ts: int, arrival_ns: int, pt: int,
               marker: bool, payload: bytes | memoryview) -> None:
        buf = self._buf
        # payload_len is u16: a UDP payload cannot exceed it, but clamp defensively.
        n = len(payload)
        if n > 0xFFFF:
            payload = payload[:0xFFFF]
            n = 0xFFFF
        buf += RECORD_HEADER.pack(stream_index & 0xFFFF, seq & 0xFFFF, rtp_ts & 0xFFFFFFFF,
                                  arrival_ns, pt & 0x7F, 1 if marker else 0, n)
        buf += payload
        self.records += 1
        self._buf_records += 1
        if len(buf) >= self.flush_bytes:
            self.flush()

    def append_records(self, stream_index: np.ndarray, seq: np.ndarray, rtp_ts: np.ndarray,
                       arrival_ns: np.ndarray, pt: np.ndarray, marker: np.ndarray, buf: bytes,
                       starts: np.ndarray, sizes: np.ndarray) -> None:
        """``append`` for many records at once, payload i being ``buf[starts[i]:starts[i] +
        sizes[i]]`` (see ``encode_records``)."""
        if len(starts):
            data, _ends = encode_records(stream_index, seq, rtp_ts, arrival_ns, pt, marker, buf, starts, sizes)
            self.append_encoded(data, len(starts))

    def append_encoded(self, data, records: int) -> None:
        """Append ``records`` whole records already in the log's format (``encode_records``)."""
        self._buf += memoryview(data)       # (a numpy array added to a bytearray would broadcast)
        self.records += records
        self._buf_records += records
        if len(self._buf) >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Append the buffered records to the file (open, write, close).

        On failure the file is cut back to its size before this batch and the batch is
        discarded; the next batch tries again."""
        if not self._buf:
            return
        size = -1
        fd = -1
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            view = memoryview(self._buf)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:  # disk full, permission, vanished directory
            if size >= 0:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
            self._failed(exc)
            return
        finally:
            if fd >= 0:
                os.close(fd)
        if self.failed is not None:
            self.failed = None
            self.recoveries += 1
            log.warning("%s: media log writable again; recording resumes", self.path.name)
        self.bytes_written += len(self._buf)
        self._buf = bytearray()
        self._buf_records = 0

    def _failed(self, exc: OSError) -> None:
        if self.failed is None:
            self.failures += 1
            self.lost_at_failure += self._buf_records
            log.warning("%s: cannot write media log (%s: %s); dropping audio until it can",
                        self.path.name, type(exc).__name__, exc.strerror or exc)
        else:
            self.dropped += self._buf_records
        self.failed = f"{type(exc).__name__}: {exc}"
        self._buf = bytearray()
        self._buf_records = 0

    def close(self) -> None:
        self.flush()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)


class NullMediaLog:
    """A media log that keeps nothing: for ``inspect``, which wants the counters, not audio."""

    __slots__ = ("records",)
    path = None
    failures = dropped = lost_at_failure = bytes_written = 0
    failed = None

    def __init__(self) -> None:
        self.records = 0

    def append(self, stream_index: int, seq: int, rtp_ts: int, arrival_ns: int, pt: int,
               marker: bool, payload: bytes | memoryview) -> None:
        self.records += 1

    def append_records(self, stream_index, seq, rtp_ts, arrival_ns, pt, marker, buf, starts, sizes) -> None:
        self.records += len(starts)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_media_log(path: Path | str, *, chunk_bytes: int = 256 * 1024) -> Iterator[MediaRecord]:
    """Stream the records of a media log in file order.

    A missing file yields nothing (a call whose streams never sent a packet); a truncated
    last record (crash mid-write) ends the iteration.
    """
    hdr = RECORD_HEADER
    hsize = hdr.size
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        buf = b""
        pos = 0
        while True:
            chunk = fh.read(chunk_bytes)
            if chunk:
                buf = buf[pos:] + chunk
                pos = 0
            n = len(buf)
            while pos + hsize <= n:
                idx, seq, ts, arr, pt, flags, plen = hdr.unpack_from(buf, pos)
                end = pos + hsize + plen
                if end > n:
                    break
                yield idx, seq, ts, arr, pt, bool(flags & 1), buf[pos + hsize:end]
                pos = end
            if not chunk:
                return


# The record header as a numpy structured type (same layout as RECORD_HEADER, packed).
_HEADER_DTYPE = np.dtype([("stream", "<u2"), ("seq", "<u2"), ("ts", "<u4"), ("arrival_ns", "<i8"),
                          ("pt", "u1"), ("flags", "u1"), ("plen", "<u2")])
assert _HEADER_DTYPE.itemsize == RECORD_HEADER.size
_PLEN_AT = 18                      # byte offset of payload_len inside the header


@dataclass(slots=True)
class MediaBlock:
    """Consecutive whole records of a media log as arrays (one entry per record, file order).

    ``data`` holds the raw bytes the records were cut from; record i's payload is
    ``data[payload_at[i] : payload_at[i] + payload_len[i]]``."""
    stream: np.ndarray          # uint16
    seq: np.ndarray             # uint16
    ts: np.ndarray              # int64 (RTP timestamps, 0..2**32-1)
    arrival_ns: np.ndarray      # int64
    pt: np.ndarray              # uint8
    marker: np.ndarray          # bool
    payload_len: np.ndarray     # int64
    payload_at: np.ndarray      # int64, offsets into data
    data: np.ndarray            # uint8

    def __len__(self) -> int:
        return int(self.stream.size)


def _record_starts(buf: np.ndarray) -> tuple[np.ndarray, int]:
    """Offsets of the whole records in ``buf`` and the offset where the rest begins.

    Records are mostly one size (a G.711 stream: 160-byte payloads), so the walk guesses
    that the next records have the size of the current one, checks all their length fields
    at once and only steps record by record where the size changes. The guess window
    grows while it holds and shrinks when it fails, so mixed sizes stay linear."""
    n = buf.size
    pos = 0
    window = 16
    starts: list[np.ndarray] = []
    hsize = RECORD_HEADER.size
    while pos + hsize <= n:
        plen = int(buf[pos + _PLEN_AT]) | int(buf[pos + _PLEN_AT + 1]) << 8
        size = hsize + plen
        fit = (n - pos) // size           # records of this size that fit entirely
        if fit == 0:
            break
        k = min(fit, window)
        cand = pos + size * np.arange(k, dtype=np.int64)
        lens = buf[cand + _PLEN_AT].astype(np.int64) | buf[cand + _PLEN_AT + 1].astype(np.int64) << 8
        bad = np.flatnonzero(lens != plen)
        good = int(bad[0]) if bad.size else k
        starts.append(cand[:good])
        pos += size * good
        window = min(window * 4, 1 << 16) if good == k else 16
    if not starts:
        return np.zeros(0, dtype=np.int64), pos
    return (starts[0] if len(starts) == 1 else np.concatenate(starts)), pos


def _block_of(buf: np.ndarray, starts: np.ndarray) -> MediaBlock:
    # Gather the 20 header bytes of every record, then view them as the structured type.
    raw = buf[starts[:, None] + np.arange(RECORD_HEADER.size)]
    hdr = raw.view(_HEADER_DTYPE).reshape(-1)
    return MediaBlock(
        stream=hdr["stream"].copy(), seq=hdr["seq"].copy(),
        ts=hdr["ts"].astype(np.int64), arrival_ns=hdr["arrival_ns"].astype(np.int64),
        pt=hdr["pt"].copy(), marker=(hdr["flags"] & 1).astype(bool),
        payload_len=hdr["plen"].astype(np.int64), payload_at=starts + RECORD_HEADER.size,
        data=buf)


def read_media_log_blocks(path: Path | str, *, chunk_bytes: int = 1 << 20) -> Iterator[MediaBlock]:
    """Stream a media log as ``MediaBlock``s of about ``chunk_bytes`` each (same records,
    same order and same end-of-file rules as ``read_media_log``; memory is bounded by the
    chunk size, not the call length)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        rest = b""
        while True:
            chunk = fh.read(chunk_bytes)
            if not chunk:
                return            # a truncated last record (crash mid-write) is dropped
            buf = np.frombuffer(rest + chunk, dtype=np.uint8)
            starts, used = _record_starts(buf)
            rest = buf[used:].tobytes()
            if starts.size:
                yield _block_of(buf, starts)


class MediaLogMemory:
    """The ordered media log of a call that is rendered right after it is sequenced, in the
    same worker: the records stay in memory as ``MediaBlock``s, never written to a file and
    read back. Records taken many at once (``append_records``) become a block of their columns
    as they are (no packing: the payloads stay in the raw log's buffer); records appended one
    by one collect in the on-disk record format and are cut into a block when a run of many
    follows or the log is closed. ``blocks`` holds them in append order, as the file would."""

    __slots__ = ("records", "blocks", "_buf")
    path = None
    failures = dropped = lost_at_failure = bytes_written = 0
    failed = None

    def __init__(self) -> None:
        self.records = 0
        self.blocks: list[MediaBlock] = []
        self._buf = bytearray()

    def append(self, stream_index: int, seq: int, rtp_ts: int, arrival_ns: int, pt: int,
               marker: bool, payload: bytes | memoryview) -> None:
        n = min(len(payload), 0xFFFF)
        self._buf += RECORD_HEADER.pack(stream_index & 0xFFFF, seq & 0xFFFF, rtp_ts & 0xFFFFFFFF,
                                        arrival_ns, pt & 0x7F, 1 if marker else 0, n)
        self._buf += payload[:n]
        self.records += 1

    def append_records(self, stream_index: np.ndarray, seq: np.ndarray, rtp_ts: np.ndarray,
                       arrival_ns: np.ndarray, pt: np.ndarray, marker: np.ndarray, buf: bytes,
                       starts: np.ndarray, sizes: np.ndarray) -> None:
        n = len(starts)
        if not n:
            return
        self.flush()
        sizes = np.minimum(np.asarray(sizes, dtype=np.int64), 0xFFFF)
        self.blocks.append(MediaBlock(
            stream=(np.asarray(stream_index) & 0xFFFF).astype(np.uint16), seq=(np.asarray(seq) & 0xFFFF).astype(np.uint16),
            ts=(np.asarray(rtp_ts, dtype=np.int64) & 0xFFFFFFFF), arrival_ns=np.asarray(arrival_ns, dtype=np.int64),
            pt=(np.asarray(pt) & 0x7F).astype(np.uint8), marker=np.asarray(marker) != 0,
            payload_len=sizes, payload_at=np.asarray(starts, dtype=np.int64), data=np.frombuffer(buf, dtype=np.uint8)))
        self.records += n

    def flush(self) -> None:
        """Cut the records appended one by one into a block."""
        if self._buf:
            data = np.frombuffer(bytes(self._buf), dtype=np.uint8)
            self._buf = bytearray()
            starts, _used = _record_starts(data)
            if starts.size:
                self.blocks.append(_block_of(data, starts))

    def close(self) -> None:
        self.flush()

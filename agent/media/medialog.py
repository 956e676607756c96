"""The per-call media log: every released RTP payload of a call, appended to ONE file.

Owns the on-disk record format and its buffered writer / streaming reader. One file per
call (not per stream) keeps the open-file count independent of the stream count, and the
writer opens the file only to append a batch (~64 KiB), so no descriptor stays open
between batches and memory per call is bounded by the batch size, not the call length.

Record (little-endian): stream_index u16 | seq u16 | rtp_ts u32 | arrival_ns i64 | pt u8 |
flags u8 (bit0 = marker) | payload_len u16 | payload bytes.

Does not own ordering (``stream.py`` releases records in sequence order per stream) nor
decoding (``render.py``). A write failure (disk full, permissions) never raises to the
capture loop: the writer records ``failed``, cuts any partial batch off the file (a torn
record would desynchronise the reader), drops that batch and the audio that follows, and
tries again at every later batch, so recording resumes by itself when space returns. One
log line per failure and per recovery, never per packet.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Iterator

__all__ = ["MediaLogWriter", "NullMediaLog", "read_media_log", "RECORD_HEADER", "MediaRecord"]

RECORD_HEADER = struct.Struct("<HHIqBBH")  # 20 bytes
FLUSH_BYTES = 64 * 1024

log = logging.getLogger(__name__)

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

"""The per-call media log: every released RTP payload of a call, appended to ONE file.

Owns the on-disk record format and its buffered writer / streaming reader. One file per
call (not per stream) keeps the open-file count independent of the stream count, and the
writer opens the file only to append a batch (~64 KiB), so no descriptor stays open
between batches and memory per call is bounded by the batch size, not the call length.

Record (little-endian): stream_index u16 | seq u16 | rtp_ts u32 | arrival_ns i64 | pt u8 |
flags u8 (bit0 = marker) | payload_len u16 | payload bytes.

Does not own ordering (``stream.py`` releases records in sequence order per stream) nor
decoding (``render.py``). A write failure (disk full, permissions) never raises to the
capture loop: the writer records ``failed`` and drops further audio.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

__all__ = ["MediaLogWriter", "read_media_log", "RECORD_HEADER", "MediaRecord"]

RECORD_HEADER = struct.Struct("<HHIqBBH")  # 20 bytes
FLUSH_BYTES = 64 * 1024

# (stream_index, seq, rtp_ts, arrival_ns, pt, marker, payload)
MediaRecord = tuple[int, int, int, int, int, bool, bytes]


class MediaLogWriter:
    """Buffered appender of media records to one call's log file."""

    __slots__ = ("path", "flush_bytes", "bytes_written", "records", "dropped", "failed", "_buf")

    def __init__(self, path: Path | str, *, flush_bytes: int = FLUSH_BYTES) -> None:
        self.path = Path(path)
        self.flush_bytes = flush_bytes
        self.bytes_written = 0     # bytes that reached the file
        self.records = 0           # records accepted into the buffer
        self.dropped = 0           # records discarded because the log failed
        self.failed: str | None = None
        self._buf = bytearray()

    def append(self, stream_index: int, seq: int, rtp_ts: int, arrival_ns: int, pt: int,
               marker: bool, payload: bytes | memoryview) -> None:
        if self.failed is not None:
            self.dropped += 1
            return
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
        if len(buf) >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Append the buffered records to the file (open, write, close)."""
        if not self._buf or self.failed is not None:
            return
        try:
            with open(self.path, "ab") as fh:
                fh.write(self._buf)
        except OSError as exc:  # disk full, permission, vanished directory
            self.failed = f"{type(exc).__name__}: {exc}"
            self._buf = bytearray()
            return
        self.bytes_written += len(self._buf)
        self._buf = bytearray()

    def close(self) -> None:
        self.flush()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)


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

"""SIP-over-TCP framing (RFC 3261 18.3) and SIP-over-WebSocket unwrapping (RFC 7118).

Owns: ``SipStreamFramer``, which turns one direction of an in-order TCP byte
stream into complete SIP message byte strings, and recognises what the
stream carries (``kind``: 'sip', 'websocket', 'tls', 'unknown'). Does not own
TCP reassembly (``agent/net``) or message parsing (``message.py``); the
caller feeds bytes, parses what comes out, and copies ``skipped_bytes`` /
``resyncs`` into its counters.
"""

from __future__ import annotations

import re

from agent.sip.message import looks_like_sip

__all__ = ["SipStreamFramer", "DEFAULT_MAX_BUFFER_BYTES"]

DEFAULT_MAX_BUFFER_BYTES = 256 * 1024

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d{1,10})[ \t]*\r?$")
_WS_UPGRADE = re.compile(rb"(?im)^upgrade[ \t]*:[ \t]*websocket")
# A start line longer than this is not one; stop waiting for its end.
_MAX_LINE_BYTES = 8192
_HTTP_METHODS = (b"GET ", b"HTTP/")


class SipStreamFramer:
    """Cut complete SIP messages out of one direction of a TCP stream.

    ``feed`` returns the messages completed by the new bytes (possibly
    several, possibly none). Bytes that cannot be SIP are dropped and counted
    in ``skipped_bytes``; each time the framer throws bytes away to find the
    next start line it adds one to ``resyncs``. ``keepalives`` counts CRLF
    keep-alive bytes between messages. The buffer never exceeds ``max_buffer``.
    """

    __slots__ = (
        "max_buffer", "kind", "skipped_bytes", "resyncs", "keepalives",
        "messages", "_buf", "_ws_handshake_done", "_ws_fragments", "_in_junk",
    )

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER_BYTES) -> None:
        self.max_buffer = max_buffer
        self.kind: str | None = None  # None until the first bytes decide
        self.skipped_bytes = 0
        self.resyncs = 0
        self.keepalives = 0
        self.messages = 0
        self._buf = bytearray()
        self._ws_handshake_done = False
        self._ws_fragments = bytearray()
        self._in_junk = False

    # -- public -------------------------------------------------------------------
    def feed(self, data: bytes) -> list[bytes]:
        if data:
            self._buf += data
        if self.kind is None:
            self._detect_kind()
            if self.kind is None:
                return []
        if self.kind == "tls":
            # Encrypted SIP: nothing to read. Count it and keep no buffer.
            self.skipped_bytes += len(self._buf)
            self._buf.clear()
            return []
        if self.kind == "websocket":
            out = self._feed_websocket()
        else:
            out = self._feed_sip()
        self.messages += len(out)
        return out

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    # -- kind detection -------------------------------------------------------------
    def _detect_kind(self) -> None:
        buf = self._buf
        start = 0
        while start < len(buf) and buf[start] in (13, 10):
            start += 1
        if start == len(buf):
            return
        first = buf[start]
        if first == 0x16:
            if len(buf) - start < 2:
                return
            if buf[start + 1] == 0x03:
                self.kind = "tls"
                return
        if buf.startswith(_HTTP_METHODS[0], start) or buf.startswith(_HTTP_METHODS[1], start):
            head_end = _HEAD_END.search(buf, start)
            if head_end is None and len(buf) - start < _MAX_LINE_BYTES:
                return  # wait for the whole HTTP head
            head = bytes(buf[start : head_end.start() if head_end else len(buf)])
            self.kind = "websocket" if _WS_UPGRADE.search(head) else "unknown"
            return
        if _looks_like_ws_frame(buf, start):
            self.kind = "websocket"
            self._ws_handshake_done = True  # capture started after the upgrade
            return
        eol = buf.find(b"\n", start)
        if eol < 0 and len(buf) - start < _MAX_LINE_BYTES:
            return  # wait for the end of the first line
        line = bytes(buf[start : eol if eol >= 0 else len(buf)])
        self.kind = "sip" if looks_like_sip(line + b"\n") else "unknown"

    # -- plain SIP over TCP ------------------------------------------------------------
    def _feed_sip(self) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        while buf:
            # CRLF keep-alives (RFC 5626 double-CRLF ping and single CRLF pong).
            n = 0
            while n < len(buf) and buf[n] in (13, 10):
                n += 1
            if n:
                self.keepalives += n
                del buf[:n]
                if not buf:
                    break
            eol = buf.find(b"\n")
            if eol < 0:
                if len(buf) > _MAX_LINE_BYTES:
                    self._resync()
                    continue
                break
            if not looks_like_sip(bytes(buf[: eol + 1])):
                if not self._resync():
                    break
                continue
            self._in_junk = False
            head_end = _HEAD_END.search(buf)
            if head_end is None:
                if len(buf) >= self.max_buffer:
                    self._resync()
                    continue
                break
            match = _CONTENT_LENGTH.search(buf, 0, head_end.start() + 2)
            length = int(match.group(1)) if match else 0
            total = head_end.end() + length
            if total > self.max_buffer:
                # Larger than we are willing to hold: drop it and find the next message.
                self._resync()
                continue
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    def _resync(self) -> bool:
        """Drop the current line and everything up to the next SIP start line.

        Returns True when the buffer now starts at such a line, False when more
        bytes are needed to decide (an unfinished tail line is kept, bounded).
        """
        buf = self._buf
        if not self._in_junk:
            self._in_junk = True
            self.resyncs += 1
        eol = buf.find(b"\n")
        pos = eol + 1 if eol >= 0 else len(buf)
        while pos < len(buf):
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if len(buf) - pos > _MAX_LINE_BYTES:
                    pos = len(buf)
                break
            if looks_like_sip(bytes(buf[pos : eol + 1])):
                self.skipped_bytes += pos
                del buf[:pos]
                self._in_junk = False
                self.kind = "sip"
                return True
            pos = eol + 1
        self.skipped_bytes += pos
        del buf[:pos]
        return False

    # -- SIP over WebSocket ---------------------------------------------------------------
    def _feed_websocket(self) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        if not self._ws_handshake_done:
            start = 0
            while start < len(buf) and buf[start] in (13, 10):
                start += 1
            head_end = _HEAD_END.search(buf, start)
            if head_end is None:
                if len(buf) > self.max_buffer:
                    self.skipped_bytes += len(buf)
                    buf.clear()
                return out
            # The HTTP upgrade request or its 101 answer: not SIP, not counted as junk.
            del buf[: head_end.end()]
            self._ws_handshake_done = True
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = int.from_bytes(buf[2:10], "big")
                pos = 10
            if b0 & 0x70 or opcode in (3, 4, 5, 6, 7) or opcode > 0x0A:
                # Reserved bits/opcodes: we lost frame sync; nothing to resync on.
                self.skipped_bytes += len(buf)
                self.resyncs += 1
                buf.clear()
                break
            key = b""
            if masked:
                if len(buf) < pos + 4:
                    break
                key = bytes(buf[pos : pos + 4])
                pos += 4
            if length > self.max_buffer:
                self.skipped_bytes += len(buf)
                self.resyncs += 1
                buf.clear()
                break
            if len(buf) < pos + length:
                break
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            if key:
                payload = _unmask(payload, key)
            if opcode >= 8:
                continue  # control frames: close, ping, pong
            self._ws_fragments += payload
            if not b0 & 0x80:
                if len(self._ws_fragments) > self.max_buffer:
                    self.skipped_bytes += len(self._ws_fragments)
                    self._ws_fragments.clear()
                continue
            message = bytes(self._ws_fragments)
            self._ws_fragments.clear()
            if looks_like_sip(message):
                out.append(message)  # RFC 7118: one SIP message per WebSocket message
            else:
                self.skipped_bytes += len(message)
        return out


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def _looks_like_ws_frame(buf: bytearray, start: int) -> bool:
    """A text/binary WebSocket frame header: FIN + opcode 1/2, no reserved bits."""
    if len(buf) - start < 2:
        return False
    b0 = buf[start]
    return b0 in (0x81, 0x82, 0x01, 0x02)

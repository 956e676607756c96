"""SDP parsing (RFC 4566/8866) for what a recorder needs: where media goes and how it is coded.

Owns: ``parse_sdp`` and the frozen records ``SessionDescription``,
``MediaDescription``, ``RtpMap``, ``Origin``; the static payload-type table
(RFC 3551). Does not own offer/answer matching or the media map (the call
tracker). Tolerant of CRLF/LF, trailing spaces and unknown lines; hostile
numbers raise ``SdpParseError`` or are clamped, nothing else escapes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from agent.errors import SdpParseError
from agent.sip.crypto import CryptoAttribute, CryptoParseError, parse_crypto

__all__ = [
    "RtpMap",
    "Origin",
    "MediaDescription",
    "SessionDescription",
    "STATIC_PAYLOAD_TYPES",
    "parse_sdp",
]

# RFC 3551 table 4 (audio) and 5 (video). 1, 2, 19 are reserved/unassigned.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),  # 8000 by RFC 3551's historical error; the codec samples at 16 kHz
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("nv", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}

DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_MAX_LINES = 4096
_MAX_MEDIA = 64
_MAX_FORMATS = 128
_MAX_CLOCK_RATE_HZ = 1_000_000
_MAX_CHANNELS = 64
_MAX_PTIME_MS = 10_000
_MAX_CRYPTO = 32


@dataclass(slots=True, frozen=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate_hz: int
    channels: int = 1


@dataclass(slots=True, frozen=True)
class Origin:
    username: str
    session_id: str
    version: str
    addr: str


@dataclass(slots=True, frozen=True)
class MediaDescription:
    kind: str
    port: int  # 0 = stream disabled/rejected
    port_count: int
    proto: str
    formats: tuple[str, ...]
    payload_types: tuple[int, ...]
    connection_ip: str | None
    rtpmaps: dict[int, RtpMap] = field(default_factory=dict, hash=False)
    fmtp: dict[int, str] = field(default_factory=dict, hash=False)
    ptime_ms: int | None = None
    direction: str = "sendrecv"
    rtcp_mux: bool = False
    rtcp_port: int | None = None
    encrypted: bool = False
    crypto: tuple[CryptoAttribute, ...] = ()      # a=crypto lines (SDES keys: reprs are redacted)
    crypto_skipped: int = 0                       # a=crypto lines that could not be used as written
    fingerprint: bool = False                     # a=fingerprint here or at session level (DTLS)
    zrtp: bool = False                            # a=zrtp-hash here or at session level

    @property
    def is_hold(self) -> bool:
        return self.direction in ("sendonly", "inactive") or self.connection_ip in (
            "0.0.0.0",
            "::",
        )

    @property
    def disabled(self) -> bool:
        return self.port == 0


@dataclass(slots=True, frozen=True)
class SessionDescription:
    origin: Origin | None
    connection_ip: str | None
    media: tuple[MediaDescription, ...]
    direction: str = "sendrecv"

    @property
    def audio(self) -> list[MediaDescription]:
        return [m for m in self.media if m.kind == "audio"]


def _uint(text: str, what: str, max_digits: int = 10) -> int:
    text = text.strip()
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        raise SdpParseError(f"bad {what}: {text[:40]!r}")
    return int(text)


def _maybe_uint(text: str, max_digits: int = 10) -> int | None:
    text = text.strip()
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _parse_connection(value: str) -> str | None:
    """``IN IP4 1.2.3.4/127`` -> ``1.2.3.4``; IPv6 is normalised to its compressed form."""
    parts = value.split()
    if len(parts) < 3:
        return None
    addrtype = parts[1].upper()
    addr = parts[2]
    if addrtype == "IP4":
        addr = addr.split("/", 1)[0]
    elif addrtype == "IP6":
        addr = addr.split("/", 1)[0]
        try:
            addr = ipaddress.IPv6Address(addr).compressed
        except ValueError:
            pass  # an FQDN or junk: keep as written
    return addr or None


class _MediaBuilder:
    """Mutable scratch state for one m= section while its attribute lines are read."""

    __slots__ = (
        "kind", "port", "port_count", "proto", "formats", "payload_types",
        "connection_ip", "rtpmaps", "fmtp", "ptime_ms", "direction",
        "rtcp_mux", "rtcp_port", "crypto", "crypto_skipped", "fingerprint", "zrtp",
    )

    def __init__(self, value: str) -> None:
        parts = value.split()
        if len(parts) < 3:
            raise SdpParseError(f"bad m= line {value[:80]!r}")
        self.kind = parts[0].lower()
        port_text, slash, count_text = parts[1].partition("/")
        self.port = _uint(port_text, "media port", 5)
        if self.port > 65535:
            raise SdpParseError(f"media port out of range: {self.port}")
        count = _uint(count_text, "port count", 5) if slash else 1
        self.port_count = max(1, min(count, 65536 - self.port if self.port else 1))
        self.proto = parts[2]
        formats = parts[3 : 3 + _MAX_FORMATS]
        self.formats = tuple(formats)
        pts: list[int] = []
        for fmt in formats:
            pt = _maybe_uint(fmt, 3)
            if pt is not None and pt <= 127 and pt not in pts:
                pts.append(pt)
        self.payload_types = tuple(pts)
        self.connection_ip: str | None = None
        self.rtpmaps: dict[int, RtpMap] = {}
        self.fmtp: dict[int, str] = {}
        self.ptime_ms: int | None = None
        self.direction: str | None = None
        self.rtcp_mux = False
        self.rtcp_port: int | None = None
        self.crypto: list[CryptoAttribute] = []
        self.crypto_skipped = 0
        self.fingerprint = False
        self.zrtp = False

    def build(
        self, session_ip: str | None, session_dir: str, session_fp: bool, session_zrtp: bool
    ) -> MediaDescription:
        rtpmaps: dict[int, RtpMap] = {}
        for pt in self.payload_types:
            if pt in self.rtpmaps:
                rtpmaps[pt] = self.rtpmaps[pt]
            elif pt in STATIC_PAYLOAD_TYPES:
                enc, rate, ch = STATIC_PAYLOAD_TYPES[pt]
                rtpmaps[pt] = RtpMap(pt, enc, rate, ch)
        # rtpmap lines for PTs not in the format list are kept too (seen from broken UAs).
        for pt, rtpmap in self.rtpmaps.items():
            rtpmaps.setdefault(pt, rtpmap)
        proto_upper = self.proto.upper()
        encrypted = (
            "SAVP" in proto_upper
            or bool(self.crypto)
            or bool(self.crypto_skipped)
            or ((self.fingerprint or session_fp) and "TLS" in proto_upper)
            or self.zrtp
            or session_zrtp
        )
        return MediaDescription(
            kind=self.kind,
            port=self.port,
            port_count=self.port_count,
            proto=self.proto,
            formats=self.formats,
            payload_types=self.payload_types,
            connection_ip=self.connection_ip if self.connection_ip is not None else session_ip,
            rtpmaps=rtpmaps,
            fmtp=dict(self.fmtp),
            ptime_ms=self.ptime_ms,
            direction=self.direction or session_dir,
            rtcp_mux=self.rtcp_mux,
            rtcp_port=self.rtcp_port,
            encrypted=encrypted,
            crypto=tuple(self.crypto),
            crypto_skipped=self.crypto_skipped,
            fingerprint=self.fingerprint or session_fp,
            zrtp=self.zrtp or session_zrtp,
        )


@lru_cache(maxsize=1024)    # a few distinct lines in all (PCMU/8000...): one frozen RtpMap each
def _parse_rtpmap(value: str) -> RtpMap | None:
    pt_text, _, rest = value.partition(" ")
    pt = _maybe_uint(pt_text, 3)
    if pt is None or pt > 127:
        return None
    pieces = rest.strip().split("/")
    if len(pieces) < 2 or not pieces[0]:
        return None
    rate = _maybe_uint(pieces[1])
    if rate is None or rate == 0:
        return None
    channels = 1
    if len(pieces) >= 3:
        channels = _maybe_uint(pieces[2]) or 1
    return RtpMap(pt, pieces[0], min(rate, _MAX_CLOCK_RATE_HZ), max(1, min(channels, _MAX_CHANNELS)))


def _apply_attribute(attr: str, media: _MediaBuilder) -> None:
    name, _, value = attr.partition(":")
    name = name.strip().lower()
    value = value.strip()
    if name in DIRECTIONS:
        media.direction = name
    elif name == "rtpmap":
        rtpmap = _parse_rtpmap(value)
        if rtpmap is not None:
            media.rtpmaps.setdefault(rtpmap.payload_type, rtpmap)
    elif name == "fmtp":
        pt_text, _, params = value.partition(" ")
        pt = _maybe_uint(pt_text, 3)
        if pt is not None and pt <= 127:
            media.fmtp.setdefault(pt, params.strip())
    elif name == "ptime":
        whole = value.split(".", 1)[0]
        ptime = _maybe_uint(whole, 6)
        if ptime is not None and 0 < ptime <= _MAX_PTIME_MS:
            media.ptime_ms = ptime
    elif name == "rtcp-mux":
        media.rtcp_mux = True
    elif name == "rtcp":
        port = _maybe_uint(value.split(" ", 1)[0], 5)
        if port is not None and port <= 65535:
            media.rtcp_port = port
    elif name == "crypto":
        try:
            if len(media.crypto) >= _MAX_CRYPTO:
                raise CryptoParseError("too many a=crypto lines")
            media.crypto.append(parse_crypto(value))
        except CryptoParseError:
            media.crypto_skipped += 1      # counted by the tracker; the line is never logged (keys)
    elif name == "fingerprint":
        media.fingerprint = True
    elif name == "zrtp-hash":
        media.zrtp = True


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body. Port 0 m-lines are kept (they mark disabled streams)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        text = bytes(body).decode("utf-8", "replace")
    else:
        raise SdpParseError("SDP body must be bytes")
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:
        raise SdpParseError(f"more than {_MAX_LINES} SDP lines")
    origin: Origin | None = None
    session_ip: str | None = None
    session_dir = "sendrecv"
    session_fp = False
    session_zrtp = False
    seen_version = False
    builders: list[_MediaBuilder] = []
    current: _MediaBuilder | None = None
    for raw in lines:
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue  # blank or not an SDP line: tolerated
        kind, value = line[0], line[2:].strip()
        if kind == "v":
            seen_version = True
        elif kind == "m":
            if len(builders) >= _MAX_MEDIA:
                raise SdpParseError(f"more than {_MAX_MEDIA} m= lines")
            current = _MediaBuilder(value)
            builders.append(current)
        elif kind == "c":
            ip = _parse_connection(value)
            if current is None:
                session_ip = ip
            elif ip is not None:
                current.connection_ip = ip
        elif kind == "o" and current is None:
            parts = value.split()
            if len(parts) >= 6:
                origin = Origin(parts[0], parts[1], parts[2], parts[5])
        elif kind == "a":
            if current is not None:
                _apply_attribute(value, current)
            else:
                name = value.partition(":")[0].strip().lower()
                if name in DIRECTIONS:
                    session_dir = name
                elif name == "fingerprint":
                    session_fp = True
                elif name == "zrtp-hash":
                    session_zrtp = True
    if not seen_version and not builders:
        raise SdpParseError("not an SDP body (no v= and no m= line)")
    media = tuple(b.build(session_ip, session_dir, session_fp, session_zrtp) for b in builders)
    return SessionDescription(origin, session_ip, media, session_dir)

"""HEP v3 (Homer Encapsulation Protocol): one encapsulated packet in, at most one Datagram out.

Sans-IO. SIP servers and media relays (Kamailio ``siptrace``, OpenSIPS, FreeSWITCH, Asterisk
``res_hep``, rtpengine, heplify) send a copy of each SIP message or RTP packet as a HEP3
message: ``b"HEP3"``, a 16-bit total length, then chunks of ``vendor(16) type(16) length(16)``
(the length includes the 6-byte chunk header) and a value. Only vendor 0's generic chunks are
read; other vendors' chunks are skipped by their length, as the spec asks.

The addresses, ports and capture time come from the chunks, the payload from chunk 15 (or 16,
zlib/gzip-compressed). There are no MACs in HEP's generic chunks, so a datagram's MAC fields
stay empty. SIP (protocol type 1) and RTP (4) become datagrams; every other kind (RTCP as
JSON, logs, quality reports...) is counted and skipped.

Malformed input is counted under ``hep.skip.<reason>`` and dropped: nothing here raises on
bytes from the network. No logging: this is per packet.
"""

from __future__ import annotations

import hmac
import socket
import struct
import zlib
from dataclasses import dataclass

from agent.net.datagram import TCP, UDP, Datagram

MAGIC = b"HEP3"
HEADER_LEN = 6                  # magic + total length
CHUNK_HEADER_LEN = 6            # vendor + type + length
MAX_MESSAGE_LEN = 0xFFFF        # the total length is 16 bits
MAX_INFLATED_LEN = 256 * 1024   # a compressed payload may not inflate past this (zip bombs)

# Generic chunk types (vendor 0).
IP_FAMILY, IP_PROTO, IPV4_SRC, IPV4_DST, IPV6_SRC, IPV6_DST = 1, 2, 3, 4, 5, 6
SRC_PORT, DST_PORT, TS_SEC, TS_USEC, PROTO_TYPE, AGENT_ID = 7, 8, 9, 10, 11, 12
AUTH_KEY, PAYLOAD, PAYLOAD_COMPRESSED = 14, 15, 16

FAMILY_IPV4, FAMILY_IPV6 = 2, 10
PROTO_TYPE_SIP, PROTO_TYPE_RTP = 1, 4
_IP_PROTOS = {17: UDP, 6: TCP}

_CHUNK = struct.Struct("!HHH").unpack_from
_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
# Fixed-size chunks: type -> value length. A chunk of another size is malformed.
_FIXED_LEN = {IP_FAMILY: 1, IP_PROTO: 1, IPV4_SRC: 4, IPV4_DST: 4, IPV6_SRC: 16, IPV6_DST: 16,
              SRC_PORT: 2, DST_PORT: 2, TS_SEC: 4, TS_USEC: 4, PROTO_TYPE: 1, AGENT_ID: 4}


@dataclass(frozen=True, slots=True)
class HepPacket:
    """The generic chunks of one HEP3 message (None: the chunk was absent)."""
    ip_family: int | None = None
    ip_proto: int | None = None
    src_ip: bytes | None = None       # raw 4 or 16 bytes
    dst_ip: bytes | None = None
    src_port: int | None = None
    dst_port: int | None = None
    ts_sec: int | None = None
    ts_usec: int | None = None
    proto_type: int | None = None
    agent_id: int | None = None
    auth_key: bytes | None = None
    payload: bytes | None = None      # chunk 15, or chunk 16 inflated


def is_hep3(data: bytes) -> bool:
    return data[:4] == MAGIC


def parse_hep3(data: bytes, counters) -> HepPacket | None:
    """One whole HEP3 message (a UDP payload, or one message cut from a TCP stream)."""
    if len(data) < HEADER_LEN or data[:4] != MAGIC:
        counters["hep.skip.not_hep3"] += 1
        return None
    total = _U16(data, 4)[0]
    if total < HEADER_LEN or total > len(data):
        counters["hep.skip.bad_length"] += 1
        return None
    # The raw value of each generic chunk type (1..16) seen, decoded once at the end: one slice
    # and one store per chunk keeps this cheap (it runs for every packet of a HEP feed).
    raw: list[bytes | None] = [None] * 17
    off = HEADER_LEN
    while off < total:
        if total - off < CHUNK_HEADER_LEN:
            counters["hep.skip.truncated_chunk"] += 1
            return None
        vendor, ctype, clen = _CHUNK(data, off)
        end = off + clen
        if clen < CHUNK_HEADER_LEN or end > total:
            counters["hep.skip.bad_chunk_length"] += 1
            return None
        # vendor != 0: a vendor's own chunk, not ours to read; generic types above 16
        # (keep-alive, correlation id, VLAN, TCP flags...): not needed
        if vendor == 0 and ctype <= PAYLOAD_COMPRESSED:
            want = _FIXED_LEN.get(ctype)
            if want is not None and clen - CHUNK_HEADER_LEN != want:
                counters["hep.skip.bad_chunk_length"] += 1
                return None
            raw[ctype] = data[off + CHUNK_HEADER_LEN:end]
        off = end
    payload = raw[PAYLOAD]
    if raw[PAYLOAD_COMPRESSED] is not None:
        payload = _inflate(raw[PAYLOAD_COMPRESSED])
        if payload is None:
            counters["hep.skip.bad_compressed_payload"] += 1
            return None
    if total < len(data):
        counters["hep.trailing_bytes"] += 1       # padding after the message: ignored

    family, proto, sport, dport, sec, usec, ptype, agent = (
        raw[IP_FAMILY], raw[IP_PROTO], raw[SRC_PORT], raw[DST_PORT], raw[TS_SEC], raw[TS_USEC],
        raw[PROTO_TYPE], raw[AGENT_ID])
    return HepPacket(
        family[0] if family else None, proto[0] if proto else None,
        raw[IPV4_SRC] or raw[IPV6_SRC], raw[IPV4_DST] or raw[IPV6_DST],
        _U16(sport)[0] if sport else None, _U16(dport)[0] if dport else None,
        _U32(sec)[0] if sec else None, _U32(usec)[0] if usec else None,
        ptype[0] if ptype else None, _U32(agent)[0] if agent else None,
        raw[AUTH_KEY], payload)


def _inflate(value: bytes) -> bytes | None:
    """zlib or gzip (senders use both: wbits 47 detects the header), bounded in size."""
    d = zlib.decompressobj(wbits=47)
    try:
        out = d.decompress(value, MAX_INFLATED_LEN)
    except zlib.error:
        return None
    if d.unconsumed_tail or not d.eof:
        return None                                 # too big, or cut short
    return out


def auth_ok(packet: HepPacket, key: bytes) -> bool:
    """The packet carries exactly ``key`` in its auth-key chunk (constant-time compare).
    Some senders NUL-terminate the key: a trailing NUL is ignored."""
    got = packet.auth_key
    if got is None:
        return False
    return hmac.compare_digest(got.rstrip(b"\x00"), key)


def to_datagram(packet: HepPacket, counters, *, fallback_ts_ns: int) -> Datagram | None:
    """The datagram a SPAN port would have shown for ``packet``: SIP and RTP only.
    Capture time from the timestamp chunks; ``fallback_ts_ns`` (arrival) when they are absent."""
    if packet.proto_type not in (PROTO_TYPE_SIP, PROTO_TYPE_RTP):
        counters["hep.skip.not_sip_or_rtp"] += 1
        return None
    transport = _IP_PROTOS.get(packet.ip_proto)
    if transport is None:
        counters["hep.skip.not_udp_or_tcp"] += 1
        return None
    src, dst = packet.src_ip, packet.dst_ip
    size = 4 if packet.ip_family == FAMILY_IPV4 else 16 if packet.ip_family == FAMILY_IPV6 else 0
    if src is None or dst is None or len(src) != size or len(dst) != size:
        counters["hep.skip.no_addresses"] += 1
        return None
    if packet.src_port is None or packet.dst_port is None or not packet.payload:
        counters["hep.skip.no_ports_or_payload"] += 1
        return None
    if packet.ts_sec is None:
        ts_ns = fallback_ts_ns
        counters["hep.no_timestamp"] += 1
    else:
        ts_ns = packet.ts_sec * 1_000_000_000 + min(packet.ts_usec or 0, 999_999) * 1_000
    family = socket.AF_INET if size == 4 else socket.AF_INET6
    counters["hep.datagrams"] += 1
    return Datagram(ts_ns, socket.inet_ntop(family, src), packet.src_port,
                    socket.inet_ntop(family, dst), packet.dst_port, transport, packet.payload)


class HepUnwrapper:
    """HEP3 messages in (a listener's, or UDP payloads in a capture), datagrams out: parse,
    check the auth key when one is configured (a packet without it is dropped and counted),
    convert. Several senders' agent IDs need nothing special: each packet carries its own
    capture time, so they fold into one packet-time line like merged capture files."""

    def __init__(self, counters, auth_key: bytes = b"") -> None:
        self.counters = counters
        self.auth_key = auth_key

    def datagram(self, message: bytes, arrival_ts_ns: int) -> Datagram | None:
        c = self.counters
        c["hep.messages"] += 1
        packet = parse_hep3(message, c)
        if packet is None:
            return None
        if self.auth_key and not auth_ok(packet, self.auth_key):
            c["hep.skip.auth_failed"] += 1
            return None
        return to_datagram(packet, c, fallback_ts_ns=arrival_ts_ns)


class HepStreamSplitter:
    """HEP3 over TCP: bytes of one connection in, whole messages out. After bytes that are
    not HEP3 it skips to the next ``HEP3`` magic (counted), so one bad message does not
    cost the connection."""

    def __init__(self, counters) -> None:
        self.counters = counters
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= HEADER_LEN:
            if buf[:4] != MAGIC:
                nxt = buf.find(MAGIC, 1)
                # keep a tail that may be the start of a magic split across reads
                drop = nxt if nxt >= 0 else len(buf) - 3
                del buf[:drop]
                self.counters["hep.skip.stream_resync"] += 1
                continue
            total = _U16(buf, 4)[0]
            if total < HEADER_LEN:
                del buf[:4]
                self.counters["hep.skip.stream_resync"] += 1
                continue
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


def encode_hep3(*, src_ip: str, dst_ip: str, src_port: int, dst_port: int, ts_ns: int | None,
                payload: bytes, transport: str = UDP, proto_type: int = PROTO_TYPE_SIP,
                agent_id: int = 0, auth_key: bytes | None = None) -> bytes:
    """A HEP3 message as a sender builds it (tests, benches). ``ts_ns`` None: no timestamp
    chunks (the receiver uses the arrival time)."""
    v6 = ":" in src_ip
    family = socket.AF_INET6 if v6 else socket.AF_INET

    def chunk(ctype: int, value: bytes) -> bytes:
        return struct.pack("!HHH", 0, ctype, CHUNK_HEADER_LEN + len(value)) + value

    body = b"".join([
        chunk(IP_FAMILY, bytes([FAMILY_IPV6 if v6 else FAMILY_IPV4])),
        chunk(IP_PROTO, bytes([17 if transport == UDP else 6])),
        chunk(IPV6_SRC if v6 else IPV4_SRC, socket.inet_pton(family, src_ip)),
        chunk(IPV6_DST if v6 else IPV4_DST, socket.inet_pton(family, dst_ip)),
        chunk(SRC_PORT, struct.pack("!H", src_port)),
        chunk(DST_PORT, struct.pack("!H", dst_port)),
        chunk(TS_SEC, struct.pack("!I", ts_ns // 1_000_000_000)) if ts_ns is not None else b"",
        chunk(TS_USEC, struct.pack("!I", ts_ns % 1_000_000_000 // 1_000)) if ts_ns is not None else b"",
        chunk(PROTO_TYPE, bytes([proto_type])),
        chunk(AGENT_ID, struct.pack("!I", agent_id)),
        chunk(AUTH_KEY, auth_key) if auth_key is not None else b"",
        chunk(PAYLOAD, payload),
    ])
    return MAGIC + struct.pack("!H", HEADER_LEN + len(body)) + body

"""TCP stream reassembly: per flow (one direction of a 4-tuple), in-order bytes.

Owns: turning segments into newly contiguous stream bytes, each byte delivered
once: out-of-order segments are buffered (bounded per flow and in total; when a
bound is hit we stop waiting for the hole, count ``net.tcp.gap`` and resume at
the earliest buffered byte), retransmissions and overlaps are trimmed, a flow
picked up mid-stream starts at its first data segment, SYN/FIN/RST are honoured
and sequence numbers wrap modulo 2**32. Idle flows expire on packet time.
Does not own: framing messages inside the stream (SIP's Content-Length framing
is done by the SIP layer on top of these bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04

_MASK = 0xFFFFFFFF
_HALF = 0x80000000

FlowKey = tuple[bytes, int, bytes, int]


def _rel(a: int, b: int) -> int:
    """Signed distance a - b in 32-bit sequence space."""
    return ((a - b + _HALF) & _MASK) - _HALF


@dataclass(slots=True)
class _Flow:
    next_seq: int
    last_ts_ns: int
    isn: int = -1                        # SYN sequence number; -1 when picked up mid-stream
    ooo: dict[int, bytes] = field(default_factory=dict)   # seq -> segment ahead of next_seq
    ooo_bytes: int = 0
    fin: bool = False


class TcpReassembler:
    def __init__(self, counters, *, flow_max_bytes: int = 256 * 1024,
                 total_max_bytes: int = 64 * 1024 * 1024, max_flows: int = 65536,
                 idle_timeout_ns: int = 300_000_000_000) -> None:
        self.counters = counters
        self.flow_max_bytes = flow_max_bytes
        self.total_max_bytes = total_max_bytes
        self.max_flows = max_flows
        self.idle_timeout_ns = idle_timeout_ns
        self._flows: dict[FlowKey, _Flow] = {}
        self._ooo_total = 0

    def __len__(self) -> int:
        return len(self._flows)

    @property
    def buffered_bytes(self) -> int:
        return self._ooo_total

    def segment(self, ts_ns: int, key: FlowKey, seq: int, flags: int,
                payload: bytes) -> bytes | None:
        """Feed one segment; return the bytes that became contiguous, if any."""
        flows = self._flows
        f = flows.get(key)
        if flags & TCP_RST:
            if f is not None:
                self._drop(key)
                self.counters["net.tcp.rst"] += 1
            return None
        if flags & TCP_SYN:
            if f is None or f.isn != seq:
                if f is not None:
                    self._drop(key)   # port reuse: a new connection on the same 4-tuple
                f = self._new(key, (seq + 1) & _MASK, ts_ns)
                f.isn = seq
            seq = (seq + 1) & _MASK   # data on a SYN (TFO) starts after it
        elif f is None:
            if not payload:
                return None           # pure ACK/FIN of a flow we never saw data on
            f = self._new(key, seq, ts_ns)
            self.counters["net.tcp.midstream"] += 1
        f.last_ts_ns = ts_ns
        if flags & TCP_FIN:
            f.fin = True
        if not payload:
            return None
        parts: list[bytes] = []
        self._accept(f, seq, payload, parts)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _new(self, key: FlowKey, next_seq: int, ts_ns: int) -> _Flow:
        flows = self._flows
        while len(flows) >= self.max_flows:
            self._drop(next(iter(flows)))
            self.counters["net.tcp.evicted"] += 1
        f = flows[key] = _Flow(next_seq, ts_ns)
        return f

    def _accept(self, f: _Flow, seq: int, payload: bytes, parts: list[bytes]) -> None:
        rel = _rel(seq, f.next_seq)
        n = len(payload)
        if rel > 0:
            if f.ooo_bytes + n > self.flow_max_bytes or self._ooo_total + n > self.total_max_bytes:
                # Stop waiting for the hole: resume at the earliest data we hold.
                self.counters["net.tcp.gap"] += 1
                nxt = f.next_seq
                start = seq
                for s in f.ooo:
                    if _rel(s, nxt) < _rel(start, nxt):
                        start = s
                f.next_seq = start
                self._drain(f, parts)
                rel = _rel(seq, f.next_seq)
                if rel > 0:
                    self._store(f, seq, payload)
                    return
            else:
                self._store(f, seq, payload)
                return
        if -rel >= n:
            self.counters["net.tcp.retransmit"] += 1
            return
        data = payload[-rel:] if rel else payload
        parts.append(data)
        f.next_seq = (f.next_seq + len(data)) & _MASK
        if f.ooo:
            self._drain(f, parts)

    def _store(self, f: _Flow, seq: int, payload: bytes) -> None:
        old = f.ooo.get(seq)
        if old is not None:
            if len(old) >= len(payload):
                return
            f.ooo_bytes -= len(old)
            self._ooo_total -= len(old)
        f.ooo[seq] = payload
        f.ooo_bytes += len(payload)
        self._ooo_total += len(payload)
        self.counters["net.tcp.out_of_order"] += 1

    def _drain(self, f: _Flow, parts: list[bytes]) -> None:
        """Move buffered segments that are now reachable into ``parts``."""
        ooo = f.ooo
        progress = True
        while progress and ooo:
            progress = False
            for s in list(ooo):
                rel = _rel(s, f.next_seq)
                if rel > 0:
                    continue
                data = ooo.pop(s)
                f.ooo_bytes -= len(data)
                self._ooo_total -= len(data)
                if -rel < len(data):
                    tail = data[-rel:] if rel else data
                    parts.append(tail)
                    f.next_seq = (f.next_seq + len(tail)) & _MASK
                progress = True

    def _drop(self, key: FlowKey) -> None:
        f = self._flows.pop(key)
        self._ooo_total -= f.ooo_bytes

    def expire(self, now_ns: int) -> None:
        limit = now_ns - self.idle_timeout_ns
        stale = [k for k, f in self._flows.items() if f.last_ts_ns <= limit]
        for k in stale:
            self._drop(k)
        if stale:
            self.counters["net.tcp.expired"] += len(stale)

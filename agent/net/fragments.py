"""IP fragment reassembly for IPv4 and IPv6.

Owns: collecting fragments keyed by (src, dst, id, proto), in any order and with
overlaps (the earliest-offset copy of a byte wins), and handing back the whole
payload once every byte from 0 to the end (known from the last fragment) is
present. Memory is bounded by a maximum number of pending datagrams and of
pending bytes; the oldest pending datagram is evicted (``net.frag.evicted``).
Pending datagrams expire on packet time (``net.frag.expired``). Does not own:
header parsing; L4 parsing of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_IP_PAYLOAD = 65535 + 8   # largest reassembled payload we accept (IPv4 limit; v6 without jumbo)

FragKey = tuple[bytes, bytes, int, int]


@dataclass(slots=True)
class _Pending:
    first_ts_ns: int
    pieces: list[tuple[int, bytes]] = field(default_factory=list)
    total_len: int = -1      # known once the last fragment (MF=0) arrives
    nbytes: int = 0


class FragmentReassembler:
    def __init__(self, counters, *, max_pending: int = 1024,
                 max_bytes: int = 8 * 1024 * 1024, timeout_ns: int = 30_000_000_000) -> None:
        self.counters = counters
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.timeout_ns = timeout_ns
        self._pending: dict[FragKey, _Pending] = {}   # insertion order = age
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def add(self, ts_ns: int, key: FragKey, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add one fragment; return the reassembled payload when it completes."""
        counters = self.counters
        end = offset + len(data)
        if end > MAX_IP_PAYLOAD:
            counters["net.frag.oversize"] += 1
            return None
        if offset == 0 and not more:
            return data   # an "atomic" fragment (IPv6) is already whole
        counters["net.frag.fragments"] += 1
        p = self._pending.get(key)
        if p is None:
            while self._pending and (len(self._pending) >= self.max_pending
                                     or self._bytes + len(data) > self.max_bytes):
                self._drop(next(iter(self._pending)))
                counters["net.frag.evicted"] += 1
            p = self._pending[key] = _Pending(ts_ns)
        if not more:
            if p.total_len not in (-1, end):
                counters["net.frag.inconsistent"] += 1
            p.total_len = end
        p.pieces.append((offset, data))
        p.nbytes += len(data)
        self._bytes += len(data)
        if p.nbytes > 2 * MAX_IP_PAYLOAD:
            # Endless overlapping copies of one datagram: give up on it.
            self._drop(key)
            counters["net.frag.overflow"] += 1
            return None
        if p.total_len < 0:
            return None
        whole = self._assemble(p)
        if whole is not None:
            self._drop(key)
            counters["net.frag.reassembled"] += 1
        return whole

    @staticmethod
    def _assemble(p: _Pending) -> bytes | None:
        pieces = sorted(p.pieces, key=lambda x: x[0])
        covered = 0
        parts: list[bytes] = []
        total = p.total_len
        for off, data in pieces:
            if off > covered:
                return None   # a hole remains
            end = off + len(data)
            if end > covered:
                parts.append(data[covered - off:] if off < covered else data)
                covered = end
            if covered >= total:
                break
        if covered < total:
            return None
        whole = b"".join(parts)
        return whole[:total] if len(whole) > total else whole

    def _drop(self, key: FragKey) -> None:
        p = self._pending.pop(key)
        self._bytes -= p.nbytes

    def expire(self, now_ns: int) -> None:
        limit = now_ns - self.timeout_ns
        pending = self._pending
        while pending:
            key = next(iter(pending))
            if pending[key].first_ts_ns > limit:
                break
            self._drop(key)
            self.counters["net.frag.expired"] += 1

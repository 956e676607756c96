"""Duplicate-frame suppression for mirrored traffic.

Owns: recognising the same packet seen twice within a short window of packet
time (e.g. the phone port and the PBX port are both mirrored, so TTL, MACs and
VLAN may differ). The caller builds the key from what a copy keeps: src/dst IP,
IPv4 id (IPv6: flow label), L4 ports, the TCP sequence number, and a hash of
the L4 payload. The payload hash is always part of the key, so two distinct
packets (silent RTP frames differ in their RTP sequence number; IPv4 id 0 with
DF is common) are never taken for copies. The table is bounded and expires on
packet time. Does not own: building the key.
"""

from __future__ import annotations


class Deduplicator:
    """Two generations of seen keys, each covering ``window_ns`` of packet time.

    A key counts as a duplicate when it is in the current or the previous
    generation, so a copy is recognised if it follows within at least one
    window (and at most two). Rotating whole dicts is much cheaper per packet
    than expiring entries one by one; each generation is also capped at
    ``max_entries`` (an early rotation), which bounds memory.
    """

    __slots__ = ("window_ns", "max_entries", "_cur", "_prev", "_gen_start_ns")

    def __init__(self, *, window_ns: int = 50_000_000, max_entries: int = 200_000) -> None:
        self.window_ns = window_ns
        self.max_entries = max_entries
        self._cur: set[int] = set()
        self._prev: set[int] = set()
        self._gen_start_ns = -1

    def __len__(self) -> int:
        return len(self._cur) + len(self._prev)

    def is_duplicate(self, ts_ns: int, key: int) -> bool:
        """Record ``key`` and say whether it was seen within the window."""
        if ts_ns - self._gen_start_ns >= self.window_ns or len(self._cur) >= self.max_entries:
            if ts_ns - self._gen_start_ns >= 2 * self.window_ns:
                self._prev = set()    # a long silence: nothing recent is left
            else:
                self._prev = self._cur
            self._cur = set()
            self._gen_start_ns = ts_ns
        cur = self._cur
        if key in cur or key in self._prev:
            return True
        cur.add(key)
        return False

"""Duplicate-frame suppression for mirrored traffic.

Owns: recognising the same packet seen twice within a short window of packet
time (e.g. the phone port and the PBX port are both mirrored, so TTL, MACs and
VLAN may differ), and the key that identifies "the same packet". The key keeps
what a copy keeps: src/dst IP, IPv4 id (IPv6: flow label), L4 ports, the TCP
sequence number, and the L4 payload. Two distinct packets (silent RTP frames
differ in their RTP sequence number; IPv4 id 0 with DF is common) are never
taken for copies. Does not own: finding the fields in a frame.

Two kinds of key, chosen by the packet's content so every decoding path (the
per-packet path in ``agent.net.decode`` and the vectorised
batch path in ``agent.net.fastpath``) gives one packet the same key:

- IPv4 UDP whose payload looks like RTP: ``rtp_key`` over a 32-byte fingerprint
  (IP id, addresses, the UDP header incl. its checksum, the first 14 payload bytes:
  the RTP header with sequence number, timestamp and SSRC). A multiply-xor over four
  64-bit words, so numpy can compute it for a whole batch (``rtp_keys_of_words``).
- IPv6 UDP whose payload looks like RTP: ``rtp_key6``, the same over a 64-byte
  fingerprint (flow label, addresses, the same 22 UDP bytes), eight words
  (``rtp_keys6_of_rows`` for a batch).
- everything else: Python's ``hash`` of (id, addresses, L4 bytes).

Time is cut into generations of ``window_ns`` aligned to packet time (generation =
ts // window_ns, never running backwards); a key is a duplicate when the same key was
seen in the same or the previous generation, i.e. within one to two windows. The same
rule is applied to a whole batch at once by ``check_many``. Memory is what two windows
of traffic hold (at 100k packets/s and 50 ms: about 10,000 keys). The decoder keeps one
table for RTP keys and one for the rest (``FrameDecoder.dedup_rtp`` / ``dedup``), each with
its own generations, so the engine's batch path can take a window of RTP at once while the
signalling inside that window is handled frame by frame.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["Deduplicator", "rtp_key", "rtp_key6", "rtp_keys_of_words", "rtp_keys6_of_rows"]

_M64 = (1 << 64) - 1
# Odd multipliers (from the golden ratio and friends): different 64-bit words of a
# fingerprint land far apart, and a multiply by an odd number never maps two values to one.
_K = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_K_NP = tuple(np.uint64(k) for k in _K)
_K6 = _K + (0x94D049BB133111EB, 0xBF58476D1CE4E5B9, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)
_K6_NP = np.array(_K6, dtype=np.uint64)
_WORDS = struct.Struct("<QQQQ").unpack
_WORDS6 = struct.Struct("<8Q").unpack
FINGERPRINT_UDP_BYTES = 22          # UDP header (8) + the first 14 payload bytes


def rtp_key(ident: int, src4: bytes, dst4: bytes, udp: bytes) -> int:
    """The duplicate key of an IPv4 UDP packet carrying RTP (``udp``: UDP header + payload)."""
    head = udp[:FINGERPRINT_UDP_BYTES]
    if len(head) < FINGERPRINT_UDP_BYTES:
        head = bytes(head).ljust(FINGERPRINT_UDP_BYTES, b"\0")
    w0, w1, w2, w3 = _WORDS(ident.to_bytes(2, "big") + src4 + dst4 + head)
    k0, k1, k2, k3 = _K
    return ((w0 * k0) ^ (w1 * k1) ^ (w2 * k2) ^ (w3 * k3)) & _M64


def rtp_key6(flow: int, src16: bytes, dst16: bytes, udp: bytes) -> int:
    """The duplicate key of an IPv6 UDP packet carrying RTP: flow label (4 bytes), addresses,
    the first 22 UDP bytes (zero-padded), six zero bytes; eight words, eight multipliers."""
    head = bytes(udp[:FINGERPRINT_UDP_BYTES]).ljust(FINGERPRINT_UDP_BYTES, b"\0")
    words = _WORDS6((flow & 0xFFFFF).to_bytes(4, "big") + src16 + dst16 + head + bytes(6))
    key = 0
    for w, k in zip(words, _K6):
        key ^= (w * k) & _M64
    return key


def rtp_keys6_of_rows(ip6: np.ndarray, udp_len: np.ndarray) -> np.ndarray:
    """``rtp_key6`` of many packets from rows of their bytes starting at the IPv6 header
    (uint8, at least 40 + 22 columns) and their UDP lengths."""
    fp = np.zeros((len(ip6), 64), dtype=np.uint8)
    fp[:, 1] = ip6[:, 1] & 0x0F
    fp[:, 2:4] = ip6[:, 2:4]
    fp[:, 4:36] = ip6[:, 8:40]
    fp[:, 36:36 + FINGERPRINT_UDP_BYTES] = ip6[:, 40:40 + FINGERPRINT_UDP_BYTES]
    short = np.flatnonzero(udp_len < FINGERPRINT_UDP_BYTES)
    for i in short.tolist():                       # zero-padded after a short UDP payload
        fp[i, 36 + max(0, int(udp_len[i])):36 + FINGERPRINT_UDP_BYTES] = 0
    words = fp.view("<u8")
    with np.errstate(over="ignore"):
        products = words * _K6_NP
    return np.bitwise_xor.reduce(products, axis=1)


def rtp_keys_of_words(w0: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray) -> np.ndarray:
    """``rtp_key`` for many packets, from the four little-endian 64-bit words of their
    fingerprints (uint64 arrays; ``fastpath`` reads them straight out of the frames)."""
    k0, k1, k2, k3 = _K_NP
    with np.errstate(over="ignore"):
        return (w0 * k0) ^ (w1 * k1) ^ (w2 * k2) ^ (w3 * k3)


class Deduplicator:
    """Keys of the current and the previous generation of packet time."""

    __slots__ = ("window_ns", "_cur", "_prev", "_gen")

    def __init__(self, *, window_ns: int = 50_000_000) -> None:
        self.window_ns = window_ns
        self._cur: set[int] = set()
        self._prev: set[int] = set()
        self._gen = -1

    def __len__(self) -> int:
        return len(self._cur) + len(self._prev)

    def _advance(self, gen: int) -> None:
        self._prev = self._cur if gen == self._gen + 1 else set()
        self._cur = set()
        self._gen = gen

    def is_duplicate(self, ts_ns: int, key: int) -> bool:
        """Record ``key`` and say whether it was seen within the window."""
        gen = ts_ns // self.window_ns
        if gen > self._gen:
            self._advance(gen)
        cur = self._cur
        if key in cur:
            return True
        cur.add(key)
        return key in self._prev

    def check_many(self, ts_ns: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """``is_duplicate`` for a run of packets in arrival order, at once: returns the bool
        mask of duplicates and leaves the state as the packet-by-packet calls would. Keys
        become Python ints only where sets need them (the carried generations, and the run's
        last two generations that are carried on), not for the whole run."""
        n = len(keys)
        dup = np.zeros(n, dtype=bool)
        if not n:
            return dup
        gens = np.maximum.accumulate(ts_ns // self.window_ns)
        np.maximum(gens, self._gen, out=gens)
        first = None
        k_sorted = np.sort(keys)
        if bool(np.any(k_sorted[1:] == k_sorted[:-1])):
            # Repeats within the run: the nearest earlier packet with the same key (a stable
            # sort keeps arrival order among equals) is a duplicate's original when at most one
            # generation separates them; gens never decrease, so the nearest is also the latest.
            order = np.argsort(keys, kind="stable")
            k_sorted = keys[order]
            g_sorted = gens[order]
            same = k_sorted[1:] == k_sorted[:-1]
            dup[order[1:]] = same & (g_sorted[1:] - g_sorted[:-1] <= 1)
            first = np.ones(n, dtype=bool)
            first[order[1:]] = ~same
        old_gen = self._gen
        cur, prev = self._cur, self._prev
        if cur or prev:
            # A key's first packet in the run against the sets carried from before: only a
            # packet at most one generation after them can repeat one.
            reach = int(np.searchsorted(gens, old_gen + 2))
            near = keys[:reach].tolist()
            seen = cur.intersection(near) | prev.intersection(near)
            if seen:
                hit = np.isin(keys[:reach], np.array(list(seen), dtype=np.uint64))
                if first is not None:
                    hit &= first[:reach]
                idx = np.flatnonzero(hit)
                for j, k, g in zip(idx.tolist(), keys[idx].tolist(), gens[idx].tolist()):
                    if (k in cur and g - old_gen <= 1) or (k in prev and g == old_gen):
                        dup[j] = True
        # The sets after the run: the keys of its last two generations (plus the old sets
        # where those generations reach back before the run).
        last = int(gens[-1])
        if last == old_gen:
            cur.update(keys.tolist())
            return dup
        lo_cur = int(np.searchsorted(gens, last))
        lo_prev = int(np.searchsorted(gens, last - 1))
        new_cur = set(keys[lo_cur:].tolist())
        new_prev = set(keys[lo_prev:lo_cur].tolist())
        if old_gen == last - 1:
            new_prev |= cur
        self._cur, self._prev, self._gen = new_cur, new_prev, last
        return dup

"""SRTP decryption (SDES keys) with libsrtp, through pylibsrtp.

Owns ``SrtpDecryptor`` (packet -> plain RTP packet or None, with counters) and
``decrypt_raw_log`` (a call's raw media log -> a decrypted raw log, in the render worker,
before sequencing). The key schedule comes from ``calls/srtp_keys.py`` with the call's
``MediaPlan`` (in memory, through the worker pool's pipe: keys never touch the disk).

libsrtp keeps the rollover counter (ROC) per SSRC and estimates each packet's index from
the highest seen (RFC 3711 3.3.1), so packets are fed in arrival order, reordering within
the replay window is fine and a new SSRC starts a new stream (``SSRC_ANY_INBOUND``). What
it rejects is counted, never recorded:

- authentication failure: tried against the direction's other keys first (packets in
  flight around a re-key), then counted ``auth_failed``;
- replay (a copy of a packet already decrypted): when the copy is byte-identical to a
  recent packet, the recent plaintext is handed on, so the sequencer counts it as a
  duplicate exactly as for plain RTP; otherwise counted ``replayed``;
- older than the replay window: ``too_old``;
- a period without usable keys (DTLS or an unsupported suite after a re-INVITE): ``no_keys``.

libsrtp estimates a packet's index from the highest one seen, which is wrong by a rollover
when a stream is joined after 2^16 of its packets (a capture started mid-call, a re-key late
in a call) or loses more than 2^15 in a row; pylibsrtp cannot set the ROC. After a few
consecutive authentication failures of one SSRC the decryptor searches the ROC itself (a
session walked there with forged packets, which it can make: it holds the key) and counts
``resynced``; the failures before it stay counted.

SRTCP is not decrypted: the recorder does not use RTCP (plain RTCP is skipped as well).
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pylibsrtp

from agent.media.codecs import is_telephone_event
from agent.media.medialog import MediaLogWriter, read_media_log_blocks
from agent.media.runs import RunGroups
from agent.media.stream import CallMedia, _without_event_code
from agent.sip.crypto import SUITES, CryptoAttribute, KeyPeriod

__all__ = ["SrtpDecryptor", "SrtpCallMedia", "decrypt_raw_log", "observe_srtp", "COUNTER_NAMES"]

REPLAY_WINDOW_PACKETS = 1024     # libsrtp's replay window (default 128): reordering/copies up to this
_RECENT = 1024                   # recent plaintexts per direction, by seq (byte-identical copies)
_AEAD = ("AEAD_AES_128_GCM", "AEAD_AES_256_GCM")
COUNTER_NAMES = ("decrypted", "auth_failed", "replayed", "too_old", "no_keys", "plain", "other_key", "resynced")
RESYNC_AFTER = 4                 # consecutive authentication failures of one SSRC before its ROC is searched
RESYNC_ATTEMPTS = 3              # searches per SSRC and key (a wrong key fails them all, cheaply)
MAX_ROC = 31                     # the ROCs searched: 2^21 packets, 11.6 hours at 50 packets/s
_SIDES = ("caller", "callee")


def _session(crypto: CryptoAttribute, key: bytes, *, outbound: bool = False) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound
                              else pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=getattr(pylibsrtp.Policy, SUITES[crypto.suite].libsrtp_profile))
    policy.window_size = REPLAY_WINDOW_PACKETS
    return pylibsrtp.Session(policy)


def _session_at(crypto: CryptoAttribute, key: bytes, ssrc: bytes, roc: int, seq: int) -> pylibsrtp.Session:
    """A receiving session whose stream ``ssrc`` expects index (``roc``, ``seq``) next.

    pylibsrtp cannot set a ROC, so the session is walked there: packets forged with the
    same key (we hold it) at indexes less than 2^15 apart are protected and unprotected,
    the last one 2^14 below the target, outside the replay window of the packets to come."""
    rx = _session(crypto, key)
    last = (roc << 16 | seq) - 0x4000
    if roc == 0:
        return rx                                    # a new stream starts at ROC 0 anyway
    tx = _session(crypto, key, outbound=True)
    index = 0
    while index < last:
        index = min(index + 0x7000, last)
        rx.unprotect(tx.protect(b"\x80\x00" + (index & 0xFFFF).to_bytes(2, "big") + bytes(4) + ssrc + b"\x00"))
    return rx


class SrtpDecryptor:
    """Unprotects the packets of one call, per sending side, with the key periods given.

    ``periods`` is per side (0 caller, 1 callee) a sequence of ``KeyPeriod`` in time order;
    it may grow while packets are fed (``inspect`` decrypts as the capture goes)."""

    __slots__ = ("_periods", "_starts", "_sessions", "_recent", "_fast", "_decrypted", "_counts", "_streaks")

    def __init__(self, periods: Sequence[Sequence[KeyPeriod]]) -> None:
        self._periods = periods
        self._starts: list[list[int]] = [[], []]
        # One libsrtp session per (side, period, MKI, SSRC): a ROC search replaces one stream's.
        self._sessions: dict[tuple[int, int, int | None, bytes], pylibsrtp.Session] = {}
        self._streaks: dict[tuple[int, int, int | None, bytes], tuple[int, int, int]] = {}
        self._recent: list[list[tuple[bytes, bytes] | None]] = [[None] * _RECENT, [None] * _RECENT]
        # Per side, the period and stream most packets fall in:
        # (from_ns, until_ns, periods known, SSRC bytes, session).
        self._fast: list[tuple[int, float, int, bytes, pylibsrtp.Session] | None] = [None, None]
        self._decrypted = [0, 0]
        self._counts = {name: [0, 0] for name in COUNTER_NAMES}

    @property
    def counts(self) -> dict[str, list[int]]:
        """Per counter name, [caller, callee] (``decrypted`` is kept apart on the fast path)."""
        self._counts["decrypted"] = list(self._decrypted)
        return self._counts

    def __repr__(self) -> str:
        return f"SrtpDecryptor(counts={self.counts})"

    def unprotect(self, side: int, arrival_ns: int, packet: bytes) -> bytes | None:
        """The plain RTP packet (header kept, trailer removed), or None when it must be dropped."""
        fast = self._fast[side]
        if (fast is not None and fast[0] <= arrival_ns < fast[1] and fast[3] == packet[8:12]
                and fast[2] == len(self._periods[side])):
            try:
                plain = fast[4].unprotect(packet)
            except pylibsrtp.Error:
                return self._unprotect(side, arrival_ns, packet)
            self._recent[side][(packet[2] << 8 | packet[3]) % _RECENT] = (packet, plain)
            self._decrypted[side] += 1
            return plain
        return self._unprotect(side, arrival_ns, packet)

    def _unprotect(self, side: int, arrival_ns: int, packet: bytes) -> bytes | None:
        periods = self._periods[side]
        if not periods:
            self._counts["plain"][side] += 1     # nothing negotiated yet: taken as it is
            return packet
        starts = self._starts[side]
        if len(starts) != len(periods):
            starts[:] = [p.from_ts_ns for p in periods]
        i = max(bisect_right(starts, arrival_ns) - 1, 0)     # before the first answer: its keys
        period = periods[i]
        if period.crypto is None:
            self._counts["plain" if period.plain else "no_keys"][side] += 1
            return packet if period.plain else None
        try:
            plain = self._try(side, i, period.crypto, packet)
        except pylibsrtp.Error as exc:
            plain = self._rejected(side, i, packet, str(exc))
            if plain is None:
                return None
        else:
            self._recent[side][(packet[2] << 8 | packet[3]) % _RECENT] = (packet, plain)
            if not period.crypto.mki_bytes:          # the next packets of this period skip the search
                until = starts[i + 1] if i + 1 < len(starts) else float("inf")
                self._fast[side] = (starts[i] if i else -1 << 63, until, len(periods), packet[8:12],
                                         self._sessions[(side, i, None, packet[8:12])])
        self._decrypted[side] += 1
        return plain

    def _try(self, side: int, i: int, crypto: CryptoAttribute, packet: bytes) -> bytes:
        mki = None
        if crypto.mki_bytes:
            packet, mki = _strip_mki(crypto, packet)
        key = (side, i, mki, packet[8:12])
        session = self._sessions.get(key)
        if session is None:
            secret = next((k.key_salt for k in crypto.keys if k.mki == mki), None)
            if secret is None:
                raise pylibsrtp.Error("authentication failure")    # an MKI no key carries
            session = self._sessions[key] = _session(crypto, secret.value)
        return session.unprotect(packet)

    def _rejected(self, side: int, i: int, packet: bytes, why: str) -> bytes | None:
        if why.startswith("replay check failed (bad index)"):
            recent = self._recent[side][(packet[2] << 8 | packet[3]) % _RECENT]
            if recent is not None and recent[0] == packet:
                return recent[1]                     # a copy: the sequencer counts the duplicate
            self._counts["replayed"][side] += 1
            return None
        periods = self._periods[side]
        if why.startswith("replay check failed (index too old)"):
            # A wrong rollover guess after a long gap looks "too old" to libsrtp: a streak of
            # these searches the ROC as failures do.
            return self._resync_or_count(side, i, packet, "too_old")
        # Authentication failed: the other keys of this direction, nearest in time first.
        for j in sorted(range(len(periods)), key=lambda j: abs(j - i)):
            if j != i and periods[j].crypto is not None:
                try:
                    plain = self._try(side, j, periods[j].crypto, packet)
                except pylibsrtp.Error:
                    continue
                self._counts["other_key"][side] += 1
                return plain
        return self._resync_or_count(side, i, packet, "auth_failed")

    def _resync_or_count(self, side: int, i: int, packet: bytes, failure: str) -> bytes | None:
        """The packet decrypted after a rollover search, else None with ``failure`` counted."""
        plain = self._resync(side, i, self._periods[side][i].crypto, packet)
        self._counts["resynced" if plain is not None else failure][side] += 1
        return plain

    def _resync(self, side: int, i: int, crypto: CryptoAttribute, packet: bytes) -> bytes | None:
        """After RESYNC_AFTER consecutive failures of one SSRC, look for the ROC libsrtp's
        index estimate missed: a capture that began after 2^16 packets of a stream (a long
        call joined mid-way, a re-key later in a call), or more than 2^15 packets of it lost.
        Each ROC up to MAX_ROC gets a session walked there; the one that authenticates this
        packet replaces the stream's session. The failed packets before it stay counted."""
        if len(packet) < 12:
            return None
        mki = None
        if crypto.mki_bytes:
            packet, mki = _strip_mki(crypto, packet)
        key = (side, i, mki, packet[8:12])
        count, attempts, mark = self._streaks.get(key, (0, 0, -1))
        decrypted = self._decrypted[side]
        count = count + 1 if mark == decrypted else 1        # consecutive: nothing decrypted since
        secret = next((k.key_salt for k in crypto.keys if k.mki == mki), None)
        if count < RESYNC_AFTER or attempts >= RESYNC_ATTEMPTS or secret is None:
            self._streaks[key] = (count, attempts, decrypted)
            return None
        seq = packet[2] << 8 | packet[3]
        for roc in range(MAX_ROC + 1):
            session = _session_at(crypto, secret.value, packet[8:12], roc, seq)
            try:
                plain = session.unprotect(packet)
            except pylibsrtp.Error:
                continue
            self._sessions[key] = session
            self._streaks.pop(key, None)
            self._fast[side] = None
            return plain
        self._streaks[key] = (0, attempts + 1, decrypted)
        return None

    def facts(self) -> dict[str, dict[str, int]]:
        counts = self.counts
        return {name: {side: counts[name][d] for d, side in enumerate(_SIDES)} for name in COUNTER_NAMES}


def _strip_mki(crypto: CryptoAttribute, packet: bytes) -> tuple[bytes, int | None]:
    """The packet without its MKI (libsrtp is given one key per session) and the MKI value.
    RFC 3711: the MKI sits before the authentication tag; RFC 7714 (GCM): after the AEAD tag."""
    size, tag = crypto.mki_bytes, SUITES[crypto.suite].tag_bytes
    if len(packet) < 12 + size + tag:
        return packet, None
    if crypto.suite in _AEAD:
        return packet[:-size], int.from_bytes(packet[-size:], "big")
    at = len(packet) - tag - size
    return packet[:at] + packet[at + size:], int.from_bytes(packet[at:at + size], "big")


def decrypt_raw_log(raw_path: Path, out_path: Path, plan) -> tuple[Any, dict[str, dict[str, int]]]:
    """Decrypt a call's raw media log (records of whole packets in arrival order) into
    ``out_path``: dropped packets leave the log, so the plan's source labels (by record number)
    and captured counts are renumbered. Returns (the plan to sequence with, the counters).
    With ``plan.redact_dtmf`` the event codes are zeroed here, after decryption (the capture
    process could not: it saw only ciphertext)."""
    decryptor = SrtpDecryptor(plan.srtp)
    unprotect = decryptor.unprotect
    events = [set(), set()]
    if plan.redact_dtmf:
        for d in (0, 1):
            events[d] = {pt for pt, info in plan.codecs.get(d, {}).items() if is_telephone_event(info.encoding)}
    writer = MediaLogWriter(out_path)
    kept_parts: list[np.ndarray] = []
    for block in read_media_log_blocks(raw_path):
        raw = block.data.tobytes()
        out = bytearray(raw)
        sizes = block.payload_len.tolist()
        keep = [False] * len(sizes)
        for i, (d, arrival_ns, at, size) in enumerate(zip((block.stream & 1).tolist(), block.arrival_ns.tolist(),
                                                          block.payload_at.tolist(), sizes)):
            plain = unprotect(d, arrival_ns, raw[at:at + size])
            if plain is None:
                continue
            if events[d] and plain[1] & 0x7F in events[d]:
                plain = _without_event_code(plain)
            out[at:at + len(plain)] = plain          # never longer than the packet: the trailer went
            sizes[i] = len(plain)
            keep[i] = True
        keep = np.array(keep, dtype=bool)
        idx = np.flatnonzero(keep)
        zeros = np.zeros(len(idx), dtype=np.int64)
        writer.append_records(block.stream[idx].astype(np.int64), zeros, zeros, block.arrival_ns[idx], zeros, zeros,
                              bytes(out), block.payload_at[idx], np.array(sizes, dtype=np.int64)[idx])
        kept_parts.append(keep)
    writer.close()
    kept = np.concatenate(kept_parts) if kept_parts else np.zeros(0, dtype=bool)
    before = np.concatenate(([0], np.cumsum(kept)))             # kept records before record no
    labels = [(int(before[min(no, len(kept))]), d, src, dst) for no, d, src, dst in plan.labels]
    facts = decryptor.facts()
    dropped = [decryptor.counts[name][d] for name in ("auth_failed", "replayed", "too_old", "no_keys")
               for d in (0, 1)]
    captured = tuple(max(0, plan.captured_packets[d] - sum(dropped[k] for k in range(d, len(dropped), 2)))
                     for d in (0, 1))
    return dataclasses.replace(plan, labels=labels, captured_packets=captured), facts


class SrtpCallMedia(CallMedia):
    """``inspect``'s CallMedia (sequenced as packets arrive, no worker) for a call that offered
    SDES keys: each packet is decrypted before it is sequenced, so RFC 4733 digits and the
    stream counters are those of the plaintext, as in a recording. ``periods`` is the call's
    live schedule (``SrtpNegotiation.periods``); until it holds keys, packets pass as they are
    (DTLS, an unsupported suite: the counters are those of the wire, as the worker leaves them)."""

    def __init__(self, *args, periods, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.decryptor = SrtpDecryptor(periods)
        self._periods = periods

    def on_rtp(self, side: int, arrival_ns: int, src: str, dst: str, data: bytes) -> bool:
        if any(p.crypto is not None for side in self._periods for p in side):
            data = self.decryptor.unprotect(side, arrival_ns, bytes(data))
            if data is None:
                return True              # SRTP, but dropped (counted by the decryptor)
        return super().on_rtp(side, arrival_ns, src, dst, data)

    def take_groups(self, groups: RunGroups, g0: int, g1: int, later: list) -> int:
        return groups.run.each(self.on_rtp, groups.positions(g0, g1))


def observe_srtp(record: dict, counters) -> None:
    """Count a finished call's SRTP outcome into the metrics counters (``media.srtp.*``)."""
    srtp = record.get("srtp")
    if not isinstance(srtp, dict):
        return
    for name in COUNTER_NAMES:
        per_side = srtp.get(name)
        if isinstance(per_side, dict):
            total = sum(v for v in per_side.values() if isinstance(v, int))
            if total:
                counters[f"media.srtp.{name}"] += total
    if srtp.get("no_audio"):
        counters[f"media.srtp.calls_{srtp['no_audio']}"] += 1

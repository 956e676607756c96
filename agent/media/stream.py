"""Media of one call before it is sequenced: the capture-side raw log, and sequencing it
once the call has ended.

Two stages, so the capture loop does as little as possible per packet:

1. ``MediaCapture`` (capture process, per packet): checks the packet is RTP and appends it,
   whole, with its arrival time and direction, to the call's raw log. Nothing else.
2. ``sequence_capture`` (when the call has ended, in a worker process for recordings, inline
   for ``inspect``): replays the raw log through ``sequencer.CallMedia`` with the call's final
   codec map (``MediaPlan``), which writes the ordered media log that ``render.py`` reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from agent.byterows import byte_rows
from agent.media.codecs import is_telephone_event
from agent.media.medialog import MediaBlock, MediaLogMemory, MediaLogWriter, encode_records, read_media_log_blocks
from agent.media.quality import QualityCollector
from agent.media.rtp import count_not_rtp, looks_like_rtp
from agent.media.runs import RtpRun, RunGroups
from agent.media.sequencer import CallMedia

__all__ = ["MediaCapture", "MediaPlan", "sequence_capture", "WHOLE_CALL_BYTES"]

# sequence_capture reads a raw log up to this size whole, to sequence the call at once
# (~13 minutes of a two-way G.711 call; the worker then holds about four times this).
WHOLE_CALL_BYTES = 16 << 20


@dataclass(slots=True)
class MediaPlan:
    """What the sequencer needs to finish a call's media later, possibly in another process."""
    codecs: dict[int, dict]              # direction -> {pt: CodecInfo}, the call's final SDP view
    labels: list[tuple[int, int, str, str]] = field(default_factory=list)  # (record no, direction, src, dst)
    redact_dtmf: bool = False
    zrtp_seen: bool = False
    captured_packets: tuple[int, int] = (0, 0)   # per direction, as counted at capture time
    log_failures: int = 0                        # the raw log could not be written (disk full)
    # SDES-SRTP key periods per sending side (media/srtp.py decrypts before sequencing);
    # None: no a=crypto seen. Travels to the worker in memory, never written to disk.
    srtp: tuple | None = field(default=None, repr=False)


class MediaCapture:
    """Capture-side media of one call: appends each RTP packet, whole, to the raw log.

    Per packet: a version/RTCP check, an identity check of the source label, one append.
    ZRTP is noted (the media is about to be encrypted) and not logged. With ``redact_dtmf``
    the event code of telephone-event packets is zeroed before the log, so no digit ever
    reaches the disk while press times and durations (needed for masking) survive.
    """

    __slots__ = ("log", "labels", "_last_src", "first_arrival_ns", "last_arrival_ns", "not_rtp", "packets",
                 "rtcp", "zrtp_packets", "zrtp_seen", "redact_dtmf", "_is_event", "_codecs", "counters",
                 "write_audio", "_srtp_offered")

    def __init__(self, log_path: Path, *, codecs_for_side: Callable[[int], dict] | None = None,
                 redact_dtmf: bool = False, counters: Counter | None = None,
                 write_audio: bool = True, srtp_offered: Callable[[], bool] | None = None) -> None:
        self.log = MediaLogWriter(log_path)
        self.write_audio = write_audio     # False: disk below the floor, count packets only
        self.labels: list[tuple[int, int, str, str]] = []
        self._last_src: list[str | None] = [None, None]
        self.packets = [0, 0]     # RTP packets captured per direction (kept even if the disk is full)
        self.first_arrival_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.not_rtp = 0
        self.rtcp = 0
        self.zrtp_packets = 0
        self.zrtp_seen = False
        self.redact_dtmf = redact_dtmf
        self._is_event: dict[int, bool] = {}
        self._codecs = codecs_for_side
        self.counters = counters
        # SRTP keys were offered: event payloads are ciphertext (zeroing a byte would fail
        # authentication); the worker redacts after decrypting (media/srtp.py).
        self._srtp_offered = srtp_offered

    def on_rtp(self, side: int, arrival_ns: int, src: str, dst: str, data: bytes) -> bool:
        """Take one UDP payload of the call's media. False when it is not RTP."""
        if not looks_like_rtp(data):
            return count_not_rtp(self, data)  # the engine counts rtp.skip.not_rtp
        if src is not self._last_src[side] and src != self._last_src[side]:
            self._last_src[side] = src
            self.labels.append((self.log.records, side, src, dst))
        if self.redact_dtmf and self._event_pt(side, data[1] & 0x7F):
            data = _without_event_code(data)
        if self.first_arrival_ns is None:
            self.first_arrival_ns = arrival_ns
        self.last_arrival_ns = arrival_ns
        self.packets[side] += 1
        if self.write_audio:
            self.log.append(side, 0, 0, arrival_ns, 0, False, data)
        return True

    def take_groups(self, groups: RunGroups, g0: int, g1: int, later: list) -> int:
        """``on_rtp`` for this call's packets of a batch (groups ``g0:g1``, all RTP-looking).
        When each direction keeps its source label and nothing needs redacting, the call is
        planned into ``later`` and its records are appended with every other such call's of
        the batch (``accept_later``); else it goes packet by packet now. Returns how many
        were not RTP."""
        run = groups.run
        for g in range(g0, g1):
            side = groups.side[g]
            if (not groups.one_src[g] or run.label(groups.src_key[g]) != self._last_src[side]
                    or (self.redact_dtmf and (not groups.one_pt[g] or self._event_pt(side, groups.pt[g])))):
                return run.each(self.on_rtp, groups.positions(g0, g1))
        for g in range(g0, g1):
            self.packets[groups.side[g]] += groups.end[g] - groups.start[g]
        later.append((self, g0, g1))
        return 0

    @staticmethod
    def accept_later(groups: RunGroups, later: list) -> None:
        """Append the records of every call ``take_groups`` planned, in each call's arrival
        order: encoded for all of them at once (``encode_records``), then each call's share
        of the bytes appended to its log. A call's groups are consecutive in the run, so its
        packets are one range of it, sorted back into arrival order here."""
        run = groups.run
        lo = np.array([groups.start[g0] for _media, g0, _g1 in later], dtype=np.int64)
        hi = np.array([groups.end[g1 - 1] for _media, _g0, g1 in later], dtype=np.int64)
        counts = hi - lo
        bounds = np.zeros(len(later) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        positions = np.arange(int(bounds[-1]), dtype=np.int64) + np.repeat(lo - bounds[:-1], counts)
        # Arrival order inside each call (run.order is the batch position: unique, so the
        # combined key sorts calls apart and each call's packets by arrival).
        rank = np.repeat(np.arange(len(later), dtype=np.int64), counts)
        positions = positions[np.argsort(rank * (int(run.order.max()) + 1) + run.order[positions], kind="stable")]
        zeros = np.zeros(len(positions), dtype=np.int64)
        arrival = run.arrival_ns[positions]
        data, ends = encode_records(run.side[positions], zeros, zeros, arrival, zeros, zeros, run.buf,
                                    run.data_start[positions], run.size[positions])
        byte_at = np.zeros(len(ends) + 1, dtype=np.int64)
        byte_at[1:] = ends
        byte_at = byte_at[bounds].tolist()
        first = arrival[bounds[:-1]].tolist()
        last = arrival[bounds[1:] - 1].tolist()
        for k, ((media, _g0, _g1), records) in enumerate(zip(later, counts.tolist())):
            if media.first_arrival_ns is None:
                media.first_arrival_ns = first[k]
            media.last_arrival_ns = last[k]
            if media.write_audio:
                media.log.append_encoded(data[byte_at[k]:byte_at[k + 1]], records)

    def _event_pt(self, side: int, pt: int) -> bool:
        if self._srtp_offered is not None and self._srtp_offered():
            return False
        key = side << 8 | pt
        known = self._is_event.get(key)
        if known is None:
            codecs = self._codecs(side) if self._codecs is not None else {}
            info = codecs.get(pt)
            known = self._is_event[key] = info is not None and is_telephone_event(info.encoding)
        return known

    @property
    def log_path(self) -> Path:
        return self.log.path

    def close(self) -> None:
        self.log.close()
        if self.counters is not None and self.log.failures:
            self.counters["media.log.failures"] += self.log.failures
            self.counters["media.log.dropped_packets"] += self.log.dropped + self.log.lost_at_failure

    def plan(self, codecs: dict[int, dict]) -> MediaPlan:
        return MediaPlan(codecs=codecs, labels=list(self.labels), redact_dtmf=self.redact_dtmf,
                         zrtp_seen=self.zrtp_seen, captured_packets=tuple(self.packets),
                         log_failures=self.log.failures or (0 if self.write_audio else 1))


def _without_event_code(data: bytes) -> bytes:
    """The packet with the RFC 4733 event code (first payload byte) zeroed."""
    start = 12 + ((data[0] & 0x0F) << 2)
    if data[0] & 0x10 and start + 4 <= len(data):
        start += 4 + (int.from_bytes(data[start + 2:start + 4], "big") << 2)
    if start >= len(data):
        return data
    return data[:start] + b"\0" + data[start + 1:]


def sequence_capture(raw_path: Path, ordered_path: Path, plan: MediaPlan, *,
                     counters: Counter | None = None, bulk: bool = True,
                     in_memory: bool = False) -> CallMedia:
    """Run the raw log of a call through ``CallMedia``: reorder, stats, RFC 4733 events, and
    the ordered media log at ``ordered_path``. Returns the closed ``CallMedia``.
    ``in_memory``: a call whose raw log fits ``WHOLE_CALL_BYTES`` keeps its ordered log in
    memory (``CallMedia.ordered_media``: blocks for a render in this process, nothing written
    and read back); a longer call still goes to ``ordered_path`` (bounded memory).

    A log up to ``WHOLE_CALL_BYTES`` is read as one block and, when the call qualifies,
    sequenced stream by stream at once (``CallMedia.take_whole``); otherwise the log is read
    in blocks of records as arrays and fed with ``CallMedia.feed_run`` (``bulk`` False:
    packet by packet, the reference the tests compare both with)."""
    codecs = plan.codecs

    def clock_rate_for_pt(side: int, pt: int) -> int:
        info = codecs.get(side, {}).get(pt)
        return info.clock_rate_hz if info is not None and info.clock_rate_hz else 8000

    try:
        size = raw_path.stat().st_size
    except FileNotFoundError:
        size = 0
    keep = MediaLogMemory() if in_memory and size <= WHOLE_CALL_BYTES else ordered_path
    media = CallMedia(keep, clock_rate_for_pt=clock_rate_for_pt,
                      codecs_for_side=lambda side: codecs.get(side, {}),
                      redact_dtmf=plan.redact_dtmf, counters=counters)
    # The source/destination labels as small integer keys: RtpRun's label() gives the text back.
    names = [""]
    ids: dict[str, int] = {"": 0}
    events: list[list[tuple[int, int, int]]] = [[], []]      # per direction: (record no, src, dst)
    for number, side, src, dst in plan.labels:
        for text in (src, dst):
            if text not in ids:
                ids[text] = len(names)
                names.append(text)
        events[side & 1].append((number, ids[src], ids[dst]))
    tables = [(np.array([e[0] for e in ev], dtype=np.int64), np.array([0] + [e[1] for e in ev], dtype=np.int64),
               np.array([0] + [e[2] for e in ev], dtype=np.int64)) for ev in events]
    done = 0
    quality = QualityCollector()
    # A call whose raw log fits WHOLE_CALL_BYTES is read as one block and, when it qualifies,
    # sequenced at once (CallMedia.take_whole); longer calls go block by block (bounded memory).
    chunk = size + 1 if bulk and size <= WHOLE_CALL_BYTES else 1 << 20
    for block in read_media_log_blocks(raw_path, chunk_bytes=chunk):
        n = len(block)
        side = (block.stream & 1).astype(np.int64)
        numbers = done + np.arange(n, dtype=np.int64)
        src = np.zeros(n, dtype=np.int64)
        dst = np.zeros(n, dtype=np.int64)
        for d, (at, src_ids, dst_ids) in enumerate(tables):
            mine = side == d
            k = np.searchsorted(at, numbers[mine], side="right")     # 0: before any label
            src[mine] = src_ids[k]
            dst[mine] = dst_ids[k]
        run = _raw_run(block, side, src, dst, names.__getitem__)
        # Voice quality from the header columns decoded here (the packet path taps each packet).
        media.quality = quality if run is None or not bulk else None
        if run is not None and bulk:
            quality.add_run(run)
        if run is None or not bulk:
            _each_record(media, block, side, src, dst, names)
        elif not (chunk > size and media.take_whole(run)):
            media.feed_run(run)
        done += n
    media.close()
    media.quality = quality
    if plan.zrtp_seen:
        media.zrtp_seen = True
    return media


def _raw_run(block: MediaBlock, side: np.ndarray, src: np.ndarray, dst: np.ndarray,
             label: Callable[[int], str]) -> RtpRun | None:
    """A block of raw-log records (whole RTP packets) as an RtpRun; None if any is too short."""
    n = len(block)
    if not n or int(block.payload_len.min()) < 12 or len(block.data) < 12:
        return None
    header = byte_rows(block.data, block.payload_at, 12)
    words = header.view(">u4")
    return RtpRun(order=np.arange(n, dtype=np.int64), side=side, arrival_ns=block.arrival_ns,
                  src_key=src, dst_key=dst, b0=header[:, 0].copy(), b1=header[:, 1].copy(),
                  seq=header.view(">u2")[:, 1].astype(np.int64), rtp_ts=words[:, 1].astype(np.int64),
                  ssrc=words[:, 2].astype(np.int64), size=block.payload_len.astype(np.int64),
                  buf=block.data.tobytes(), data_start=block.payload_at.astype(np.int64),
                  dst_known=np.ones(n, dtype=bool), label=label)


def _each_record(media: CallMedia, block: MediaBlock, side: np.ndarray, src: np.ndarray,
                 dst: np.ndarray, names: list[str]) -> None:
    data = block.data
    for i, (d, arrival, s, t, at, size) in enumerate(zip(
            side.tolist(), block.arrival_ns.tolist(), src.tolist(), dst.tolist(),
            block.payload_at.tolist(), block.payload_len.tolist())):
        media.on_rtp(d, arrival, names[s], names[t], data[at:at + size].tobytes())

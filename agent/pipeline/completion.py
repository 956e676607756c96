"""Completing a call record from its media: per-stream counters, RFC 4733 key presses,
encryption, and the stream specs the renderer needs.

Runs in the capture process for ``inspect`` (media sequenced as it arrived) and in the
recorder's worker processes for recordings (the raw media log sequenced there). It sits in
the pipeline, not in ``media/``, because it joins media results with the call record's
DTMF rules (``calls/record.py``): ``media/`` and ``calls/`` do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.calls.call import CALLEE, CALLER, Call, Side
from agent.calls.record import CallRecord, merge_dtmf_presses, presses_from_events
from agent.media.codecs import is_telephone_event
from agent.media.medialog import MediaBlock
from agent.media.srtp import decrypt_raw_log
from agent.media.quality import StreamQuality, side_quality, mos_estimate
from agent.media.sequencer import CallMedia
from agent.media.stream import MediaPlan, sequence_capture
from agent.media.stream_state import StreamStats
from agent.media.timeline import STATIC_PAYLOAD_TYPES, CodecInfo, StreamSpec


def complete_media(record: CallRecord, raw_log: Path, plan: MediaPlan, ordered_log: Path, *,
                   redact: bool, in_memory: bool = False, keep_raw: bool = False
                   ) -> tuple[CallRecord, list[StreamSpec], Path | list[MediaBlock]]:
    """Sequence a call's raw media log (see ``sequence_capture``) into ``ordered_log`` (or,
    ``in_memory``, into blocks kept in memory when the call is not long): returns the record
    completed with per-stream counters and RFC 4733 key presses, the stream specs and the
    ordered media (path or blocks) ``render_recording`` needs. The raw log is deleted, unless
    ``keep_raw`` (the recorder deletes it once the recording is written). SRTP (``plan.srtp``)
    is decrypted first, into a plain raw log beside it (``media/srtp.py``), deleted here."""
    plain_log = None
    if plan.srtp is not None:
        plain_log = raw_log.with_suffix(".plain")
        try:
            plan, srtp_facts = decrypt_raw_log(raw_log, plain_log, plan)
        finally:
            if not keep_raw:
                raw_log.unlink(missing_ok=True)
        record = {**record, "srtp": {**(record.get("srtp") or {}), **srtp_facts}}
    try:
        media = sequence_capture(plain_log or raw_log, ordered_log, plan, in_memory=in_memory)
    finally:
        if plain_log is not None:
            plain_log.unlink(missing_ok=True)
    if not keep_raw:
        raw_log.unlink(missing_ok=True)
    record, specs = media_record(record, media, plan.codecs, redact=redact)
    record["streams"] = unrecorded_streams(plan, record["streams"])
    return record, specs, media.ordered_media


def media_record(record: CallRecord, media: CallMedia, codecs: dict[int, dict], *,
                 redact: bool) -> tuple[CallRecord, list[StreamSpec]]:
    """The record completed from a sequenced call's media: per-stream counters, RFC 4733 key
    presses, encryption; and the stream specs ``render_recording`` needs."""
    streams, specs = [], []
    quality = _stream_quality(media, codecs)
    by_side: dict[int, list[tuple[StreamQuality, str]]] = {CALLER: [], CALLEE: []}
    for info in media.streams:
        stats = info.stats
        streams.append({
            "index": info.index, "direction": info.side, "ssrc": stats.ssrc,
            "packets": stats.packets, "lost": stats.lost, "duplicated": stats.duplicated,
            "reordered": stats.reordered, "late": stats.late,
            "jitter_ms": round(stats.jitter_ms, 3), "src": stats.src, "dst": stats.dst,
            "payload_types": {str(k): v for k, v in stats.payload_types.items()},
        })
        q = quality.get((info.side, stats.ssrc))
        if q is not None:
            encoding = _audio_encoding(stats, codecs.get(info.side, {}))
            streams[-1]["quality"] = dict(q.as_record(), codec=encoding,
                                          mos=[m.as_record() for m in mos_estimate(q, encoding).values()])
            by_side[info.side & 1].append((q, encoding))
        specs.append(StreamSpec(index=info.index, side=info.side,
                                codecs=codecs.get(info.side, {})))
    presses = presses_from_events(media.dtmf_events, int(record.get("start_ts_ns") or 0))
    record = merge_dtmf_presses({**record, "streams": streams}, presses, redact=redact)
    sides = {name: side_quality(by_side[d]) for name, d in (("caller", CALLER), ("callee", CALLEE))}
    if any(sides.values()):
        record["quality"] = sides
    if media.zrtp_seen:
        record["encrypted"] = True
    return record, specs


def _codec_info(codecs: dict[int, CodecInfo], pt: int) -> CodecInfo | None:
    return codecs.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)


def _stream_quality(media: CallMedia, codecs: dict[int, dict]) -> dict:
    """Per (direction, ssrc) quality from the header columns the sequencer kept."""
    if media.quality is None:
        return {}

    def clock(side: int, pt: int) -> int:
        # No clock (no jitter step) for events and for dynamic types the SDP does not name,
        # as Wireshark's analysis does.
        info = _codec_info(codecs.get(side, {}), pt)
        return 0 if info is None or is_telephone_event(info.encoding) else info.clock_rate_hz
    return media.quality.streams(clock)


def _audio_encoding(stats: StreamStats, codecs: dict[int, CodecInfo]) -> str:
    """The encoding of the stream's most used audio payload type ("" if none is known)."""
    best, count = "", -1
    for pt, n in stats.payload_types.items():
        info = _codec_info(codecs, pt)
        if info is not None and not is_telephone_event(info.encoding) and info.encoding.upper() != "CN" and n > count:
            best, count = info.encoding, n
    return best


def unrecorded_streams(plan: MediaPlan, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``streams`` plus, per direction, the packets seen on the wire but never written (disk
    full or below the floor): they stay on record, marked ``unrecorded``."""
    if not plan.log_failures:
        return streams
    out = list(streams)
    for side in (CALLER, CALLEE):
        logged = sum(st["packets"] + st["duplicated"] + st["late"] for st in streams
                     if st["direction"] == side)
        missing = plan.captured_packets[side] - logged
        if missing > 0:
            out.append({"index": -1, "direction": side, "ssrc": None, "packets": missing,
                        "lost": 0, "duplicated": 0, "reordered": 0, "late": 0, "jitter_ms": 0.0,
                        "src": "", "dst": "", "payload_types": {}, "unrecorded": True})
    return out


def codecs_for_side(call: Call, side: Side) -> dict[int, CodecInfo]:
    """PT map for media sent by side ``direction``: the receiver's rtpmap first (it defined
    what it wants to receive), the sender's as fallback (phones differ, many break RFC 3264)."""
    sender = call.parties[side]
    receiver = call.parties[CALLEE if side == CALLER else CALLER]
    codecs: dict[int, CodecInfo] = {}
    for party in (sender, receiver):          # receiver last: it wins
        for pt, rtpmap in party.rtpmaps.items():
            codecs[pt] = CodecInfo(encoding=rtpmap.encoding, clock_rate_hz=rtpmap.clock_rate_hz,
                                   channels=rtpmap.channels, fmtp=party.fmtp.get(pt))
    return codecs


def clock_rate(call: Call, side: Side, pt: int) -> int:
    info = codecs_for_side(call, side).get(pt)
    return info.clock_rate_hz if info is not None and info.clock_rate_hz else 8000

"""Render one finished call's ordered media into a recording (WAV/MP3, mono mix or stereo).

Owns the post-call pipeline that runs in a worker process: read the call's ordered media
once (the media log's blocks, in memory when the worker sequenced the call itself, else
read from the file), place every packet on the call timeline (``timeline.StreamTimeline``),
decode it (``codecs.make_decoder``, one decoder per stream and payload type), bring each
contiguous run of audio to the working rate (the call's native rate: the highest rate of its
codecs, so only a lower-rate stream in a call with a wideband one is resampled) and write it
at its offset into one int16 buffer per direction (``placement``, ``side_pcm``); then
read the two chunk by chunk, mix (mono: clipped sum; stereo: caller left = direction 0,
callee right = direction 1), resample the mix once when the output rate differs, and stream
the result into the encoder.

Work is done in batches, not per packet: each stream's records of a block are placed with
array arithmetic (``StreamTimeline.place_many``), G.711 payloads are expanded with one
table lookup per block, and a stretch of packets that continue a run back to back is one
array slice (``placement.place_audio``); only a packet after a gap or jump, and stateful
codecs (PyAV), go one by one. The result is the same as packet by packet (the tests compare
both): the direction writes of a block are replayed in record order (``WriteQueue``), so
overlapping streams of one direction overwrite each other as before.
Memory is bounded whatever the call length: one block of records and its decoded audio,
each direction's PCM up to 16 MiB (then on disk), 30 s chunks for the DTMF scan, 5 s steps
for the mix, and the encoder's buffer.

Resampling is ``resample.Resampler`` (libsoxr): a proper windowed-sinc low-pass, so
wideband audio taken down to 8 kHz does not alias and narrowband audio taken up to 16 kHz
has no images, and it is stateful, so audio fed in pieces has no seams.

In-band DTMF: before mixing, the direction buffers can be scanned for in-band DTMF tones
(``inband_dtmf_sides``: the recorder asks only for directions that carried no RFC 4733
or SIP INFO presses, so a key is never counted twice), and spans can be silenced in both
directions (``mask_spans_ns``: key presses signalled out of band; ``mask_inband``: the
tones found). Found tones come back in ``RenderResult.dtmf``.

Does not own sequencing (``sequencer.py``), codecs (``codecs.py``) or the file format
(``encoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.byterows import byte_rows
from agent.media.codecs import (Decoder, G711Decoder, is_comfort_noise, is_telephone_event,
                                make_decoder)
from agent.media.dtmf import InbandDtmfDetector
from agent.media.g711 import expand
from agent.media.side_pcm import SidePcm, WriteQueue
from agent.media.encoder import open_encoder
from agent.media.medialog import MediaBlock, read_media_log_blocks
from agent.media.placement import StreamRuns, add_audio, close_run, place_audio
from agent.media.resample import Resampler
from agent.media.timeline import STATIC_PAYLOAD_TYPES, CodecInfo, StreamSpec, StreamTimeline

__all__ = ["RenderResult", "render_recording", "streams_in_use", "CodecInfo", "StreamSpec"]

_NS = 1_000_000_000
_MARGIN_NS = 2 * _NS            # room before the first packet for early-placed audio
_CN_PT = 13
DTMF_MASK_GUARD_MS = 40         # silence this much either side of a key press / tone
_SCAN_CHUNK_S = 30              # direction audio read per step by the DTMF scan

# What a payload type of a stream is, decided once per (stream, pt).
_KIND_UNKNOWN = 0       # no codec for the pt: counted undecodable ("pt<N>"), not placed
_KIND_EVENT = 1         # RFC 4733 events: never placed (they repeat their start timestamp)
_KIND_CN = 2            # comfort noise: placed (moves the clock), no audio
_KIND_AUDIO = 3         # decodable audio
_KIND_NODEC = 4         # a codec we cannot decode: placed, counted undecodable


@dataclass(slots=True)
class RenderResult:
    path: Path | None               # None when the call had no decodable audio
    fmt: str
    sample_rate_hz: int
    channels: int
    duration_ms: int
    audio_packets: int              # packets decoded into audio
    undecodable: list[str] = field(default_factory=list)   # encodings / "pt<N>" not decoded
    per_side_ms: list[int] = field(default_factory=lambda: [0, 0])
    first_audio_offset_ms: list[int | None] = field(default_factory=lambda: [None, None])
    reanchors: int = 0              # timeline re-anchorings (clock drift, timestamp jumps)
    # in-band DTMF found: dicts digit, direction, ts_ns (packet time), duration_ms, source
    dtmf: list[dict] = field(default_factory=list)
    masked_ms: int = 0              # audio silenced by DTMF masking (both directions)




class _StreamRender(StreamRuns):
    __slots__ = ("spec", "timeline", "decoders", "kinds", "kind_of_pt")

    def __init__(self, spec: StreamSpec, dirfile: SidePcm) -> None:
        super().__init__(dirfile)
        self.spec = spec
        self.timeline: StreamTimeline | None = None
        self.decoders: dict[int, Decoder | None] = {}
        # pt -> (kind, codec); kind_of_pt: the same as a lookup table by pt (-1: not yet)
        self.kinds: dict[int, tuple[int, CodecInfo | None]] = {}
        self.kind_of_pt = np.full(256, -1, dtype=np.int8)

    def kind(self, pt: int) -> tuple[int, CodecInfo | None]:
        known = self.kinds.get(pt)
        if known is not None:
            return known
        codec = _codec_for(self.spec, pt)
        if codec is None:
            kind = _KIND_UNKNOWN
        elif is_telephone_event(codec.encoding):
            kind = _KIND_EVENT
        elif pt == _CN_PT or is_comfort_noise(codec.encoding):
            kind = _KIND_CN
        else:
            dec = self.decoders[pt] = make_decoder(codec.encoding, codec.clock_rate_hz,
                                                   codec.channels, codec.fmtp)
            kind = _KIND_NODEC if dec is None else _KIND_AUDIO
        self.kinds[pt] = (kind, codec)
        self.kind_of_pt[pt] = kind
        return kind, codec


def _codec_for(spec: StreamSpec, pt: int) -> CodecInfo | None:
    codec = spec.codecs.get(pt)
    if codec is None and pt < 35:
        codec = STATIC_PAYLOAD_TYPES.get(pt)
    return codec




@dataclass(slots=True)
class _RowsStats:
    audio_packets: int = 0
    max_rate: int = 0
    end_ns: int = 0             # furthest placed packet, relative to the render base


def _count_native_s(df: SidePcm, sizes: np.ndarray, rates: np.ndarray | int) -> None:
    # Added one packet at a time, left to right, as floats: cumsum keeps that order, so
    # the total (and per_side_ms) is the same as summing packet by packet.
    parts = np.empty(sizes.size + 1, dtype=np.float64)
    parts[0] = df.audio_native_s
    parts[1:] = sizes / rates
    df.audio_native_s = float(np.cumsum(parts)[-1])


def _render_stream_rows(sr: _StreamRender, block: MediaBlock, rows: np.ndarray, base_ns: int,
                        work_rate: int, undecodable: set[str], queue: WriteQueue) -> _RowsStats:
    """Place, decode and add to the runs one stream's records of a block (file order)."""
    stats = _RowsStats()
    pts = block.pt[rows]
    for pt in np.unique(pts).tolist():
        kind, codec = sr.kind(pt)
        if kind == _KIND_UNKNOWN:
            undecodable.add(f"pt{pt}")
    kinds = sr.kind_of_pt[pts]
    placed = (kinds == _KIND_CN) | (kinds == _KIND_AUDIO) | (kinds == _KIND_NODEC)
    if sr.timeline is None:
        # The stream's clock comes from its first audio packet: CN before it is dropped.
        clocked = np.flatnonzero((kinds == _KIND_AUDIO) | (kinds == _KIND_NODEC))
        if clocked.size == 0:
            return stats
        first = int(clocked[0])
        placed[:first] = False
        _kind, codec = sr.kind(int(pts[first]))
        sr.timeline = StreamTimeline(codec.clock_rate_hz)
    if not placed.any():
        return stats
    prow = rows[placed]
    pos_ns = sr.timeline.place_many(block.ts[prow], block.arrival_ns[prow]) - base_ns
    stats.end_ns = int(pos_ns.max())
    pkinds = kinds[placed]
    if (pkinds == _KIND_NODEC).any():
        for pt in np.unique(block.pt[prow[pkinds == _KIND_NODEC]]).tolist():
            undecodable.add(sr.kind(pt)[1].encoding)
    audio = pkinds == _KIND_AUDIO
    if not audio.any():
        return stats
    arow = prow[audio]
    apos = pos_ns[audio]
    apts = block.pt[arow]
    decoders = [sr.decoders[pt] for pt in np.unique(apts).tolist()]
    if all(type(d) is G711Decoder for d in decoders):
        _render_g711(sr, block, arow, apos, apts, work_rate, stats, queue)
    else:
        _render_packets(sr, block, arow, apos, apts, work_rate, stats, queue)
    return stats


def _render_g711(sr: _StreamRender, block: MediaBlock, arow: np.ndarray, apos: np.ndarray,
                 apts: np.ndarray, work_rate: int, stats: _RowsStats, queue: WriteQueue) -> None:
    """All of the rows are G.711: expand every payload with one table lookup."""
    lens = block.payload_len[arow]
    keep = lens > 0                       # an empty payload decodes to nothing: no audio
    if not keep.all():
        arow, apos, apts, lens = arow[keep], apos[keep], apts[keep], lens[keep]
    if arow.size == 0:
        return
    starts = block.payload_at[arow]
    if (lens == lens[0]).all():
        # Equal payloads (the usual 160 bytes): copy whole rows out of a sliding view.
        width = int(lens[0])
        codes = byte_rows(block.data, starts, width).reshape(-1)
    else:
        total = int(lens.sum())
        at = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
        codes = block.data[at]
    uniq = np.unique(apts).tolist()
    if len(uniq) == 1:
        flat = expand(sr.decoders[uniq[0]].table, codes)
    else:
        # PCMU and PCMA in one stretch: one lookup in both tables side by side.
        both = np.concatenate([sr.decoders[pt].table for pt in uniq])
        which = np.searchsorted(np.array(uniq), apts) * 256
        flat = both[codes + np.repeat(which, lens)]
    place_audio(sr, queue, arow, apos, lens, flat, 8000, work_rate)
    _count_native_s(sr.dirfile, lens, 8000)
    stats.audio_packets += int(arow.size)
    stats.max_rate = 8000


def _render_packets(sr: _StreamRender, block: MediaBlock, arow: np.ndarray, apos: np.ndarray,
                    apts: np.ndarray, work_rate: int, stats: _RowsStats,
                    queue: WriteQueue) -> None:
    """Stateful or variable codecs: decode and place packet by packet, in order."""
    data = block.data
    at = block.payload_at[arow].tolist()
    lens = block.payload_len[arow].tolist()
    df = sr.dirfile
    for row, pos_ns, pt, a, n in zip(arow.tolist(), apos.tolist(), apts.tolist(), at, lens):
        queue.row = row
        dec = sr.decoders[pt]
        pcm = dec.decode(data[a:a + n].tobytes())
        if pcm.size == 0:
            continue  # rejected frame: a gap, the next packet is placed by timestamp
        rate = dec.sample_rate_hz
        if rate > stats.max_rate:
            stats.max_rate = rate
        add_audio(sr, pos_ns, pcm, rate, work_rate)
        df.audio_native_s += pcm.size / rate
        stats.audio_packets += 1


def streams_in_use(streams: list[StreamSpec], stream_records: list[dict]) -> list[StreamSpec]:
    """``streams`` with each codec map narrowed to the payload types the stream carried (the
    record's ``streams[].payload_types``), so the call's native rate is that of the codecs it
    used, not of every codec its SDP offered. A stream the records do not list keeps its map."""
    carried = {rec.get("index"): {int(pt) for pt in (rec.get("payload_types") or {})} for rec in stream_records}
    out = []
    for spec in streams:
        pts = carried.get(spec.index)
        if pts is None:
            out.append(spec)
        else:
            out.append(StreamSpec(spec.index, spec.side, {pt: c for pt, c in spec.codecs.items() if pt in pts}))
    return out


def _work_rate(streams: list[StreamSpec]) -> int:
    """The highest native rate any audio codec of the call decodes to (8000 if none)."""
    best = 0
    for spec in streams:
        for codec in spec.codecs.values():
            if is_comfort_noise(codec.encoding) or is_telephone_event(codec.encoding):
                continue
            dec = make_decoder(codec.encoding, codec.clock_rate_hz, codec.channels, codec.fmtp)
            if dec is not None and dec.sample_rate_hz > best:
                best = dec.sample_rate_hz
    return best or 8000


def render_recording(media: Path | list[MediaBlock], streams: list[StreamSpec], out_path: Path, *,
                     fmt: str = "mp3", channels: int = 1, sample_rate_hz: int = 16000,
                     bitrate_kbps: int = 32, mp3_quality: int = 7, start_ns: int | None = None,
                     inband_dtmf_sides: tuple[int, ...] = (),
                     mask_spans_ns: list[tuple[int, int]] | tuple = (),
                     mask_inband: bool = False) -> RenderResult:
    """Decode, place, mix and encode one call's ordered media (the media log's path, or its
    blocks kept in memory: ``CallMedia.ordered_media``). See the module docstring.

    Each direction is built at the call's native rate (the highest rate of the codecs in
    ``streams``: 8 kHz for narrowband, 16 kHz with G.722); only the mix is resampled, once,
    to ``sample_rate_hz`` when that differs. ``sample_rate_hz=0`` keeps the highest native
    rate of the decoders the call actually used. t=0 is ``start_ns`` if given, else the first audio packet of the call.
    With no decodable audio nothing is written and ``path`` is None.
    ``mask_spans_ns`` are (start_ns, end_ns) in packet time, silenced with a guard of
    ``DTMF_MASK_GUARD_MS`` either side.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    out_path = Path(out_path)
    # Each direction is built at the call's native rate; the mix alone is resampled, once,
    # when the output rate differs (an anti-alias filter, ``resample``).
    work_rate = _work_rate(streams)
    specs = {s.index: s for s in streams}
    queue = WriteQueue()
    dirfiles = [SidePcm(out_path.with_name(f"{out_path.name}.d{d}.pcm"), work_rate, queue)
                for d in (0, 1)]
    states: dict[int, _StreamRender] = {}
    undecodable: set[str] = set()
    audio_packets = 0
    used_max_rate = 0
    reanchors = 0
    base_ns: int | None = None
    end_ns = 0  # furthest placed packet (any kind), relative to base

    try:
        for block in (read_media_log_blocks(media) if isinstance(media, (str, Path)) else media):
            if base_ns is None:
                first_arrival_ns = int(block.arrival_ns[0])
                first = first_arrival_ns if start_ns is None else min(start_ns, first_arrival_ns)
                base_ns = first - _MARGIN_NS
                if not isinstance(media, (str, Path)):
                    # The whole call is at hand: size the direction buffers once.
                    last_ns = max(int(b.arrival_ns.max()) for b in media)
                    for df in dirfiles:
                        df.capacity = (last_ns - base_ns) * work_rate // _NS + work_rate
            # Streams in order of first appearance: ``states`` keeps that order, and the
            # runs still open at the end are closed (their last audio written) in it.
            idxs, firsts = np.unique(block.stream, return_index=True)
            for idx in idxs[np.argsort(firsts)].tolist():
                sr = states.get(idx)
                if sr is None:
                    spec = specs.get(idx)
                    if spec is None or spec.side not in (0, 1):
                        continue  # a stream the engine chose not to record
                    sr = states[idx] = _StreamRender(spec, dirfiles[spec.side])
                rows = np.flatnonzero(block.stream == idx)
                stats = _render_stream_rows(sr, block, rows, base_ns, work_rate, undecodable,
                                            queue)
                audio_packets += stats.audio_packets
                used_max_rate = max(used_max_rate, stats.max_rate)
                end_ns = max(end_ns, stats.end_ns)
            queue.flush()
        for df in dirfiles:
            df.queue = None         # the closing writes below come in the order they are made
        for sr in states.values():
            close_run(sr)
            if sr.timeline is not None:
                reanchors += sr.timeline.reanchors

        firsts = [df.first_sample for df in dirfiles if df.first_sample is not None]
        if audio_packets == 0 or not firsts or base_ns is None:
            return RenderResult(None, fmt, sample_rate_hz or work_rate, channels, 0,
                                audio_packets, sorted(undecodable), [0, 0], [None, None],
                                reanchors)
        if start_ns is not None:
            t0 = (start_ns - base_ns) * work_rate // _NS
        else:
            t0 = min(firsts)
        end = max(max(df.end_sample for df in dirfiles), end_ns * work_rate // _NS)
        if end <= t0:
            return RenderResult(None, fmt, sample_rate_hz or work_rate, channels, 0,
                                audio_packets, sorted(undecodable), [0, 0], [None, None],
                                reanchors)
        dtmf = _inband_dtmf(dirfiles, inband_dtmf_sides, base_ns, work_rate)
        spans = list(mask_spans_ns)
        if mask_inband:
            spans += [(e["ts_ns"], e["ts_ns"] + e["duration_ms"] * 1_000_000) for e in dtmf]
        masked_ms = _mask(dirfiles, spans, base_ns, work_rate)
        out_rate = sample_rate_hz if sample_rate_hz > 0 else (used_max_rate or work_rate)
        result = _mix_and_encode(dirfiles, t0, end, work_rate, out_rate, out_path, fmt,
                                 channels, bitrate_kbps, mp3_quality)
        return RenderResult(
            path=Path(result.path), fmt=result.fmt, sample_rate_hz=out_rate,
            channels=channels, duration_ms=result.duration_ms, audio_packets=audio_packets,
            undecodable=sorted(undecodable),
            per_side_ms=[int(round(df.audio_native_s * 1000)) for df in dirfiles],
            first_audio_offset_ms=[
                None if df.first_sample is None else (df.first_sample - t0) * 1000 // work_rate
                for df in dirfiles],
            reanchors=reanchors, dtmf=dtmf, masked_ms=masked_ms,
        )
    finally:
        for df in dirfiles:
            df.close()


def _inband_dtmf(dirfiles: list[SidePcm], sides: tuple[int, ...], base_ns: int,
                 rate: int) -> list[dict]:
    """Scan the asked directions' decoded audio for DTMF tones (one second per read)."""
    found: list[dict] = []
    for d in sides:
        df = dirfiles[d] if d in (0, 1) else None
        if df is None or df.first_sample is None:
            continue
        det = InbandDtmfDetector(rate)
        pos = df.first_sample
        while pos < df.end_sample:
            n = min(_SCAN_CHUNK_S * rate, df.end_sample - pos)
            det.feed(df.read(pos, n))
            pos += n
        for span in det.finish():
            found.append({"digit": span.digit, "direction": d,
                          "ts_ns": base_ns + (df.first_sample + span.start_sample) * _NS // rate,
                          "duration_ms": span.duration_ms(rate), "source": "inband"})
    found.sort(key=lambda e: (e["ts_ns"], e["direction"]))
    return found


def _mask(dirfiles: list[SidePcm], spans: list[tuple[int, int]], base_ns: int,
          rate: int) -> int:
    """Silence each span (plus guard) in both directions; returns the ms silenced."""
    guard = DTMF_MASK_GUARD_MS * rate // 1000
    masked = 0
    for start_ns, end_ns in spans:
        a = (start_ns - base_ns) * rate // _NS - guard
        b = (end_ns - base_ns) * rate // _NS + guard
        a = max(a, 0)
        hit = False
        for df in dirfiles:
            hit = df.silence(a, b) or hit
        if hit:
            masked += (b - a) * 1000 // rate
    return masked


# Direction audio mixed, resampled and encoded per step: small enough that every array of a
# step (the mix, float32 for the resampler, its output at 16 kHz) stays in cache. Mixing 60 s
# calls to 16 kHz WAV (bench/render_rate.py, same runs): 5.3-5.8 ms per call in 30 s steps,
# 4.8-4.9 in 5 s steps; without the worker's kept heap (agent.worker_heap) 30 s steps also
# made each array fresh mmapped pages, and resampling a minute took 5.8 ms instead of 2.7.
_MIX_CHUNK_S = 5


def _mix_and_encode(dirfiles: list[SidePcm], t0: int, end: int, work_rate: int,
                    out_rate: int, out_path: Path, fmt: str, channels: int,
                    bitrate_kbps: int, mp3_quality: int):
    """Mix the two directions chunk by chunk (mono: clipped sum; stereo: caller left), bring
    the mix to ``out_rate`` when the call's working rate differs (once, here), and stream it
    into the encoder."""
    post = Resampler(work_rate, out_rate, channels) if out_rate != work_rate else None
    enc = open_encoder(out_path, fmt, out_rate, channels, bitrate_kbps, mp3_quality)
    try:
        chunk = _MIX_CHUNK_S * work_rate
        pos = t0
        while pos < end:
            n = min(chunk, end - pos)
            a = dirfiles[0].read(pos, n)
            b = dirfiles[1].read(pos, n)
            if channels == 2:
                pcm = np.stack([a, b], axis=1)
            elif post is None:
                pcm = np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)
            else:
                # Summed in float32 and clipped once, by the resampler after its filter: two
                # passes over the samples instead of five (int32, clip, int16, float32): 0.25 of
                # the 4.8 ms a 60 s call took to mix to 16 kHz WAV (bench/render_rate.py).
                pcm = a.astype(np.float32)
                pcm += b
            enc.write(pcm if post is None else post.push(pcm))
            pos += n
        if post is not None:
            enc.write(post.finish())
        return enc.close()
    except BaseException:
        enc.abort()
        raise

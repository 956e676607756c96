"""Render one finished call's media log into a recording (WAV/MP3, mono mix or stereo).

Owns the post-call pipeline that runs in a worker process: read the call's media log once,
place every packet on the call timeline (``timeline.StreamTimeline``), decode it
(``codecs.make_decoder``, one decoder per stream and payload type), resample each
contiguous run of audio to the working rate and write it at its offset into one raw int16
temp file per direction (sparse: gaps, loss, CN and DTMF read back as zeros); then read
the two temp files chunk by chunk, mix (mono: clipped sum; stereo: caller left =
direction 0, callee right = direction 1) and stream the result into the encoder.
Memory stays flat in call length: one second of audio per stream plus the encoder's.

Resampling uses PyAV's ``AudioResampler`` (libswresample): a proper windowed-sinc
low-pass, so wideband audio taken down to 8/16 kHz does not alias as linear
interpolation would, and it is stateful, so a run of audio fed in 1-second pieces has no
seams. A run is kept open across small gaps (≤ 2 s, filled with zeros), because building
a resampler costs ~0.5 ms and lossy calls would otherwise build one per lost packet.

DTMF (issue 6): before mixing, the direction files can be scanned for in-band DTMF tones
(``inband_dtmf_directions``: the recorder asks only for directions that carried no RFC 4733
or SIP INFO presses, so a key is never counted twice), and spans can be silenced in both
directions (``mask_spans_ns``: key presses signalled out of band; ``mask_inband``: the
tones found). Found tones come back in ``RenderResult.dtmf``.

Does not own capture-side ordering (``stream.py``), codecs (``codecs.py``) or the file
format (``encoder.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from agent.media.codecs import Decoder, is_comfort_noise, is_telephone_event, make_decoder
from agent.media.dtmf import InbandDtmfDetector
from agent.media.encoder import open_encoder
from agent.media.medialog import read_media_log
from agent.media.timeline import STATIC_PAYLOAD_TYPES, CodecInfo, StreamSpec, StreamTimeline

__all__ = ["RenderResult", "render_recording", "CodecInfo", "StreamSpec"]

_NS = 1_000_000_000
_MARGIN_NS = 2 * _NS            # room before the first packet for early-placed audio
_MAX_FILL_S = 2                 # gaps up to this long stay inside one resampler run
_CN_PT = 13
DTMF_MASK_GUARD_MS = 40         # silence this much either side of a key press / tone


@dataclass(slots=True)
class RenderResult:
    path: Path | None               # None when the call had no decodable audio
    fmt: str
    sample_rate_hz: int
    channels: int
    duration_ms: int
    audio_packets: int              # packets decoded into audio
    undecodable: list[str] = field(default_factory=list)   # encodings / "pt<N>" not decoded
    per_direction_ms: list[int] = field(default_factory=lambda: [0, 0])
    first_audio_offset_ms: list[int | None] = field(default_factory=lambda: [None, None])
    reanchors: int = 0              # timeline re-anchorings (clock drift, timestamp jumps)
    # in-band DTMF found: dicts digit, direction, ts_ns (packet time), duration_ms, source
    dtmf: list[dict] = field(default_factory=list)
    masked_ms: int = 0              # audio silenced by DTMF masking (both directions)


class _DirectionFile:
    """One direction's PCM at the working rate, written at sample offsets (sparse file)."""

    __slots__ = ("path", "fh", "rate", "first_sample", "end_sample", "audio_native_s")

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.fh: BinaryIO | None = None
        self.rate = rate
        self.first_sample: int | None = None
        self.end_sample = 0
        self.audio_native_s = 0.0   # decoded audio, seconds

    def write(self, at_sample: int, pcm: np.ndarray) -> None:
        if at_sample < 0:           # before the margin: cannot be placed
            pcm = pcm[-at_sample:]
            at_sample = 0
        if pcm.size == 0:
            return
        if self.fh is None:
            self.fh = open(self.path, "w+b")
        self.fh.seek(at_sample * 2)
        self.fh.write(pcm.astype("<i2", copy=False).tobytes())
        end = at_sample + pcm.size
        if end > self.end_sample:
            self.end_sample = end

    def read(self, at_sample: int, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int16)
        if self.fh is None or at_sample >= self.end_sample:
            return out
        self.fh.seek(at_sample * 2)
        raw = self.fh.read(n * 2)
        got = np.frombuffer(raw, dtype="<i2")
        out[: got.size] = got
        return out

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Run:
    """A contiguous stretch of one stream's decoded audio at its native rate."""

    __slots__ = ("rate", "start_ns", "in_samples", "buf", "buf_n", "resampler",
                 "out_start", "out_written")

    def __init__(self, rate: int, start_ns: int, work_rate: int) -> None:
        self.rate = rate
        self.start_ns = start_ns            # relative to the render base
        self.in_samples = 0                 # native samples in the run so far (incl. fill)
        self.buf: list[np.ndarray] = []
        self.buf_n = 0
        self.resampler = None
        if rate != work_rate:
            import av  # PyAV; imported lazily so plain G.711 at the same rate never needs it

            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=work_rate)
        self.out_start = start_ns * work_rate // _NS
        self.out_written = 0


class _StreamRender:
    __slots__ = ("spec", "timeline", "decoders", "run", "dirfile")

    def __init__(self, spec: StreamSpec, dirfile: _DirectionFile) -> None:
        self.spec = spec
        self.timeline: StreamTimeline | None = None
        self.decoders: dict[int, Decoder | None] = {}
        self.run: _Run | None = None
        self.dirfile = dirfile


def _codec_for(spec: StreamSpec, pt: int) -> CodecInfo | None:
    codec = spec.codecs.get(pt)
    if codec is None and pt < 35:
        codec = STATIC_PAYLOAD_TYPES.get(pt)
    return codec


def _resample(run: _Run, pcm: np.ndarray | None) -> np.ndarray:
    """Feed ``pcm`` (None = flush) through the run's resampler; return what came out."""
    import av

    if pcm is None:
        frames = run.resampler.resample(None)
    else:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = run.rate
        frames = run.resampler.resample(frame)
    if not frames:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16,
                                                                              copy=False)


def _emit(run: _Run, dirfile: _DirectionFile, final: bool) -> None:
    if run.buf_n:
        pcm = run.buf[0] if len(run.buf) == 1 else np.concatenate(run.buf)
        run.buf = []
        run.buf_n = 0
    else:
        pcm = None
    out = pcm if run.resampler is None else (
        _resample(run, pcm) if pcm is not None else np.zeros(0, dtype=np.int16))
    if final and run.resampler is not None:
        tail = _resample(run, None)
        out = np.concatenate([out, tail]) if out.size else tail
    if out is None or out.size == 0:
        return
    dirfile.write(run.out_start + run.out_written, out)
    run.out_written += out.size


def _close_run(sr: _StreamRender) -> None:
    if sr.run is not None:
        _emit(sr.run, sr.dirfile, final=True)
        sr.run = None


def _add_audio(sr: _StreamRender, pos_ns: int, pcm: np.ndarray, rate: int, work_rate: int) -> None:
    run = sr.run
    if run is not None and run.rate == rate:
        expected_ns = run.start_ns + run.in_samples * _NS // rate
        gap = (pos_ns - expected_ns) * rate // _NS
        if -2 <= gap <= 2:
            gap = 0
        if 0 <= gap <= _MAX_FILL_S * rate:
            if gap:
                run.buf.append(np.zeros(gap, dtype=np.int16))
                run.buf_n += gap
                run.in_samples += gap
            run.buf.append(pcm)
            run.buf_n += pcm.size
            run.in_samples += pcm.size
            if run.buf_n >= rate:
                _emit(run, sr.dirfile, final=False)
            return
    _close_run(sr)
    run = sr.run = _Run(rate, pos_ns, work_rate)
    first = run.out_start
    df = sr.dirfile
    if df.first_sample is None or first < df.first_sample:
        df.first_sample = first
    run.buf.append(pcm)
    run.buf_n = pcm.size
    run.in_samples = pcm.size


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


def render_recording(log_path: Path, streams: list[StreamSpec], out_path: Path, *,
                     fmt: str = "mp3", channels: int = 1, sample_rate_hz: int = 16000,
                     bitrate_kbps: int = 32, start_ns: int | None = None,
                     inband_dtmf_directions: tuple[int, ...] = (),
                     mask_spans_ns: list[tuple[int, int]] | tuple = (),
                     mask_inband: bool = False) -> RenderResult:
    """Decode, place, mix and encode one call. See the module docstring.

    ``sample_rate_hz=0`` renders at the highest native rate of the decoders the call
    actually used. t=0 is ``start_ns`` if given, else the first audio packet of the call.
    With no decodable audio nothing is written and ``path`` is None.
    ``mask_spans_ns`` are (start_ns, end_ns) in packet time, silenced with a guard of
    ``DTMF_MASK_GUARD_MS`` either side.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    out_path = Path(out_path)
    work_rate = sample_rate_hz if sample_rate_hz > 0 else _work_rate(streams)
    specs = {s.index: s for s in streams}
    dirfiles = [_DirectionFile(out_path.with_name(f"{out_path.name}.d{d}.pcm"), work_rate)
                for d in (0, 1)]
    states: dict[int, _StreamRender] = {}
    undecodable: set[str] = set()
    audio_packets = 0
    used_max_rate = 0
    reanchors = 0
    base_ns: int | None = None
    end_ns = 0  # furthest placed packet (any kind), relative to base

    try:
        for idx, _seq, ts, arrival_ns, pt, _marker, payload in read_media_log(log_path):
            if base_ns is None:
                first = arrival_ns if start_ns is None else min(start_ns, arrival_ns)
                base_ns = first - _MARGIN_NS
            sr = states.get(idx)
            if sr is None:
                spec = specs.get(idx)
                if spec is None or spec.direction not in (0, 1):
                    continue  # a stream the engine chose not to record
                sr = states[idx] = _StreamRender(spec, dirfiles[spec.direction])
            codec = _codec_for(sr.spec, pt)
            if codec is None:
                undecodable.add(f"pt{pt}")
                continue
            if is_telephone_event(codec.encoding):
                continue  # events repeat their start timestamp: they must not steer the clock
            cn = pt == _CN_PT or is_comfort_noise(codec.encoding)
            if sr.timeline is None:
                if cn:
                    continue  # the stream's clock comes from its first audio packet
                sr.timeline = StreamTimeline(codec.clock_rate_hz)
            pos_ns = sr.timeline.place(ts, arrival_ns) - base_ns
            if pos_ns > end_ns:
                end_ns = pos_ns
            if cn:
                continue
            if pt in sr.decoders:
                dec = sr.decoders[pt]
            else:
                dec = sr.decoders[pt] = make_decoder(codec.encoding, codec.clock_rate_hz,
                                                     codec.channels, codec.fmtp)
            if dec is None:
                undecodable.add(codec.encoding)
                continue
            pcm = dec.decode(payload)
            if pcm.size == 0:
                continue  # rejected frame: a gap, the next packet is placed by timestamp
            rate = dec.sample_rate_hz
            if rate > used_max_rate:
                used_max_rate = rate
            _add_audio(sr, pos_ns, pcm, rate, work_rate)
            sr.dirfile.audio_native_s += pcm.size / rate
            audio_packets += 1
        for sr in states.values():
            _close_run(sr)
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
        dtmf = _inband_dtmf(dirfiles, inband_dtmf_directions, base_ns, work_rate)
        spans = list(mask_spans_ns)
        if mask_inband:
            spans += [(e["ts_ns"], e["ts_ns"] + e["duration_ms"] * 1_000_000) for e in dtmf]
        masked_ms = _mask(dirfiles, spans, base_ns, work_rate)
        out_rate = work_rate if sample_rate_hz > 0 else (used_max_rate or work_rate)
        result = _mix_and_encode(dirfiles, t0, end, work_rate, out_rate, out_path, fmt,
                                 channels, bitrate_kbps)
        return RenderResult(
            path=Path(result.path), fmt=result.fmt, sample_rate_hz=out_rate,
            channels=channels, duration_ms=result.duration_ms, audio_packets=audio_packets,
            undecodable=sorted(undecodable),
            per_direction_ms=[int(round(df.audio_native_s * 1000)) for df in dirfiles],
            first_audio_offset_ms=[
                None if df.first_sample is None else (df.first_sample - t0) * 1000 // work_rate
                for df in dirfiles],
            reanchors=reanchors, dtmf=dtmf, masked_ms=masked_ms,
        )
    finally:
        for df in dirfiles:
            df.close()


def _inband_dtmf(dirfiles: list[_DirectionFile], directions: tuple[int, ...], base_ns: int,
                 rate: int) -> list[dict]:
    """Scan the asked directions' decoded audio for DTMF tones (one second per read)."""
    found: list[dict] = []
    for d in directions:
        df = dirfiles[d] if d in (0, 1) else None
        if df is None or df.first_sample is None:
            continue
        det = InbandDtmfDetector(rate)
        pos = df.first_sample
        while pos < df.end_sample:
            n = min(rate, df.end_sample - pos)
            det.feed(df.read(pos, n))
            pos += n
        for span in det.finish():
            found.append({"digit": span.digit, "direction": d,
                          "ts_ns": base_ns + (df.first_sample + span.start_sample) * _NS // rate,
                          "duration_ms": span.duration_ms(rate), "source": "inband"})
    found.sort(key=lambda e: (e["ts_ns"], e["direction"]))
    return found


def _mask(dirfiles: list[_DirectionFile], spans: list[tuple[int, int]], base_ns: int,
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
            hi = min(b, df.end_sample)
            if df.fh is None or hi <= a:
                continue
            df.fh.seek(a * 2)
            df.fh.write(bytes(2 * (hi - a)))
            hit = True
        if hit:
            masked += (b - a) * 1000 // rate
    return masked


def _mix_and_encode(dirfiles: list[_DirectionFile], t0: int, end: int, work_rate: int,
                    out_rate: int, out_path: Path, fmt: str, channels: int,
                    bitrate_kbps: int):
    post = None
    if out_rate != work_rate:
        import av

        post = av.AudioResampler(format="s16", layout="mono" if channels == 1 else "stereo",
                                 rate=out_rate)
    enc = open_encoder(out_path, fmt, out_rate, channels, bitrate_kbps)
    try:
        chunk = work_rate  # one second per step
        pos = t0
        while pos < end:
            n = min(chunk, end - pos)
            a = dirfiles[0].read(pos, n)
            b = dirfiles[1].read(pos, n)
            if channels == 1:
                pcm = np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)
            else:
                pcm = np.stack([a, b], axis=1)
            if post is not None:
                pcm = _post_resample(post, pcm, work_rate, channels)
            enc.write(pcm)
            pos += n
        if post is not None:
            enc.write(_post_resample(post, None, work_rate, channels))
        return enc.close()
    except BaseException:
        enc.abort()
        raise


def _post_resample(resampler, pcm: np.ndarray | None, rate: int, channels: int) -> np.ndarray:
    import av

    if pcm is None:
        frames = resampler.resample(None)
    else:
        layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1),
                                           format="s16", layout=layout)
        frame.sample_rate = rate
        frames = resampler.resample(frame)
    shape = (-1,) if channels == 1 else (-1, 2)
    if not frames:
        return np.zeros((0,) if channels == 1 else (0, 2), dtype=np.int16)
    return np.concatenate([f.to_ndarray().reshape(shape) for f in frames]).astype(np.int16)

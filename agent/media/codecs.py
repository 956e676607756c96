"""RTP payload decoders: one stateful ``Decoder`` per RTP stream, payload bytes → mono int16 PCM.

Owns codec selection from the SDP rtpmap (``make_decoder``), G.711 via numpy tables, L16 and
DVI4 in Python/numpy, and every other codec through PyAV (libavcodec). Does not own RTP
parsing, reordering, loss concealment or timing (``rtp.py`` / ``sequencer.py`` / ``render.py``):
a decoder sees payloads in order and returns the PCM they carry, nothing more.

Contract: ``decode`` never raises. A payload the codec rejects returns an empty array and
bumps ``errors``; the caller places the next good payload by its RTP timestamp, so a rejected
frame becomes a gap, not a shift. Keep one decoder per stream: G.722, G.726, Opus, GSM and
iLBC carry state from packet to packet.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from agent.media.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR

__all__ = [
    "Decoder",
    "make_decoder",
    "is_comfort_noise",
    "is_telephone_event",
    "to_mono_int16",
]

_EMPTY = np.zeros(0, dtype=np.int16)
_EMPTY.setflags(write=False)


class Decoder:
    """Base class of every decoder (see the module docstring for the contract)."""

    encoding: str
    rtp_clock_hz: int
    sample_rate_hz: int
    channels_out: int = 1
    errors: int  # payloads rejected so far (the caller turns this into a counter)

    def __init__(self, encoding: str, rtp_clock_hz: int, sample_rate_hz: int) -> None:
        self.encoding = encoding
        self.rtp_clock_hz = rtp_clock_hz
        self.sample_rate_hz = sample_rate_hz
        self.channels_out = 1
        self.errors = 0

    def decode(self, payload: bytes) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def samples_for_rtp_ticks(self, ticks: int) -> int:
        """Output samples spanned by an RTP timestamp distance (G.722: 2 per tick)."""
        return ticks * self.sample_rate_hz // self.rtp_clock_hz

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.encoding}, clock={self.rtp_clock_hz}, "
            f"out={self.sample_rate_hz}, errors={self.errors})"
        )


# --------------------------------------------------------------------------- helpers


def to_mono_int16(samples: np.ndarray, channels: int, planar: bool) -> np.ndarray:
    """Convert a PyAV ``frame.to_ndarray()`` result of any sample format to mono int16.

    Float formats are scaled by 32768 and clipped; s32 keeps its top 16 bits. Channels are
    averaged (a plain mean keeps a signal present in one channel at half level, without
    clipping when both carry the same signal).
    """
    a = np.asarray(samples)
    if planar:
        a = a.reshape(channels, -1)
    else:
        a = a.reshape(-1, channels).T
    if a.dtype.kind == "f":
        mono = a.mean(axis=0, dtype=np.float64) if channels > 1 else a[0].astype(np.float64)
        return np.clip(np.rint(mono * 32768.0), -32768, 32767).astype(np.int16)
    if a.dtype == np.int16:
        if channels == 1:
            return a[0].copy()
        return (a.astype(np.int32).sum(axis=0) // channels).astype(np.int16)
    if a.dtype == np.int32:
        wide = a.astype(np.int64).sum(axis=0) // channels
        return (wide >> 16).astype(np.int16)
    if a.dtype == np.uint8:  # u8: offset binary
        wide = (a.astype(np.int32) - 128).sum(axis=0) // channels
        return (wide << 8).astype(np.int16)
    raise ValueError(f"unsupported sample dtype {a.dtype}")


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    if not parts:
        return _EMPTY
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


# --------------------------------------------------------------------------- G.711 / L16


class G711Decoder(Decoder):
    """PCMU / PCMA: one byte per sample, expanded by a 256-entry table (exact)."""

    def __init__(self, encoding: str, table: np.ndarray) -> None:
        super().__init__(encoding, 8000, 8000)
        self._table = table

    @property
    def table(self) -> np.ndarray:
        """The 256-entry expansion table: stateless, so a renderer may expand many
        payloads with one lookup (``table[bytes]``) instead of calling ``decode``."""
        return self._table

    def decode(self, payload: bytes) -> np.ndarray:
        return self._table[np.frombuffer(payload, dtype=np.uint8)]


class L16Decoder(Decoder):
    """L16 (RFC 3551 §4.5.11): big-endian signed 16-bit, interleaved channels, any rate."""

    def __init__(self, encoding: str, rate_hz: int, channels: int) -> None:
        super().__init__(encoding, rate_hz, rate_hz)
        self._channels = max(1, channels)

    def decode(self, payload: bytes) -> np.ndarray:
        frame_bytes = 2 * self._channels
        if len(payload) % frame_bytes:
            self.errors += 1
            return _EMPTY
        a = np.frombuffer(payload, dtype=">i2")
        if self._channels == 1:
            return a.astype(np.int16)
        a = a.reshape(-1, self._channels).astype(np.int32)
        return (a.sum(axis=1) // self._channels).astype(np.int16)


# --------------------------------------------------------------------------- DVI4

# IMA ADPCM tables (IMA Recommended Practices for Enhancing Digital Audio Compatibility, 1992).
_IMA_INDEX_ADJUST = (-1, -1, -1, -1, 2, 4, 6, 8, -1, -1, -1, -1, 2, 4, 6, 8)


def _ima_step_table() -> tuple[int, ...]:
    # The 89 steps are round(7 * 1.1^i) adjusted to the published integers; typed in because
    # the IMA table is itself the normative definition (no closed formula reproduces it).
    return (
        7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45,
        50, 55, 60, 66, 73, 80, 88, 97, 107, 118, 130, 143, 157, 173, 190, 209, 230,
        253, 279, 307, 337, 371, 408, 449, 494, 544, 598, 658, 724, 796, 876, 963,
        1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066, 2272, 2499, 2749, 3024, 3327,
        3660, 4026, 4428, 4871, 5358, 5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487,
        12635, 13899, 15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794, 32767,
    )  # fmt: skip


IMA_STEP_TABLE: tuple[int, ...] = _ima_step_table()


def ima_decode_nibbles(codes: Sequence[int], predictor: int, index: int) -> np.ndarray:
    """Decode IMA ADPCM 4-bit codes from a (predictor, step index) state."""
    steps = IMA_STEP_TABLE
    adjust = _IMA_INDEX_ADJUST
    out = np.empty(len(codes), dtype=np.int16)
    pred = predictor
    idx = min(max(index, 0), 88)
    for i, code in enumerate(codes):
        step = steps[idx]
        diff = step >> 3
        if code & 4:
            diff += step
        if code & 2:
            diff += step >> 1
        if code & 1:
            diff += step >> 2
        if code & 8:
            pred -= diff
            if pred < -32768:
                pred = -32768
        else:
            pred += diff
            if pred > 32767:
                pred = 32767
        out[i] = pred
        idx += adjust[code]
        if idx < 0:
            idx = 0
        elif idx > 88:
            idx = 88
    return out


class Dvi4Decoder(Decoder):
    """DVI4 (RFC 3551 §4.5.1): IMA ADPCM, each packet self-contained.

    Header: predicted value (int16 big-endian), step index (u8), reserved (u8); then 4-bit
    codes, the first sample in the HIGH nibble. The header value is the decoder state, not an
    output sample, so a packet of N code bytes yields 2N samples.
    """

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) < 4 or payload[2] > 88:
            self.errors += 1
            return _EMPTY
        predictor = int.from_bytes(payload[0:2], "big", signed=True)
        body = np.frombuffer(payload, dtype=np.uint8, offset=4)
        codes = np.empty(2 * body.size, dtype=np.uint8)
        codes[0::2] = body >> 4
        codes[1::2] = body & 0x0F
        return ima_decode_nibbles(codes.tolist(), predictor, payload[2])


# --------------------------------------------------------------------------- PyAV


class PyAVDecoder(Decoder):
    """Any libavcodec audio decoder fed one RTP payload (or one codec frame) per packet.

    ``frame_bytes``: when set, payloads are split into frames of that size (a codec frame
    that fails then loses only itself); a payload that is not a whole number of frames is
    rejected.
    """

    def __init__(
        self,
        encoding: str,
        rtp_clock_hz: int,
        sample_rate_hz: int,
        codec_name: str,
        codec_channels: int = 1,
        options: dict[str, str] | None = None,
        frame_bytes: int | None = None,
    ) -> None:
        super().__init__(encoding, rtp_clock_hz, sample_rate_hz)
        import av  # imported lazily: G.711-only deployments never load libavcodec

        self._av = av
        self.codec_name = codec_name
        self._codec_channels = codec_channels
        self._options = dict(options or {})
        self.frame_bytes = frame_bytes
        self._ctx = self._open()

    def _open(self):  # -> av.AudioCodecContext
        ctx = self._av.CodecContext.create(self.codec_name, "r")
        ctx.sample_rate = self.sample_rate_hz
        ctx.layout = "stereo" if self._codec_channels == 2 else "mono"
        if self._options:
            ctx.options = self._options
        ctx.open()
        return ctx

    def _decode_packet(self, data: bytes) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for frame in self._ctx.decode(self._av.Packet(data)):
            out.append(
                to_mono_int16(
                    frame.to_ndarray(), len(frame.layout.channels), frame.format.is_planar
                )
            )
        return out

    def _split(self, payload: bytes) -> list[bytes] | None:
        n = self.frame_bytes
        if not n:
            return [payload]
        if len(payload) % n:
            return None
        if len(payload) == n:
            return [payload]
        return [payload[i : i + n] for i in range(0, len(payload), n)]

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:
            return _EMPTY
        frames = self._split(payload)
        if frames is None:
            self.errors += 1
            return _EMPTY
        parts: list[np.ndarray] = []
        try:
            for data in frames:
                parts.extend(self._decode_packet(data))
        except (self._av.FFmpegError, ValueError):
            self.errors += 1
            return _EMPTY
        return _concat(parts)


class G729Decoder(PyAVDecoder):
    """G.729 / G.729A / G.729B.

    Annex B adds 2-byte SID (comfort noise update) frames, alone or after N 10-byte speech
    frames. libavcodec rejects them, so they are split off here and each becomes 10 ms of
    silence: the stream keeps its full length and the timeline stays aligned.
    """

    _SPEECH_BYTES = 10
    _SID_BYTES = 2
    _SAMPLES_PER_FRAME = 80  # 10 ms at 8 kHz

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding, 8000, 8000, "g729")

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:
            return _EMPTY
        speech_len = len(payload)
        sid = False
        if speech_len % self._SPEECH_BYTES == self._SID_BYTES:
            speech_len -= self._SID_BYTES
            sid = True
        elif speech_len % self._SPEECH_BYTES and speech_len % 8:
            # Neither G.729 (10-byte) nor G.729D (8-byte) framing: reject the whole packet.
            self.errors += 1
            return _EMPTY
        parts: list[np.ndarray] = []
        if speech_len:
            try:
                parts.extend(self._decode_packet(payload[:speech_len]))
            except (self._av.FFmpegError, ValueError):
                self.errors += 1
                return _EMPTY
        if sid:
            parts.append(np.zeros(self._SAMPLES_PER_FRAME, dtype=np.int16))
        return _concat(parts)


class IlbcDecoder(PyAVDecoder):
    """iLBC (RFC 3952): 20 ms / 38-byte or 30 ms / 50-byte frames, several per payload.

    libavcodec picks the mode from ``block_align`` at open. The SDP ``mode=`` is only a
    hint (and defaults to 30); the first payload whose length fits exactly one of the two
    frame sizes decides, and the context is reopened if it contradicts the hint.
    """

    _BYTES_FOR_MODE = {20: 38, 30: 50}

    def __init__(self, encoding: str, mode_ms: int) -> None:
        self._mode_ms = mode_ms if mode_ms in self._BYTES_FOR_MODE else 30
        self._mode_locked = False
        fb = self._BYTES_FOR_MODE[self._mode_ms]
        super().__init__(
            encoding, 8000, 8000, "ilbc", options={"block_align": str(fb)}, frame_bytes=fb
        )

    def decode(self, payload: bytes) -> np.ndarray:
        if not self._mode_locked and payload:
            fits20 = len(payload) % 38 == 0
            fits30 = len(payload) % 50 == 0
            if fits20 != fits30:
                self._mode_locked = True
                mode = 20 if fits20 else 30
                if mode != self._mode_ms:
                    self._mode_ms = mode
                    self.frame_bytes = self._BYTES_FOR_MODE[mode]
                    self._options = {"block_align": str(self.frame_bytes)}
                    self._ctx = self._open()
        return super().decode(payload)


# --------------------------------------------------------------------------- factory

_CN = "CN"
_TELEPHONE_EVENT = "TELEPHONE-EVENT"
_G726_RE = re.compile(r"^(AAL2-)?G726-(16|24|32|40)$")


def is_comfort_noise(encoding: str) -> bool:
    """RFC 3389 comfort noise ('CN'): not audio to decode; the mixer fills silence."""
    return encoding.strip().upper() == _CN


def is_telephone_event(encoding: str) -> bool:
    """RFC 4733 named events (DTMF): handled by the DTMF path, never decoded as audio."""
    return encoding.strip().upper() == _TELEPHONE_EVENT


def _fmtp_params(fmtp: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if not fmtp:
        return params
    for item in fmtp.replace(";", " ").split():
        key, sep, value = item.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip()
    return params


def _pyav_available(codec_name: str) -> bool:
    try:
        import av

        av.Codec(codec_name, "r")
    except Exception:  # missing PyAV, or a wheel built without this decoder
        return False
    return True


def make_decoder(
    encoding: str, clock_rate_hz: int, channels: int = 1, fmtp: str | None = None
) -> Decoder | None:
    """A fresh decoder for one stream from its SDP rtpmap, or None if we cannot decode it.

    ``encoding`` is the rtpmap name (case-insensitive), ``clock_rate_hz`` its clock,
    ``channels`` its optional channel count, ``fmtp`` the matching a=fmtp value.
    """
    name = encoding.strip().upper()
    channels = channels if channels and channels > 0 else 1
    builder = _BUILDERS.get(name)
    if builder is None:
        m = _G726_RE.match(name)
        if m is None:
            return None
        codec_name = "g726" if m.group(1) else "g726le"
        bits = int(m.group(2)) // 8
        builder = lambda enc, _clk, _ch, _f: PyAVDecoder(  # noqa: E731
            enc,
            8000,
            8000,
            codec_name,
            options={"bits_per_coded_sample": str(bits), "b": str(bits * 8000)},
        )
    try:
        return builder(encoding.strip(), clock_rate_hz, channels, fmtp)
    except Exception:
        # A codec PyAV lacks, or parameters libavcodec refuses at open: undecodable.
        return None


def _ilbc_mode_ms(fmtp: str | None) -> int:
    mode = _fmtp_params(fmtp).get("mode", "")
    return int(mode) if mode in ("20", "30") else 30


def _opus(enc: str, _clk: int, ch: int, fmtp: str | None) -> Decoder:
    params = _fmtp_params(fmtp)
    # RTP always says opus/48000/2 (RFC 7587); sprop-stereo tells what is really sent.
    # Decoding as stereo is always safe: libopus upmixes mono packets.
    stereo = ch == 2 or params.get("sprop-stereo") == "1" or params.get("stereo") == "1"
    codec = "libopus" if _pyav_available("libopus") else "opus"
    return PyAVDecoder(enc, 48000, 48000, codec, codec_channels=2 if stereo else 1)


def _speex(enc: str, clk: int, _ch: int, _f: str | None) -> Decoder | None:
    rate = clk if clk in (8000, 16000, 32000) else 8000
    return SpeexDecoder(enc, rate)


class SpeexDecoder(PyAVDecoder):
    """Speex (RFC 5574) via libavcodec's native decoder; narrow/wide/ultra-wide by clock."""

    def __init__(self, encoding: str, rate_hz: int) -> None:
        super().__init__(encoding, rate_hz, rate_hz, "speex")


_Builder = Callable[[str, int, int, "str | None"], "Decoder | None"]

_BUILDERS: dict[str, _Builder] = {
    "PCMU": lambda enc, _c, _ch, _f: G711Decoder(enc, ULAW_TO_LINEAR),
    "PCMA": lambda enc, _c, _ch, _f: G711Decoder(enc, ALAW_TO_LINEAR),
    "L16": lambda enc, clk, ch, _f: L16Decoder(enc, clk or 8000, ch),
    "DVI4": lambda enc, clk, _ch, _f: Dvi4Decoder(enc, clk or 8000, clk or 8000),
    # G.722's RTP clock is 8000 by an RFC 1890 mistake kept for compatibility; audio is 16 kHz.
    "G722": lambda enc, _c, _ch, _f: PyAVDecoder(enc, 8000, 16000, "g722"),
    "G729": lambda enc, _c, _ch, _f: G729Decoder(enc),
    "G729A": lambda enc, _c, _ch, _f: G729Decoder(enc),
    "G729B": lambda enc, _c, _ch, _f: G729Decoder(enc),
    "G729AB": lambda enc, _c, _ch, _f: G729Decoder(enc),
    "GSM": lambda enc, _c, _ch, _f: PyAVDecoder(enc, 8000, 8000, "gsm", frame_bytes=33),
    "ILBC": lambda enc, _c, _ch, f: IlbcDecoder(enc, _ilbc_mode_ms(f)),
    "OPUS": _opus,
    "SPEEX": _speex,
}

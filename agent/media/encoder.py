"""Streaming recording encoder: int16 PCM chunks in, one WAV or MP3 file out.

Owns the file format side of a recording: WAV (PCM 16-bit little-endian, stdlib ``wave``)
and MP3 (PyAV + libmp3lame, CBR, 'mp3' container). PCM is written as it arrives, at most one
codec frame is buffered, so memory stays flat however long the call. The file is written to
``path + '.part'``, fsynced and renamed atomically on ``close()``: a reader never sees a
half-written recording under the final name. Does not own mixing or resampling: the caller
hands in PCM already at ``sample_rate_hz``.

MP3 layer by sample rate (LAME picks it): 32/44.1/48 kHz → MPEG-1 (1152-sample frames);
16/22.05/24 kHz → MPEG-2 (576); 8/11.025/12 kHz → MPEG-2.5 (576), a non-ISO extension every
mainstream decoder plays. The agent's default, mono 16 kHz at 32 kbit/s, is MPEG-2 Layer III.
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

__all__ = ["EncodeResult", "Encoder", "open_encoder", "MP3_SAMPLE_RATES_HZ", "MP3_QUALITY"]

MP3_SAMPLE_RATES_HZ: frozenset[int] = frozenset(
    {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}
)
# LAME's algorithm quality (0 slowest/best .. 9 fastest). Measured here at 32 kbit/s, 16 kHz
# mono (bench/encode_rate.py --quality): 7 runs about 2.5x faster than LAME's default (3)
# with the same signal-to-noise ratio (14.7 vs 14.2 dB; once on SIPp's recorded prompt, 25.0
# vs 24.0 dB), so the same cores record about twice the calls. [recording] mp3_quality
# overrides it.
MP3_QUALITY = 7
_PART_SUFFIX = ".part"


@dataclass(slots=True, frozen=True)
class EncodeResult:
    path: str
    fmt: str
    sample_rate_hz: int
    channels: int
    duration_ms: int  # of the PCM written (MP3 padding and encoder delay excluded)
    bytes_written: int  # size of the final file


def _fsync_dir(path: str) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Encoder:
    """Base of the WAV and MP3 encoders: validation, sample count, atomic finish.

    Use as a context manager or call ``close()``; an exception inside ``with`` (or
    ``abort()``) removes the ``.part`` file instead of publishing it.
    """

    fmt: str

    def __init__(self, path: str | os.PathLike[str], sample_rate_hz: int, channels: int) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        if sample_rate_hz <= 0:
            raise ValueError(f"bad sample rate {sample_rate_hz}")
        self.path = os.fspath(path)
        self.part_path = self.path + _PART_SUFFIX
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.samples_written = 0  # per channel
        self._closed = False

    # -- public -----------------------------------------------------------------

    def write(self, pcm: np.ndarray) -> None:
        """Append int16 PCM: shape (n,) for mono, (n, 2) for stereo (left = column 0)."""
        if self._closed:
            raise ValueError("encoder is closed")
        a = np.asarray(pcm)
        if a.dtype != np.int16:
            raise TypeError(f"PCM must be int16, got {a.dtype}")
        if self.channels == 1:
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise ValueError(f"mono PCM must have shape (n,), got {a.shape}")
        elif a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"stereo PCM must have shape (n, 2), got {a.shape}")
        if a.shape[0] == 0:
            return
        self._write(a)
        self.samples_written += a.shape[0]

    def close(self) -> EncodeResult:
        """Flush, fsync, rename ``.part`` to the final path; returns what was written."""
        if self._closed:
            raise ValueError("encoder is already closed")
        self._closed = True
        try:
            self._finish()
            with open(self.part_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.part_path, self.path)
        except BaseException:
            self._remove_part()
            raise
        _fsync_dir(self.path)
        return EncodeResult(
            path=self.path,
            fmt=self.fmt,
            sample_rate_hz=self.sample_rate_hz,
            channels=self.channels,
            duration_ms=self.samples_written * 1000 // self.sample_rate_hz,
            bytes_written=os.path.getsize(self.path),
        )

    def abort(self) -> None:
        """Drop the recording in progress (its ``.part`` file is deleted)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._discard()
        finally:
            self._remove_part()

    def __enter__(self) -> "Encoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    # -- subclass hooks ---------------------------------------------------------

    def _write(self, pcm: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _discard(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _remove_part(self) -> None:
        try:
            os.unlink(self.part_path)
        except FileNotFoundError:
            pass


class WavEncoder(Encoder):
    """RIFF/WAVE PCM 16-bit LE; ``wave`` patches the sizes in the header when it closes."""

    fmt = "wav"

    def __init__(self, path: str | os.PathLike[str], sample_rate_hz: int, channels: int) -> None:
        super().__init__(path, sample_rate_hz, channels)
        self._file: BinaryIO = open(self.part_path, "wb")
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate_hz)

    def _write(self, pcm: np.ndarray) -> None:
        # writeframesraw: the header is patched once at close, not after every chunk.
        self._wav.writeframesraw(np.ascontiguousarray(pcm, dtype="<i2").tobytes())

    def _finish(self) -> None:
        self._wav.close()  # does not close a file object it was given
        self._file.close()

    def _discard(self) -> None:
        try:
            self._wav.close()
        finally:
            self._file.close()


class Mp3Encoder(Encoder):
    """MP3 CBR through libmp3lame, fed whole codec frames as PCM arrives."""

    fmt = "mp3"

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate_hz: int,
        channels: int,
        bitrate_kbps: int,
        quality: int = MP3_QUALITY,
    ) -> None:
        super().__init__(path, sample_rate_hz, channels)
        if not 0 <= quality <= 9:
            raise ValueError(f"LAME quality is 0 (slowest) to 9 (fastest), not {quality}")
        if sample_rate_hz not in MP3_SAMPLE_RATES_HZ:
            raise ValueError(
                f"MP3 cannot carry {sample_rate_hz} Hz; use one of {sorted(MP3_SAMPLE_RATES_HZ)}"
            )
        import av

        self._av = av
        self._layout = "stereo" if channels == 2 else "mono"
        self._container = av.open(self.part_path, "w", format="mp3")
        try:
            stream = self._container.add_stream("libmp3lame", rate=sample_rate_hz)
            stream.layout = self._layout
            stream.bit_rate = bitrate_kbps * 1000
            ctx = stream.codec_context
            ctx.format = "s16p"  # LAME takes s16p natively: no conversion inside libavcodec
            # Plain CBR at bit_rate; LAME's algorithm quality (-q) as libavcodec's
            # compression_level (unset, LAME uses its own default, 3: about 3x the CPU of 7
            # at 32 kbit/s for no measurable gain on speech; see MP3_QUALITY).
            ctx.options = {"abr": "0", "compression_level": str(quality)}
            ctx.open()
        except BaseException:
            self._container.close()
            self._remove_part()
            raise
        self._stream = stream
        # 1152 (MPEG-1) or 576 (MPEG-2/2.5); libavcodec knows once the codec is open.
        self.frame_size = ctx.frame_size or 1152
        # Pending samples, planar (channels, n) with n < frame_size between writes.
        self._pending = np.zeros((channels, 0), dtype=np.int16)
        self._pts = 0

    def _emit(self, planar: np.ndarray) -> None:
        frame = self._av.AudioFrame.from_ndarray(planar, format="s16p", layout=self._layout)
        frame.sample_rate = self.sample_rate_hz
        frame.pts = self._pts
        self._pts += planar.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _write(self, pcm: np.ndarray) -> None:
        planar = pcm.reshape(1, -1) if self.channels == 1 else pcm.T
        if self._pending.shape[1]:
            planar = np.concatenate([self._pending, planar], axis=1)
        n = self.frame_size
        whole = planar.shape[1] - planar.shape[1] % n
        for start in range(0, whole, n):
            self._emit(np.ascontiguousarray(planar[:, start : start + n]))
        self._pending = np.array(planar[:, whole:], dtype=np.int16, order="C")

    def _finish(self) -> None:
        try:
            if self._pending.shape[1]:
                # libmp3lame accepts a short last frame; LAME pads it and records the padding.
                self._emit(np.ascontiguousarray(self._pending))
                self._pending = self._pending[:, :0]
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def _discard(self) -> None:
        self._container.close()


def open_encoder(
    path: str | os.PathLike[str],
    fmt: Literal["wav", "mp3"],
    sample_rate_hz: int,
    channels: int,
    bitrate_kbps: int = 32,
    mp3_quality: int = MP3_QUALITY,
) -> Encoder:
    """Start a recording file. ``fmt`` is 'wav' or 'mp3' (CBR ``bitrate_kbps``, LAME algorithm
    quality ``mp3_quality``)."""
    fmt_l = fmt.lower()
    if fmt_l == "wav":
        return WavEncoder(path, sample_rate_hz, channels)
    if fmt_l == "mp3":
        return Mp3Encoder(path, sample_rate_hz, channels, bitrate_kbps, mp3_quality)
    raise ValueError(f"unknown recording format {fmt!r} (expected 'wav' or 'mp3')")

"""Streaming recording encoder: int16 PCM chunks in, one WAV or MP3 file out.

Owns the file format side of a recording: WAV (PCM 16-bit little-endian, stdlib ``wave``)
and MP3 (LAME through ``lameenc``, CBR). PCM is written as it arrives, at most one codec frame
is buffered, so memory stays flat however long the call. ``lameenc`` (a wheel with LAME
inside) encodes the same PCM at the same bit rate and LAME quality with the same SNR about
4x faster than libmp3lame through PyAV (``bench/encode_rate.py --bindings``); PyAV stays
the codec decoder. The file is written to
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
# mono (bench/encode_rate.py --quality): 7 runs 1.6-2.5x faster than LAME's default (3)
# with the same signal-to-noise ratio (14.7 vs 14.2 dB; once on SIPp's recorded prompt, 25.0
# vs 24.0 dB), so the same cores record more calls. [recording] mp3_quality overrides it.
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
        # writeframesraw: the header is patched once at close, not after every chunk. It
        # takes the array's buffer as it is (no bytes copy).
        self._wav.writeframesraw(np.ascontiguousarray(pcm, dtype="<i2"))

    def _finish(self) -> None:
        self._wav.close()  # does not close a file object it was given
        self._file.close()

    def _discard(self) -> None:
        try:
            self._wav.close()
        finally:
            self._file.close()


# LAME's encoder delay (samples of its own look-ahead before the first input sample); a
# decoder adds 529 of its own. Written into the LAME tag so decoders (ffmpeg) trim both.
_LAME_ENCODER_DELAY = 576


def _info_tag_frame(header: bytes, frame_len: int, channels: int, frames: int, nbytes: int,
                    delay: int, padding: int) -> bytes:
    """A Xing "Info" frame (CBR) with a LAME extension carrying the encoder delay and end
    padding: what the LAME command line writes first, so players trim the encoder's silence
    and the file plays exactly the PCM that was written. ``header``: the 4-byte header of the
    stream's first audio frame."""
    h = bytearray(header)
    h[2] &= 0xFD                                   # no padding slot: the length is frame_len
    mpeg1 = (h[1] >> 3) & 3 == 3
    side_info = (32 if channels == 2 else 17) if mpeg1 else (17 if channels == 2 else 9)
    lame = bytearray(36)
    lame[0:9] = b"LAME3.100"
    delay_padding = (min(delay, 4095) << 12) | min(max(padding, 0), 4095)
    lame[21:24] = delay_padding.to_bytes(3, "big")
    lame[28:32] = nbytes.to_bytes(4, "big")        # music length (bytes, tag frame included)
    body = bytes(h) + bytes(side_info) + b"Info" + (3).to_bytes(4, "big") + frames.to_bytes(4, "big") \
        + nbytes.to_bytes(4, "big") + bytes(lame)
    return body + bytes(frame_len - len(body))


class Mp3Encoder(Encoder):
    """MP3 CBR through LAME (``lameenc``), fed PCM as it arrives; LAME buffers at most one
    frame (and its look-ahead) itself. The first frame of the file is a LAME "Info" tag
    written at close (``_info_tag_frame``), as the LAME command line does."""

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
        import lameenc

        enc = lameenc.Encoder()
        enc.set_in_sample_rate(sample_rate_hz)
        enc.set_out_sample_rate(sample_rate_hz)   # never let LAME pick another rate for the bit rate
        enc.set_channels(channels)
        enc.set_bit_rate(bitrate_kbps)            # CBR (lameenc leaves VBR off)
        enc.set_quality(quality)
        enc.silence()                             # LAME's own messages would go to stderr
        self._lame = enc
        # Samples per MP3 frame: 1152 (MPEG-1, 32 kHz and up) or 576 (MPEG-2/2.5).
        self.frame_size = 1152 if sample_rate_hz >= 32000 else 576
        self._tag_len = (144 if sample_rate_hz >= 32000 else 72) * bitrate_kbps * 1000 // sample_rate_hz
        self._file: BinaryIO = open(self.part_path, "w+b")
        self._file.write(bytes(self._tag_len))    # room for the Info tag frame

    def _write(self, pcm: np.ndarray) -> None:
        # Interleaved int16, as LAME takes it (stereo rows are already left, right); lameenc
        # reads the array's buffer, no bytes copy.
        self._file.write(self._lame.encode(np.ascontiguousarray(pcm, dtype="<i2")))

    def _finish(self) -> None:
        try:
            self._file.write(self._lame.flush())
            self._write_tag()
        finally:
            self._file.close()

    def _write_tag(self) -> None:
        fh = self._file
        end = fh.tell()
        fh.seek(self._tag_len)
        audio = fh.read()
        frames = _count_frames(audio, self._tag_len)
        if not frames:
            fh.seek(0)
            fh.write(audio)
            fh.truncate(len(audio))
            return
        padding = frames * self.frame_size - self.samples_written - _LAME_ENCODER_DELAY
        fh.seek(0)
        fh.write(_info_tag_frame(audio[:4], self._tag_len, self.channels, frames, end,
                                 _LAME_ENCODER_DELAY, padding))

    def _discard(self) -> None:
        self._file.close()


# Layer III bit rates (kbit/s) by header index: MPEG-1, then MPEG-2/2.5.
_BITRATES_KBPS = ((0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
                  (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160))
_RATES_HZ = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _count_frames(data: bytes, frame_len: int) -> int:
    """MP3 frames in ``data`` (whole frames back to back, as LAME writes them; ``frame_len``:
    the stream's frame length without a padding slot).

    Where the bit rate fills whole bytes per frame (16 kHz at 32 kbit/s: 144 bytes) LAME never
    pads, every frame is ``frame_len`` long and one array comparison of the frame headers
    counts them (walking the 6,250 frames of a minute one by one in Python took 1.5 ms, half
    of what resampling that minute costs); otherwise the frames are walked."""
    n = len(data)
    if n and n % frame_len == 0:
        heads = np.frombuffer(data, dtype=np.uint8).reshape(-1, frame_len)[:, :3]
        first = heads[0]
        # Sync word, no padding slot, and every frame with the first one's header.
        if first[0] == 0xFF and first[1] & 0xE0 == 0xE0 and not first[2] & 2 and (heads == first).all():
            return n // frame_len
    return _walk_frames(data)


def _walk_frames(data: bytes) -> int:
    """MP3 frames in ``data``, header by header."""
    pos = frames = 0
    n = len(data)
    while pos + 4 <= n and data[pos] == 0xFF and data[pos + 1] & 0xE0 == 0xE0:
        version = (data[pos + 1] >> 3) & 3
        kbps = _BITRATES_KBPS[version != 3][data[pos + 2] >> 4]
        rate = _RATES_HZ.get(version, (0, 0, 0))[(data[pos + 2] >> 2) & 3] if (data[pos + 2] >> 2) & 3 < 3 else 0
        if not kbps or not rate:
            break
        pos += (144 if version == 3 else 72) * kbps * 1000 // rate + ((data[pos + 2] >> 1) & 1)
        frames += 1
    return frames


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

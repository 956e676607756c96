"""Sample-rate conversion of int16 PCM: the one place the agent converts rates.

Two callers, one problem: a stream whose codec rate differs from its call's working rate
(``placement``: narrowband audio in a call with G.722, converted run by run) and the mix of a
call when the recording's rate differs from the call's (``render._mix_and_encode``: 8 kHz
G.711 recorded at a fixed 16 kHz, or as the default 16 kHz MP3).

libsoxr (``soxr``, python-soxr), quality HQ: a linear-phase windowed-sinc filter, flat to
0.001 dB up to 3.4 kHz; going up 8 -> 16 kHz the images of telephone-band tones stay at the
int16 floor (-97 dB), going down 16 -> 8 kHz tones of 4.4-7.8 kHz leave nothing (every sample
0). libswresample (PyAV's resampler, used before) let a 3.9 kHz tone's image through at -9 dB
and aliased at -42 dB, and was slower: 14,300-16,100 against 18,700-20,300 audio-s/CPU-s
(8 -> 16 kHz, a resampler per 60 s call; ``bench/encode_rate.py --resample`` prints both).

The conversion is stateful (``push`` pieces, then ``finish``): the output does not depend on
how the input is cut, and the total output is the input's length at the new rate. It runs in
float32 because soxr's int16 output adds TPDF dither (silence would come out as +-1 noise,
which LAME then spends bits on); rounding and clipping here keeps digital silence exact.
"""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["Resampler"]

# HQ (20-bit): MQ measured no faster at 2:1 (3.6 vs 3.7 ms per minute of 8 kHz), VHQ 20 % slower,
# LQ droops 8 dB at 3.4 kHz.
_QUALITY = "HQ"


class Resampler:
    """Streaming conversion of int16 PCM from ``in_rate_hz`` to ``out_rate_hz``: mono ``(n,)``
    or stereo ``(n, 2)`` pieces in, int16 of the same shape out. A piece may also be float32
    on the int16 scale (a mix not clipped yet): it is rounded and clipped once, after the
    filter."""

    __slots__ = ("in_rate_hz", "out_rate_hz", "channels", "_soxr")

    def __init__(self, in_rate_hz: int, out_rate_hz: int, channels: int = 1) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self.channels = channels
        self._soxr = soxr.ResampleStream(in_rate_hz, out_rate_hz, channels, dtype="float32",
                                         quality=_QUALITY)

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Convert the next piece; returns what the filter has ready (it holds back a few
        milliseconds of look-ahead until ``finish``)."""
        return self._convert(pcm, last=False)

    def finish(self) -> np.ndarray:
        """The held-back tail; the resampler is spent afterwards."""
        shape = (0,) if self.channels == 1 else (0, 2)
        return self._convert(np.zeros(shape, dtype=np.float32), last=True)

    def _convert(self, pcm: np.ndarray, last: bool) -> np.ndarray:
        out = self._soxr.resample_chunk(np.asarray(pcm, dtype=np.float32), last=last)
        np.rint(out, out=out)
        np.clip(out, -32768, 32767, out=out)
        return out.astype(np.int16)

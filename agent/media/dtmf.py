"""DTMF key presses found in the media: RFC 4733 telephone-events and in-band tones.

Owns two pure detectors (no I/O, no clocks of their own):

* ``TelephoneEventTracker``: the RFC 4733 / RFC 2833 events of ONE RTP stream. A key press
  is identified by the event's RTP timestamp (every packet of one event repeats it), so the
  growing-duration updates, the three redundant end packets, duplicates, reordering and
  the loss of the first or of some end packets all still give exactly one press. A key held
  longer than the 16-bit duration field is sent as several segments with new timestamps
  (RFC 4733 2.5.1.3): a segment that starts where an unfinished segment of the same event
  reached is merged into it. Events above 15 (fax/modem tones, Cisco NSE 192+) are never
  digits and are only counted.
* ``InbandDtmfDetector``: tones inside decoded audio, a Goertzel-style filter bank (a Hann
  window, three probes per DTMF frequency so the frequency and level can be interpolated)
  over back-to-back 20 ms frames, so a stretch of audio is one matrix product (frames x
  probes) with no copy of the signal; ITU-T Q.24-like acceptance rules: per-tone level,
  twist, frequency tolerance, the winning tone well above the others of its group, the two
  tones carrying most of the frame's energy (what rejects speech), a minimum duration (two
  frames: 40 ms) and a minimum pause (two frames).

Does not own which packets are events (``sequencer.py`` knows the payload types per
direction), placing audio on the call timeline or masking (``render.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from agent.media.rtp import parse_telephone_event

__all__ = ["DTMF_DIGITS", "DtmfEvent", "ToneSpan", "TelephoneEventTracker",
           "InbandDtmfDetector", "detect_inband", "digit_for_event", "DTMF_LOW_HZ", "DTMF_HIGH_HZ"]

DTMF_DIGITS = "0123456789*#ABCD"          # RFC 4733 events 0..15
DTMF_LOW_HZ = (697, 770, 852, 941)
DTMF_HIGH_HZ = (1209, 1336, 1477, 1633)
_KEYPAD = ("123A", "456B", "789C", "*0#D")  # [row][column]
_NS = 1_000_000_000
_MAX_EVENTS = 10_000                       # per stream: a bound against garbage streams


def digit_for_event(event: int) -> str | None:
    """The key of an RFC 4733 event code, None above 15 (not a DTMF digit)."""
    return DTMF_DIGITS[event] if 0 <= event <= 15 else None


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    digit: str
    side: int        # 0 = caller→callee, 1 = callee→caller
    ts_ns: int            # key start, packet (arrival) time base
    duration_ms: int
    source: str           # "rfc4733" | "inband"

    def as_dict(self) -> dict:
        return {"digit": self.digit, "direction": self.side, "ts_ns": self.ts_ns,
                "duration_ms": self.duration_ms, "source": self.source}


class _Press:
    __slots__ = ("event", "start_ns", "last_ns", "duration", "ended")

    def __init__(self, event: int, start_ns: int, arrival_ns: int, duration: int,
                 ended: bool) -> None:
        self.event = event
        self.start_ns = start_ns
        self.last_ns = arrival_ns
        self.duration = duration
        self.ended = ended


class TelephoneEventTracker:
    """RFC 4733 events of one stream, keyed by their RTP timestamp (see module docstring)."""

    __slots__ = ("side", "clock_rate_hz", "_presses", "other_events", "malformed",
                 "_other_ts")

    def __init__(self, side: int, clock_rate_hz: int = 8000) -> None:
        self.side = side
        self.clock_rate_hz = clock_rate_hz if clock_rate_hz > 0 else 8000
        self._presses: dict[int, _Press] = {}
        self._other_ts: set[int] = set()
        self.other_events = 0      # distinct non-digit events (event > 15)
        self.malformed = 0         # event payloads shorter than 4 bytes

    def on_packet(self, rtp_ts: int, arrival_ns: int, payload: bytes) -> None:
        parsed = parse_telephone_event(payload)
        if parsed is None:
            self.malformed += 1
            return
        event, end, _volume, duration = parsed
        if event > 15:
            if rtp_ts not in self._other_ts and len(self._other_ts) < _MAX_EVENTS:
                self._other_ts.add(rtp_ts)
                self.other_events += 1
            return
        # The packet carrying duration d was sent about d after the key went down.
        start_ns = arrival_ns - duration * _NS // self.clock_rate_hz
        press = self._presses.get(rtp_ts)
        if press is None:
            if len(self._presses) >= _MAX_EVENTS:
                return
            self._presses[rtp_ts] = _Press(event, start_ns, arrival_ns, duration, end)
            return
        if press.event != event:
            return   # a different event reusing a live timestamp: broken sender, keep the first
        if start_ns < press.start_ns:
            press.start_ns = start_ns
        if arrival_ns > press.last_ns:
            press.last_ns = arrival_ns
        if duration > press.duration:
            press.duration = duration
        if end:
            press.ended = True

    def events(self) -> list[DtmfEvent]:
        """One DtmfEvent per key press, in time order."""
        items = sorted(self._presses.items(), key=lambda kv: kv[1].start_ns)
        # Continuation segments of a long key hold: tolerance of 50 ms of RTP clock.
        tol = self.clock_rate_hz // 20
        merged: list[list] = []   # [rtp_ts, press, total_ticks]
        for ts, press in items:
            if merged:
                prev_ts, prev, total = merged[-1]
                gap = (ts - prev_ts) & 0xFFFFFFFF
                if (prev.event == press.event and not prev.ended and gap < 0x80000000
                        and gap <= total + tol):
                    merged[-1] = [ts, _Press(prev.event, prev.start_ns, press.last_ns,
                                             press.duration, press.ended),
                                  gap + press.duration]
                    merged[-1][1].duration = gap + press.duration  # whole hold
                    continue
            merged.append([ts, press, press.duration])
        out = []
        for _ts, press, total in merged:
            out.append(DtmfEvent(DTMF_DIGITS[press.event], self.side, press.start_ns,
                                 total * 1000 // self.clock_rate_hz, "rfc4733"))
        return out


# --------------------------------------------------------------------------- in-band


@dataclass(frozen=True, slots=True)
class ToneSpan:
    digit: str
    start_sample: int     # at the rate the detector was fed
    end_sample: int       # exclusive

    def duration_ms(self, rate_hz: int) -> int:
        return (self.end_sample - self.start_sample) * 1000 // rate_hz


# Level reference: a full-scale int16 sine is +3.17 dBm0 (G.711), so 0 dBm0 ≈ 22 400 peak.
_DBM0_PEAK = 32124 / 10 ** (3.17 / 20)


@dataclass(frozen=True)
class _FilterBank:
    """The probes for blocks of ``n`` samples: 8 frequencies x 3 probes (one bin below, on,
    one bin above), Hann-windowed cos | sin. Read-only arrays, shared by every detector of
    a size."""
    window: np.ndarray        # (n,) double
    window32: np.ndarray      # (n,) single: the windowed energy of back-to-back frames
    basis: np.ndarray         # (n, 48) double: overlapping blocks
    basis32: np.ndarray       # (n, 48) single: back-to-back frames


@functools.lru_cache(maxsize=8)
def _filter_bank(n: int, rate_hz: int) -> _FilterBank:
    """Built once per size and rate: a worker makes two detectors per call."""
    k = np.arange(n)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * (k + 0.5) / n)
    bin_hz = rate_hz / n
    freqs = []
    for f in DTMF_LOW_HZ + DTMF_HIGH_HZ:
        freqs += [f - bin_hz, f, f + bin_hz]
    ang = 2 * np.pi * np.outer(k, np.array(freqs)) / rate_hz
    basis = np.concatenate([np.cos(ang), np.sin(ang)], axis=1) * window[:, None]
    bank = _FilterBank(window, window.astype(np.float32), basis, basis.astype(np.float32))
    for array in (bank.window, bank.window32, bank.basis, bank.basis32):
        array.flags.writeable = False
    return bank


def _best_and_runner_up(powers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For 4 rows of nb powers: per column, the row of the largest (the first on a tie, as
    argmax) and the largest of the other three (on a tie, the same value). Pairwise
    maxima: a handful of vector ops where argmax and max along a 4-long axis loop per
    column."""
    p0, p1, p2, p3 = powers
    first_pair = p0 >= p1
    second_pair = p2 >= p3
    max01 = np.maximum(p0, p1)
    max23 = np.maximum(p2, p3)
    left = max01 >= max23
    best = np.where(left, np.where(first_pair, 0, 1), np.where(second_pair, 2, 3))
    runner_up = np.maximum(np.minimum(max01, max23), np.maximum(np.minimum(p0, p1), np.minimum(p2, p3)))
    return best, runner_up


class InbandDtmfDetector:
    """Streaming DTMF tone detector over int16 mono PCM (see module docstring).

    Feed any number of chunks with ``feed``; ``finish`` returns the tone spans found, in
    samples of the input rate from the first sample fed. Rates that are multiples of
    8 kHz are averaged down to 8 kHz first (DTMF tops out at 1633 Hz).
    """

    def __init__(self, rate_hz: int = 8000, *, block_ms: float = 20.0, hop_ms: float = 20.0,
                 min_level_dbm0: float = -32.0, normal_twist_db: float = 8.0,
                 reverse_twist_db: float = 6.0, freq_tolerance: float = 0.03,
                 relative_peak_db: float = 8.0, min_tone_fraction: float = 0.8,
                 min_hits: int = 2, min_pause_blocks: int = 2) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self.rate_hz = rate_hz
        self.factor = rate_hz // 8000 if rate_hz % 8000 == 0 and rate_hz > 8000 else 1
        self.det_rate = rate_hz // self.factor
        self.n = max(32, int(round(self.det_rate * block_ms / 1000)))
        self.hop = max(1, int(round(self.det_rate * hop_ms / 1000)))
        self.min_power = (_DBM0_PEAK * 10 ** (min_level_dbm0 / 20)) ** 2 / 2
        self.normal_twist = 10 ** (normal_twist_db / 10)
        self.reverse_twist = 10 ** (reverse_twist_db / 10)
        self.freq_tolerance = freq_tolerance
        self.relative_peak = 10 ** (relative_peak_db / 10)
        self.min_tone_fraction = min_tone_fraction
        self.min_hits = min_hits
        self.min_pause_blocks = min_pause_blocks
        self.half_bin_hz = self.det_rate / self.n  # probe spacing: one bin (name kept short)
        self._bank = _filter_bank(self.n, self.det_rate)
        self.window = self._bank.window
        self.wsum = float(self.window.sum())
        self.nominal = np.array(DTMF_LOW_HZ + DTMF_HIGH_HZ, dtype=np.float64)
        self._tolerance_hz = self.nominal * freq_tolerance
        self._pwindow: np.ndarray | None = None  # window by hop-long slices (_phase_window)
        # streaming state
        # Samples in single precision: int16 audio (and the mean of two samples) is exact in it.
        self._carry = np.zeros(0, dtype=np.float32)     # undecimated remainder
        self._buf = np.zeros(0, dtype=np.float32)       # decimated samples not yet consumed
        self._buf_pos = 0                                # decimated index of _buf[0]
        self._next_block = 0                             # decimated index of the next block
        self._cur = -1
        self._hits = 0
        self._first_hit = 0
        self._last_hit = 0
        self._misses = 0
        self._spans: list[ToneSpan] = []

    # ----------------------------------------------------------------- input
    def feed(self, pcm: np.ndarray) -> None:
        raw = np.asarray(pcm).reshape(-1)
        if (self.factor == 2 and raw.dtype == np.int16 and not self._carry.size
                and raw.size % 2 == 0):
            # Integer samples: pair sums are exact in float32, so adding the halves
            # straight from int16 gives the same values without a float copy of the input;
            # they go straight behind the samples still waiting (no second copy).
            kept = self._buf.size
            buf = np.empty(kept + raw.size // 2, dtype=np.float32)
            buf[:kept] = self._buf
            x = buf[kept:]
            np.add(raw[0::2], raw[1::2], out=x, dtype=np.float32)
            x *= 0.5
            self._scan_buffer(buf)
            return
        x = np.asarray(raw, dtype=np.float32)
        if self.factor > 1:
            if self._carry.size:
                x = np.concatenate([self._carry, x])
            usable = x.size - x.size % self.factor
            self._carry = x[usable:]
            x = self._decimate(x[:usable])
        self._scan(x)

    def _scan(self, x: np.ndarray) -> None:
        """Run the blocks that ``x`` (decimated samples, following those before) completes."""
        if x.size == 0:
            return
        self._scan_buffer(np.concatenate([self._buf, x]) if self._buf.size else x)

    def _scan_buffer(self, buf: np.ndarray) -> None:
        """``_scan`` with the waiting samples and the new ones already in one array."""
        start = self._next_block - self._buf_pos
        avail = buf.size - start
        if avail >= self.n:
            nb = (avail - self.n) // self.hop + 1
            # Bounded slices: the contiguous block copy is n/hop (~3x) the input size.
            step = self._BLOCKS_PER_PASS
            for first in range(0, nb, step):
                count = min(step, nb - first)
                at = start + first * self.hop
                seg = buf[at:at + (count - 1) * self.hop + self.n]
                self._decide(seg, count)
                self._next_block += count * self.hop
        drop = self._next_block - self._buf_pos
        if drop > 0:
            buf = buf[drop:]
            self._buf_pos += drop
        self._buf = buf.copy() if buf.base is not None else buf

    # Blocks per matrix product: 30 s of 20 ms frames, so each 30 s chunk the renderer feeds
    # is one pass (its temporaries, ~0.3 MB each, stay cache-sized).
    _BLOCKS_PER_PASS = 1500
    _HALVES = np.array([0.5, 0.5])

    def _decimate(self, x: np.ndarray) -> np.ndarray:
        """Mean of each ``factor`` consecutive samples, summed left to right like
        ``reshape(-1, f).mean(axis=1)`` (same values), without numpy's slow reduction
        over a tiny axis."""
        f = self.factor
        if f == 2:
            # a*0.5 + b*0.5 rounds exactly like (a+b)/2 (halving is exact), and a matrix-
            # vector product over the contiguous pairs beats strided slicing.
            return x.reshape(-1, 2) @ self._HALVES
        acc = x[0::f].copy()
        for i in range(1, f):
            acc += x[i::f]
        acc /= f
        return acc

    def _phase_window(self) -> np.ndarray:
        """The window cut into hop-long slices side by side: (hop, Q), zero-padded.

        Block k starts at sample k * hop, so its windowed energy is the sum over q of
        (squared samples of hop-row k + q) @ (slice q): one small matrix product over the
        signal seen as rows of ``hop`` samples."""
        if self._pwindow is None:
            hop = self.hop
            q_count = -(-self.n // hop)
            wpad = np.zeros(q_count * hop)
            wpad[:self.n] = self.window
            self._pwindow = np.ascontiguousarray(wpad.reshape(q_count, hop).T)
        return self._pwindow

    def _project(self, seg: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
        """(nb, 24) windowed probe powers (unscaled: cos^2 + sin^2) and (nb,) windowed
        energy of the nb blocks at the start of ``seg`` (block k = seg[k*hop : k*hop + n])."""
        bank = self._bank
        k = self.nominal.size * 3
        if self.hop == self.n:
            # Back-to-back frames (the default): the signal itself, seen as rows, is the
            # matrix (no copy), and each frame's windowed energy one more product.
            blocks = seg[:nb * self.n].reshape(nb, self.n)
            # Samples, projection and energy in single precision (twice the speed of double;
            # its 1e-7 relative error is far below every acceptance margin), the decisions in
            # double.
            proj = blocks @ bank.basis32
            proj *= proj
            return proj[:, :k] + proj[:, k:], (blocks * blocks) @ bank.window32
        # Overlapping blocks: a contiguous copy lets the projection run as one BLAS matrix
        # product; the strided window view would take numpy's slow non-BLAS loop.
        blocks = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(seg, self.n)[::self.hop][:nb])
        proj = blocks @ bank.basis
        proj *= proj
        c = proj[:, :k] + proj[:, k:]
        hop = self.hop
        pwindow = self._phase_window()
        q_count = pwindow.shape[1]
        rows = nb - 1 + q_count
        if seg.size < rows * hop:
            seg = np.concatenate([seg, np.zeros(rows * hop - seg.size)])
        x = seg[:rows * hop].reshape(rows, hop)
        e_parts = (x * x) @ pwindow                          # (rows, Q)
        total = e_parts[:nb, 0].copy()
        for q in range(1, q_count):
            total += e_parts[q:q + nb, q]
        return c, total

    def _decide(self, seg: np.ndarray, nb: int) -> None:
        raw_power, raw_total = self._project(seg, nb)
        scale = 2.0 / self.wsum ** 2
        total = raw_total.astype(np.float64) / self.wsum + 1e-9
        # Pick and compare tones on the centre probes: an off-centre tone would inflate
        # its neighbour's interpolated peak (the neighbour's outer probe sits near it).
        # As 8 rows of nb (one per frequency), so every step below is a plain vector op.
        center = raw_power[:, 1::3].T.astype(np.float64)
        center *= scale
        center += 1e-9
        rows, low_others = _best_and_runner_up(center[:4])
        cols, high_others = _best_and_runner_up(center[4:])
        # Only the winning row and column need the interpolated peak and offset: their
        # three probes, gathered from the flat (nb, 24) powers.
        probes = np.empty((nb, 6), dtype=np.intp)
        first = np.arange(0, nb * 24, 24)
        probes[:, 0] = first + 3 * rows
        probes[:, 3] = first + 12 + 3 * cols
        probes[:, 1] = probes[:, 0] + 1
        probes[:, 2] = probes[:, 0] + 2
        probes[:, 4] = probes[:, 3] + 1
        probes[:, 5] = probes[:, 3] + 2
        lp = np.take(raw_power, probes).astype(np.float64)
        lp *= scale
        lp += 1e-9
        lp = np.log(lp, out=lp).reshape(nb, 2, 3)
        a, b, c = lp[:, :, 0], lp[:, :, 1], lp[:, :, 2]
        a_minus_c = a - c
        denom = a - 2 * b + c
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(denom < 0, 0.5 * a_minus_c / denom, 0.0)
        np.clip(delta, -3, 3, out=delta)
        peak = np.exp(b - 0.25 * a_minus_c * delta)           # interpolated tone power
        offset_hz = np.abs(delta)
        offset_hz *= self.half_bin_hz
        p_row = peak[:, 0]
        p_col = peak[:, 1]
        ok = ((p_row >= self.min_power) & (p_col >= self.min_power)
              & (p_row <= p_col * self.normal_twist) & (p_col <= p_row * self.reverse_twist)
              & (p_row >= low_others * self.relative_peak)
              & (p_col >= high_others * self.relative_peak)
              & (offset_hz[:, 0] <= self._tolerance_hz[rows])
              & (offset_hz[:, 1] <= self._tolerance_hz[4 + cols])
              & (p_row + p_col >= self.min_tone_fraction * total))
        codes = np.where(ok, rows * 4 + cols, -1)
        self._run_steps(codes, self._next_block)

    def _run_steps(self, codes: np.ndarray, first_pos: int) -> None:
        """Feed block codes to ``_step``, skipping stretches that cannot change anything.

        With no tone in progress (``_cur < 0``) a block without a tone only resets state that
        the next tone block resets again, so only the blocks from each tone onwards (until
        the state machine is idle again) are stepped in Python."""
        hop = self.hop
        n = codes.size
        hits = np.flatnonzero(codes >= 0)
        codes_l = codes.tolist() if hits.size or self._cur >= 0 else []
        h = 0
        i = 0
        while i < n:
            if self._cur < 0:
                while h < hits.size and hits[h] < i:
                    h += 1
                if h == hits.size:
                    break
                i = int(hits[h])
            self._step(codes_l[i], first_pos + i * hop)
            i += 1
        if n and self._cur < 0:
            # What stepping the skipped tail would have left behind.
            self._hits = 0
            self._misses = 0
            self._first_hit = self._last_hit = first_pos + (n - 1) * hop

    def _step(self, code: int, pos: int) -> None:
        if code >= 0 and code == self._cur:
            self._hits += 1
            self._last_hit = pos
            self._misses = 0
            return
        confirmed = self._cur >= 0 and self._hits >= self.min_hits
        if confirmed:
            self._misses += 1
            if self._misses < self.min_pause_blocks:
                return           # a short drop inside a tone (loss, noise burst): same key
            self._emit()
        self._cur = code
        self._hits = 1 if code >= 0 else 0
        self._first_hit = self._last_hit = pos
        self._misses = 0

    def _emit(self) -> None:
        r, c = divmod(self._cur, 4)
        f = self.factor
        self._spans.append(ToneSpan(_KEYPAD[r][c], self._first_hit * f,
                                    (self._last_hit + self.n) * f))
        self._cur = -1
        self._hits = 0
        self._misses = 0

    def finish(self) -> list[ToneSpan]:
        """Close a tone still running at the end and return every span found."""
        if self._cur >= 0 and self._hits >= self.min_hits:
            self._emit()
        self._cur = -1
        self._hits = 0
        return list(self._spans)


def detect_inband(pcm: np.ndarray, rate_hz: int = 8000, **kwargs) -> list[ToneSpan]:
    """Convenience: run an ``InbandDtmfDetector`` over one whole signal."""
    det = InbandDtmfDetector(rate_hz, **kwargs)
    det.feed(pcm)
    return det.finish()

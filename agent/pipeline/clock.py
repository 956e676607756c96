"""Packet time: the engine's ``now``, the next once-a-second tick, and the offset that
re-bases a capture clock that jumped.

Every timeout runs on packet time, never on the wall clock, so a replay gives the same
calls every time and takes minutes for a day of capture. Engine time never runs backwards:
interfaces interleave slightly out of order, and backward clock jumps inside a file are
re-based by the capture reader.

A leap forward of more than ``GAP_NS`` is either a quiet spell (time really passed: the
timeouts run at the new time) or a jump of the capture clock (time is re-based to continue
1 ms on, so no call ends wrongly and no giant silence is made). The first packet after the
leap decides: the engine asks whether it continues a call in progress.
"""

from __future__ import annotations

from dataclasses import dataclass

NS = 1_000_000_000
TICK_NS = NS                       # timeouts are checked once per second of packet time
GAP_NS = 3600 * NS                 # a leap further than this is a quiet spell or a clock jump
REBASE_STEP_NS = 1_000_000         # after a clock jump, time continues this much after ``now``


@dataclass(slots=True)
class PacketClock:
    now_ns: int = 0
    offset_ns: int = 0             # added to capture times since the last clock jump
    next_tick_ns: int = 0

    def leaps(self, ts_ns: int) -> bool:
        """``ts_ns`` (offset applied) is further ahead of ``now`` than GAP_NS."""
        return ts_ns - self.now_ns > GAP_NS and self.now_ns != 0

    def rebase(self, ts_ns: int) -> int:
        """The capture clock jumped to ``ts_ns``: from here on its times are moved back to
        continue just after ``now``; returns the corrected time of this packet."""
        corrected = self.now_ns + REBASE_STEP_NS
        self.offset_ns += corrected - ts_ns
        return corrected

    def ticked(self, ts_ns: int) -> None:
        self.next_tick_ns = ts_ns + TICK_NS

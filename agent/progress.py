"""Progress bars for long replays: bytes read of the total with an ETA, then calls rendered
and delivered.

The bars are drawn by tqdm from a thread that samples, twice a second, what the work keeps
anyway: the file offsets of the open capture files (``/proc/self/fdinfo``: for a .gz file
the compressed offset, so it matches the file's size; a file seen open and since closed
counts whole) and the run's counters. Nothing in the packet loop calls into it. Quiet
unless stderr is a terminal; ``-q`` turns it off.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, TextIO

REFRESH_S = 0.5
SHOW_AFTER_S = 1.0          # short runs draw nothing


class ReadPosition:
    """How far this process has read a set of files, from the kernel's view of its open files."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        from agent.capture.files import iter_capture_paths
        files = iter_capture_paths(paths)
        self.sizes = {str(p.resolve()): p.stat().st_size for p in files}
        self.total = sum(self.sizes.values())
        self._last: dict[str, int] = {}      # offset last seen per file

    def done_bytes(self) -> int:
        open_now: dict[str, int] = {}
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target not in self.sizes:
                    continue
                with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
                    pos = int(info.readline().split()[1])        # "pos:\t<offset>"
            except (OSError, ValueError, IndexError):
                continue                                          # closed meanwhile
            open_now[target] = max(open_now.get(target, 0), pos)
        for path in self._last:
            if path not in open_now:
                self._last[path] = self.sizes[path]               # read and closed
        for path, pos in open_now.items():
            self._last[path] = max(self._last.get(path, 0), min(pos, self.sizes[path]))
        return sum(self._last.values())


class Progress:
    """``with Progress(...):`` around a replay. ``rendered`` and ``delivered`` return counts
    (None: that bar is not shown); calls found come from ``counters["calls.finished"]``."""

    def __init__(self, *, captures: Iterable[str | Path], counters: Mapping[str, int], enabled: bool,
                 rendered: Callable[[], int] | None = None,
                 delivered: Callable[[], tuple[int, int]] | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and (stream is not None or self.stream.isatty())
        self.captures = list(captures)
        self.counters = counters
        self.rendered = rendered
        self.delivered = delivered          # (delivered, to deliver)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: list = []          # made and updated by the thread only, closed after it ends

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._position = ReadPosition(self.captures)
            self._reading_done = False
            self._t0 = time.time()
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def _open_bars(self) -> None:
        from tqdm import tqdm
        # the terminal's width now (80 when it reports none, as an unsized pty does)
        common = dict(file=self.stream, ncols=shutil.get_terminal_size().columns, leave=True,
                      mininterval=REFRESH_S)
        self._read = tqdm(total=max(self._position.total, 1), desc="read", unit="B", unit_scale=True,
                          unit_divisor=1024, position=0, **common)
        self._bars = [self._read]
        if self.rendered is not None:
            self._render = tqdm(total=1, desc="rendered", unit=" calls", position=1, **common)
            self._bars.append(self._render)
        if self.delivered is not None:
            self._deliver = tqdm(total=1, desc="delivered", unit=" calls", position=len(self._bars), **common)
            self._bars.append(self._deliver)
        for bar in self._bars:
            bar.start_t = self._t0     # elapsed time and rates from the start of the work

    @staticmethod
    def _set(bar, n: int, total: int | None = None) -> None:
        if total is not None:
            bar.total = max(total, n, 1)
        bar.n = n
        bar.refresh()                  # also when n is unchanged: elapsed time and ETA move on

    def _refresh(self) -> None:
        read = self._read.total if self._reading_done else min(self._position.done_bytes(), self._read.total)
        self._read.set_postfix_str(f"{self.counters.get('calls.finished', 0):,} calls", refresh=False)
        self._set(self._read, read)
        if self.rendered is not None:
            self._set(self._render, self.rendered(), self.counters.get("calls.finished", 0))
        if self.delivered is not None:
            self._set(self._deliver, *self.delivered())

    def reading_done(self) -> None:
        """The captures are all read (the rest is rendering and uploading)."""
        self._reading_done = True

    def _loop(self) -> None:
        if self._stop.wait(SHOW_AFTER_S):
            return                     # finished before a bar was worth drawing
        self._open_bars()
        while True:
            self._refresh()
            if self._stop.wait(REFRESH_S):
                return

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if self._bars:
            if exc_type is None:
                self._reading_done = True
                self._refresh()
            for bar in self._bars:
                bar.close()

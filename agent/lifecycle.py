"""Process lifetime: children that die with their parent, and SIGINT / SIGTERM as a clean stop.

* ``die_with_parent``: PR_SET_PDEATHSIG (Linux prctl through ctypes), so a capture process,
  the recorder's forkserver and its render workers never outlive the process that made them
  (a ``kill -9`` of the agent used to leave them running, capturing and holding the spool).
  The chain: supervisor → capture process → forkserver → workers; the resource tracker
  exits by itself once every holder of its pipe is gone.
* ``StopSignals``: while installed, the first SIGINT or SIGTERM sets a flag that the long
  loops (replay, the recorder's wait, uploads) poll and turn into ``Interrupted`` (an
  AgentError: the command prints one line, no traceback). A second signal exits at once.
* ``terminate_like_ctrl_c``: outside those loops SIGTERM unwinds the command as Ctrl-C does
  (``SignalExit``, a KeyboardInterrupt). Either way the command exits ``exit_status(signum)``:
  130 for SIGINT, 143 for SIGTERM, as a shell reports a process the signal ended.

Does not own what a stop keeps or discards: that is the spool's and the recorder's rule.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading

from agent.errors import AgentError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PARENT_ENV = "CALLN_PARENT_PID"     # the forkserver's expected parent (set by the recorder)
FORKSERVER_ENV = "CALLN_FORKSERVER_PID"   # a render worker's expected parent (set by the forkserver)


class Interrupted(AgentError):
    """SIGINT or SIGTERM asked the command to stop."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


class SignalExit(KeyboardInterrupt):
    """SIGTERM where no ``StopSignals`` is installed: unwinds the command like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_status(signum: int) -> int:
    """A command's exit status after ``signum`` stopped it (128 + n, as the shell reports it)."""
    return 128 + int(signum)


def terminate_like_ctrl_c() -> object:
    """Make SIGTERM raise ``SignalExit`` in the main thread; returns the previous handler
    (None: nothing changed, e.g. called from another thread)."""
    def handler(signum: int, _frame) -> None:
        raise SignalExit(signum)
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def env_pid(name: str) -> int | None:
    """The pid an environment variable names, or None."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def die_with_parent(expected_ppid: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies. If the parent is
    already gone (``expected_ppid`` differs from getppid), exit now. False: not on Linux."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if expected_ppid is not None and os.getppid() != expected_ppid:
        os._exit(1)               # the parent died before the death signal was armed
    return ok


class StopSignals:
    """SIGINT / SIGTERM → a stop flag, for the main thread of a command. Nested installs
    share one flag; the outermost ``restore`` puts the previous handlers back."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._depth = 0
        self._saved: dict[int, object] = {}

    def install(self) -> bool:
        """True if installed (only the main thread can install signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if self._depth == 0:
            self.event.clear()
            self.signum = None
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        self._depth += 1
        return True

    def restore(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, old in self._saved.items():
                signal.signal(sig, old)
            self._saved.clear()

    def _handler(self, signum: int, _frame) -> None:
        if self.event.is_set():
            os._exit(128 + signum)      # a second signal: the operator insists
        self.signum = signum
        self.event.set()
        log.warning("%s: stopping; finished work is kept (again to stop at once)",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop was asked for."""
        if self.event.is_set():
            name = signal.Signals(self.signum).name if self.signum else "a signal"
            raise Interrupted(f"interrupted by {name}: finished work is kept", self.signum or signal.SIGINT)

    def sleep(self, seconds: float) -> None:
        """A sleep that a stop cuts short (raising ``Interrupted``)."""
        self.event.wait(seconds)
        self.check()


stop_signals = StopSignals()

"""Deterministic crash points for tests: ``CALLN_TEST_KILL_AT=name[:n]`` makes the process
SIGKILL itself the n-th time (default 1) it passes ``kill_point(name)``.

The spec is read once at import; with the variable unset a kill point costs one falsy
test. The spool and the uploader use it (their point names differ).
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "CALLN_TEST_KILL_AT"

_spec = os.environ.get(KILL_ENV, "")
_point, _, _n = _spec.partition(":")
_remaining = int(_n) if _n.isdigit() else 1


def kill_point(name: str) -> None:
    """SIGKILL this process here if the test asked for it (see the module docstring)."""
    global _remaining
    if _point and name == _point:
        _remaining -= 1
        if _remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

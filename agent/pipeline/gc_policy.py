"""How often the garbage collector walks everything, in a process that runs the engine.

The engine holds many long-lived container objects: every live dialog (a SIP scan keeps up
to ``[sip] max_calls`` of them, ~30 objects each), the media map, finished calls waiting
for their conversation. CPython's full collection walks every one of them, and with its
default thresholds it runs each time ~70,000 objects were allocated and the survivors grew
by a quarter: on an INVITE scan that was 30-40 % of the CPU (``bench/sip_scan.py``). The
engine's garbage is freed by reference counting (its records have no cycles), so a full
collection is let run ten times less often than CPython's default; young collections,
which are cheap, stay as they are.
"""

from __future__ import annotations

import gc

FULL_THRESHOLD = 100    # middle-generation collections per full one (CPython's default: 10)


def for_engine() -> None:
    """Set the full-collection threshold (idempotent; never lowers one set higher)."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, max(full, FULL_THRESHOLD))

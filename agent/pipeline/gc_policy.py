"""How often the garbage collector walks everything, in a process that runs the engine.

The engine holds many long-lived container objects: every live dialog (a SIP scan keeps up
to ``[sip] max_calls`` of them, ~30 objects each), the media map, finished calls waiting
for their conversation. CPython's full collection walks every one of them, and with its
default thresholds it runs each time ~70,000 objects were allocated and the survivors grew
by a quarter: on an INVITE scan that was 30-40 % of the CPU (``bench/sip_scan.py``; still
20 % with a full collection ten times rarer). The engine's garbage is freed by reference
counting (dialogs, records and media state hold no cycles), so a full collection is let run
a hundred times less often than CPython's default: after ~7 million container allocations
rather than 70,000. Young collections, which are cheap, stay as they are.
"""

from __future__ import annotations

import gc

FULL_THRESHOLD = 1000   # middle-generation collections per full one (CPython's default: 10)


def for_engine() -> None:
    """Set the full-collection threshold (idempotent; never lowers one set higher)."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, max(full, FULL_THRESHOLD))

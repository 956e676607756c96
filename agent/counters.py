"""Named event counters shared by every layer ("what was skipped and why").

A plain ``collections.Counter`` keyed by dotted names such as
``net.skip.unknown_ethertype`` or ``sip.skip.malformed``. Layers increment
them; ``inspect`` and metrics read them. Increment with ``counters[name] += 1``.
"""

from collections import Counter

Counters = Counter  # type alias: Counter[str]


def new_counters() -> "Counter[str]":
    return Counter()

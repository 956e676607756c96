"""Read-only view of the delivered-ledger, for ``calln-agent spool delivered``.

Delivered calls leave the spool at once (``[spool] retention_days = 0``), so the ledger is
what remembers them: one file per call key, "delivered <id> <time> <summary>" (spool_ledger.py's
layout, parsed by its ``parse_entry`` / ``ledger_summary``). The summary keeps the final state
(confirmed or unconfirmed), start time and numbers; while the call is still retained its record
and state in ``calls/<id>/`` are used instead. Entries written by older versions carry no
summary. Nothing is created or changed: a listing must not make a spool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, cast

from agent.calls.record import CallRecord, record_from_json
from agent.deliver.spool_ledger import ledger_summary, parse_entry
from agent.deliver.spool_state import state_from_json

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class DeliveredCall:
    delivered_at_wall: float              # seconds since the epoch
    id: str                               # the spool id the call had
    state: str | None                     # delivered / delivered_unconfirmed; None if unknown
    record: CallRecord | None             # the record, or the ledger's summary of it; None if unknown


def _entries(ledger: Path) -> Iterator[os.DirEntry]:
    """Every ledger file: the 256 shards, and entries of the older flat layout."""
    with os.scandir(ledger) as top:
        for entry in top:
            if entry.is_dir() and len(entry.name) == 2 and _HEX.fullmatch(entry.name):
                with os.scandir(entry.path) as shard:
                    yield from (e for e in shard if e.is_file() and _HEX.fullmatch(e.name))
            elif entry.is_file() and _HEX.fullmatch(entry.name):
                yield entry


def _state(call_dir: Path) -> str | None:
    try:
        return state_from_json((call_dir / "state.json").read_bytes())["state"]
    except (OSError, ValueError):
        return None


def _record(call_dir: Path) -> CallRecord | None:
    try:
        return record_from_json((call_dir / "record.json").read_bytes())
    except (OSError, ValueError):
        return None


def delivered_calls(spool_dir: Path, since_wall: float | None = None) -> list[DeliveredCall]:
    """Calls the ledger records as delivered (at or after ``since_wall``), oldest first."""
    ledger = spool_dir / "ledger"
    if not ledger.is_dir():
        return []
    out = []
    for entry in _entries(ledger):
        try:
            with open(entry.path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            kind, call_id, ts = parse_entry(text)
            if ts is None:                         # entries of older versions carry no time
                ts = entry.stat().st_mtime
        except OSError:                            # pruned while we read
            continue
        if kind != "delivered" or (since_wall is not None and ts < since_wall):
            continue
        call_dir = spool_dir / "calls" / call_id
        summary = ledger_summary(text)
        summary_state = summary.pop("state", None)
        state = _state(call_dir) or summary_state
        out.append(DeliveredCall(ts, call_id, state, _record(call_dir) or cast(CallRecord, summary) or None))
    out.sort(key=lambda c: (c.delivered_at_wall, c.id))
    return out


def parse_since(text: str, now_wall: float) -> float:
    """``--since``: a duration back from now (``90m``, ``24h``, ``7d``) or an ISO date/time
    (``2026-12-04``, ``2026-12-04T09:30``; UTC unless it names a zone)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now_wall - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected e.g. 24h, 7d or 2026-12-04T09:30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()

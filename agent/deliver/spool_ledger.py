"""The dedup ledger: one small file per call key the spool has accepted.

Layout under ``<spool>/ledger``::

    <h[:2]>/<h[2:]>   h = sha256(call key): "queued <id>" then "delivered <id> <time> <summary
                      JSON>" / "skipped <id> <time>" (<time>: seconds since the epoch when the
                      entry became final)
    .maint.lock       serialises migration and pruning between processes

A claim is an exclusive whole-file create, so two processes enqueueing the same call
cannot both win. The ledger is sharded into 256 directories by the first two hex digits
of the hash, so a directory holds 1/256 of the entries. Versions before the sharding kept
``ledger/<h>`` flat: ``open`` moves such entries into their shard (link, fsync, unlink: a
crash leaves the entry in one place or both, never in none), and a lookup consults the
flat name too, so a call delivered before an upgrade is still known after it. Old and new
versions must not run on one spool at the same time.

Final entries (delivered / skipped) are pruned once older than ``ledger_days`` (0 =
never), judged by the time written into the entry (the file's mtime for entries of older
versions): at open, then from the uploader's hourly maintenance, one shard per pass (a
full cycle takes 256 passes, about 11 days). An entry whose call is still in the spool
(``in_spool``) is never pruned, whatever its age and state. The trade-off: a capture
older than ``ledger_days`` replayed again is uploaded again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping

from agent.deliver import spool_files as files

log = logging.getLogger("agent.deliver")

FINAL_LEDGER_KINDS = frozenset({"delivered", "skipped"})
LEDGER_SHARDS = tuple(f"{i:02x}" for i in range(256))
LITTER_AGE_S = 3600.0          # a claim / temp file this old without its call is a crash's litter


def call_key(record: Mapping[str, object]) -> str:
    """The dedup / ledger key of a call (record_format.md)."""
    return f"{record.get('callid', '')}|{record.get('from_tag', '')}|{record.get('start_ts_ns', '')}|{record.get('leg', 0)}"


class Ledger:
    """The ledger directory of one spool. ``in_spool(call_id)`` tells whether the call is
    still in the spool's ``tmp/`` or ``calls/`` (a "queued" entry without its call is a
    crash's litter; an entry with its call is never pruned)."""

    def __init__(self, dir: Path, in_spool: Callable[[str], bool], counters: Counter, *,
                 ledger_days: float) -> None:
        self.dir = dir
        self.in_spool = in_spool
        self.counters = counters
        self.ledger_days = ledger_days
        # Pruning walks one shard per pass; start where the wall-clock hour points so that
        # an agent restarted often still covers every shard over time.
        self._prune_cursor = int(time.time() // 3600) % len(LEDGER_SHARDS)

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def path(self, key: str) -> Path:
        h = self.hash(key)
        return self.dir / h[:2] / h[2:]

    def flat_path(self, key: str) -> Path:
        """Where versions before the sharding kept the entry."""
        return self.dir / self.hash(key)

    def maint_lock(self) -> int:
        """The ledger maintenance lock (migration, pruning) of all processes on this spool:
        waits for it; returns the descriptor to close."""
        fd = os.open(self.dir / ".maint.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def try_maint_lock(self) -> int | None:
        """The maintenance lock if no other process holds it, else None (at once)."""
        fd = os.open(self.dir / ".maint.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def open(self) -> None:
        """Create the shard directories and move entries of the flat layout into them."""
        made = False
        for shard in LEDGER_SHARDS:
            try:
                (self.dir / shard).mkdir(mode=0o700)
                made = True
            except FileExistsError:
                pass
        if made:
            files.fsync_dir(self.dir)
        fd = self.maint_lock()
        try:
            self._migrate_flat()
        finally:
            os.close(fd)

    def _migrate_flat(self, batch: int = 4096) -> None:
        now = time.time()
        flat: list[str] = []
        with os.scandir(self.dir) as it:
            for e in it:
                name = e.name
                if len(name) == 64 and not name.startswith(".") and e.is_file(follow_symlinks=False):
                    flat.append(name)
                elif name.startswith(".") and name.endswith(".tmp"):
                    files.remove_if_older(e, now - LITTER_AGE_S)  # a write_atomic cut short
        if not flat:
            return
        flat.sort()          # a batch then touches few shards: few directory fsyncs
        log.info("ledger: moving %d entries of the flat layout into shards", len(flat))
        moved = 0
        for i in range(0, len(flat), batch):
            linked: list[Path] = []
            shards: set[str] = set()
            for name in flat[i:i + batch]:
                src = self.dir / name
                dst = self.dir / name[:2] / name[2:]
                try:
                    if not files.link_or_move(src, dst):
                        shards.add(name[:2])       # renamed: nothing left to remove
                        moved += 1
                        continue
                    moved += 1
                except FileNotFoundError:
                    continue                       # gone meanwhile
                except FileExistsError:
                    # Both exist (a crash between link and unlink, or a stale claim in the
                    # shard): keep the shard's entry unless only the flat one means something.
                    if self.entry_line(dst) is None and self.entry_line(src) is not None:
                        os.replace(src, dst)
                        shards.add(name[:2])
                        moved += 1
                        continue
                linked.append(src)
                shards.add(name[:2])
            # The new names are durable before an old one goes: never in no place at all.
            for shard in shards:
                files.fsync_dir(self.dir / shard)
            for src in linked:
                src.unlink(missing_ok=True)
            files.fsync_dir(self.dir)
        self.counters["deliver.spool.ledger_migrated"] += moved
        log.info("ledger: %d entries moved into shards", moved)

    def entry_line(self, path: Path) -> str | None:
        """The entry's line if it stands for a real call (queued, delivered or skipped)."""
        try:
            text = path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        kind, call_id, _ = parse_entry(text)
        # tmp/ before calls/: a concurrent enqueue renames tmp/<id> into calls/<id>.
        if kind == "queued" and not self.in_spool(call_id):
            return None  # litter of a crash between claim and rename: not a real call
        return text or None

    def lookup(self, key: str) -> str | None:
        """The ledger line for key if the call is known (queued, delivered or skipped)."""
        line = self.entry_line(self.path(key))
        if line is None:
            # An entry of the flat layout that the migration at open has not moved (yet).
            line = self.entry_line(self.flat_path(key))
        return line

    def claim(self, key: str, call_id: str) -> bool:
        """Claim key for call_id: True for exactly one of any number of concurrent claimers."""
        path = self.path(key)
        data = f"queued {call_id}\n".encode()
        if files.create_whole(path, data):
            return True
        if self.lookup(key) is not None:
            return False
        # A claim left by a crashed enqueue: replace it, one process at a time, so that two
        # claimers never each remove what the other has just created.
        fd = self.maint_lock()
        try:
            if self.lookup(key) is not None:
                return False
            path.unlink(missing_ok=True)
            return files.create_whole(path, data)
        finally:
            os.close(fd)

    def claim_many(self, claims: list[tuple[str, str]]) -> list[bool]:
        """``claim`` for many (key, call id) pairs with their fsyncs shared: the claims' temp
        files are written, then fsynced together, linked into place, and each shard directory
        fsynced once. A key already taken goes through ``claim`` (a crashed enqueue's stale claim)."""
        paths = [self.path(key) for key, _ in claims]
        datas = [f"queued {call_id}\n".encode() for _, call_id in claims]
        staged: list[Path] = []
        won: list[bool] = []
        try:
            for path, data in zip(paths, datas):
                staged.append(files.stage_whole(path, data, sync=False))
            for tmp in staged:
                files.fsync_path(tmp)
            for tmp, path, data in zip(staged, paths, datas):
                won.append(files.place_whole(tmp, path, data))
        finally:
            for tmp in staged[len(won):]:
                tmp.unlink(missing_ok=True)
        for shard in {path.parent for path, w in zip(paths, won) if w}:
            files.fsync_dir(shard)
        return [w or self.claim(key, call_id) for w, (key, call_id) in zip(won, claims)]

    def mark(self, key: str, kind: str, call_id: str,
             summary: dict[str, str] | None = None) -> None:
        line = f"{kind} {call_id}"
        if kind in FINAL_LEDGER_KINDS:
            line += f" {time.time():.0f}"   # the entry's own time, for pruning
            if summary:
                # What `spool delivered` shows once the call itself has left the spool.
                line += " " + json.dumps(summary, ensure_ascii=True, separators=(",", ":"))
        path = self.path(key)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        files.write_atomic(path, f"{line}\n".encode())

    def prune(self, now_wall: float | None = None, *, shards: list[str] | None = None) -> int:
        """Remove final entries older than ``ledger_days`` from the next shard (or ``shards``).

        Never an entry whose call is still in the spool. Also removes crash litter (claims
        without a call, cut-short temp files) older than an hour. Returns the entries pruned.
        """
        if shards is None:
            shards = [LEDGER_SHARDS[self._prune_cursor]]
            self._prune_cursor = (self._prune_cursor + 1) % len(LEDGER_SHARDS)
        fd = self.try_maint_lock()
        if fd is None:
            return 0                   # another process is pruning right now
        pruned = litter = 0
        try:
            now_wall = time.time() if now_wall is None else now_wall
            cutoff = now_wall - self.ledger_days * 86400.0 if self.ledger_days > 0 else None
            litter_cutoff = time.time() - LITTER_AGE_S
            for shard in shards:
                try:
                    it = os.scandir(self.dir / shard)
                except FileNotFoundError:
                    continue
                with it:
                    for e in it:
                        if e.name.startswith("."):
                            litter += files.remove_if_older(e, litter_cutoff)
                            continue
                        try:
                            kind, call_id, ts = parse_entry(Path(e.path).read_text().strip())
                            if kind in FINAL_LEDGER_KINDS:
                                if cutoff is None:
                                    continue
                                when = ts if ts is not None else e.stat(follow_symlinks=False).st_mtime
                                if when > cutoff:
                                    continue
                            elif kind in ("queued", ""):
                                # Only a claim whose enqueue crashed gets here (see below).
                                if e.stat(follow_symlinks=False).st_mtime > litter_cutoff:
                                    continue
                            else:
                                continue         # not ours to judge (a later version's kind)
                        except OSError:
                            continue
                        if self.in_spool(call_id):
                            continue             # the call is still here: never forgotten
                        if kind in FINAL_LEDGER_KINDS:
                            pruned += files.unlink_count(e.path)
                        else:
                            litter += files.unlink_count(e.path)
        finally:
            os.close(fd)
        if pruned:
            self.counters["deliver.spool.ledger_pruned"] += pruned
        if litter:
            self.counters["deliver.spool.ledger_litter_removed"] += litter
        if pruned or litter:
            log.info("ledger: pruned %d final entries older than %g days and %d crash leftovers "
                     "(shard %s)", pruned, self.ledger_days, litter, ",".join(shards))
        return pruned



def parse_entry(text: str) -> tuple[str, str, float | None]:
    """(kind, call id, time written or None) of a ledger line; older versions wrote no time."""
    parts = text.split(maxsplit=3)
    kind = parts[0] if parts else ""
    call_id = parts[1] if len(parts) > 1 else ""
    ts = None
    if len(parts) > 2:
        try:
            ts = float(parts[2])
        except ValueError:
            ts = None
    return kind, call_id, ts


def ledger_summary(text: str) -> dict[str, str]:
    """The summary a final ledger line carries after its time ({} on older lines)."""
    parts = text.split(maxsplit=3)
    try:
        summary = json.loads(parts[3]) if len(parts) > 3 else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in summary.items()} if isinstance(summary, dict) else {}


"""The spool's file operations: every write is whole or absent after a crash.

Atomic replace (temp file, fsync, rename, fsync the directory), exclusive whole-file
creation (a temp file hard-linked into place), moving a recording in, and the small
unlink helpers of crash-litter clean-up. No knowledge of the spool's layout or states.

The spool's other modules call these through the module (``files.write_atomic``), so a
test injects a local I/O fault (ENOSPC) at this one seam for every write the spool does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("agent.deliver")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True, sync: bool = True) -> None:
    """Temp file, fsync, rename, fsync the directory: the file is old or new, never torn.
    ``sync=False`` (a batch that fsyncs its files together, ``fsync_path``) skips both fsyncs."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write_synced(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), data, sync=sync)
    os.replace(tmp, path)
    if sync and sync_dir:
        fsync_dir(path.parent)


def fsync_path(path: Path) -> None:
    """Make a file written without fsync durable (its data and inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(fd: int, data: bytes, *, sync: bool = True) -> None:
    """Write all of ``data`` to the open file ``fd``, fsync it (unless told not to) and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def create_whole(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data``, exclusively: False if it exists. Readers never see it
    empty or part-written (a temp file linked into place), unlike a bare O_EXCL create."""
    staged = stage_whole(path, data, sync=True)
    if not place_whole(staged, path, data):
        return False
    fsync_dir(path.parent)
    return True


def stage_whole(path: Path, data: bytes, *, sync: bool) -> Path:
    """The first half of ``create_whole``: ``data`` in a temp file beside ``path`` (fsynced
    with ``sync``; a batch fsyncs its temp files together, ``fsync_path``)."""
    path.parent.mkdir(mode=0o700, exist_ok=True)       # a shard removed by hand
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.claim.tmp")
    write_synced(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), data, sync=sync)
    return tmp


def place_whole(staged: Path, path: Path, data: bytes) -> bool:
    """The second half of ``create_whole``: link the durable temp file ``staged`` to ``path``
    exclusively (False if it exists) and remove the temp name. The caller fsyncs the directory."""
    try:
        os.link(staged, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this filesystem: an exclusive create, written at once.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        write_synced(fd, data)
    finally:
        staged.unlink(missing_ok=True)
    return True


def link_or_move(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` too (True: src is still to be removed), or, where the
    filesystem has no hard links, rename it (False). FileExistsError if ``dst`` exists."""
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    if dst.exists():
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.replace(src, dst)        # only under the maintenance lock: nobody else renames here
    return False


def move_in(src: Path, dst: Path, *, sync: bool = True) -> None:
    """Move the recording in, private (0600) and durable; ``dst`` appears whole or not at all.
    ``sync=False``: the caller fsyncs ``dst`` later (``fsync_path``), with a batch's other files."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS):
            raise               # ENOSPC, EIO: the caller's fault handling decides
        # Another filesystem or a read-only source: copy, fsync, rename, then drop the source.
        part = dst.with_name(f".{dst.name}.part")
        with open(src, "rb") as fin, open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                                          "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(part, dst)
        try:
            os.unlink(src)
        except OSError:
            pass
        return
    os.chmod(dst, 0o600)        # rendered files are made with the worker's umask
    if sync:
        fsync_path(dst)


def put_back(moved: Path, src: Path) -> None:
    """Undo move_in after a failed enqueue (a rename: it needs no free space)."""
    try:
        if moved.exists() and not src.exists():
            os.replace(moved, src)
    except OSError as exc:
        log.error("cannot put %s back to %s: %s", moved, src, exc)


def unlink_count(path: str) -> int:
    """Remove ``path``: 1 if this call removed it, 0 if it was gone already."""
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def remove_if_older(entry: os.DirEntry, cutoff: float) -> int:
    """Remove ``entry`` if its mtime is before ``cutoff`` (wall seconds): 1 if removed."""
    try:
        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
            return unlink_count(entry.path)
    except OSError:
        pass
    return 0


def json_bytes(obj: Any) -> bytes:
    """The spool's JSON file format: UTF-8, keys sorted (a rewrite of equal data is equal bytes)."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")

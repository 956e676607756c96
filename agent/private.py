"""Recordings are private: modes for what the agent writes, and a check of existing dirs.

Recordings, call records and spool files are 0600 in 0700 directories the agent makes.
``[recording] group`` names a group that may read them too (files 0640, directories 0750,
group-owned). Does not own where files go (recorder, spool) — only their modes.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path


def file_mode(group: str = "") -> int:
    return 0o640 if group else 0o600


def dir_mode(group: str = "") -> int:
    return 0o750 if group else 0o700


def umask_for(group: str = "") -> int:
    """The umask under which new files get ``file_mode`` (render workers run under it)."""
    return 0o027 if group else 0o077


def group_id(group: str) -> int | None:
    """The gid of ``group`` (a name or a number); None for no group. KeyError if unknown."""
    if not group:
        return None
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def make_private(path: Path, group: str = "", *, directory: bool = False) -> None:
    """Give an existing file or directory the agent's modes (and group)."""
    os.chmod(path, dir_mode(group) if directory else file_mode(group))
    gid = group_id(group)
    if gid is not None:
        os.chown(path, -1, gid)


def make_private_dir(path: Path, group: str = "") -> bool:
    """Create ``path`` (and missing parents) private; an existing directory is left as the
    operator made it. True if the agent created it."""
    path = Path(path)
    if path.is_dir():
        return False
    path.mkdir(parents=True, exist_ok=True, mode=dir_mode(group))
    make_private(path, group, directory=True)      # mkdir's mode is filtered by the umask
    return True


def loose_spool_modes(spool_dir: Path, *, sample: int = 20) -> list[str]:
    """What in a spool others than its owner can enter or read: the directory, its direct
    subdirectories and the files of up to ``sample`` calls (a bounded look, at start-up).
    Empty when private or absent."""
    spool_dir = Path(spool_dir)
    out: list[str] = []

    def check(p: Path, what: str) -> None:
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return
        if mode & (0o077 if stat.S_ISDIR(mode) else 0o044):
            out.append(f"{p} is {stat.filemode(mode)} ({what})")

    check(spool_dir, "others can enter it")
    try:
        subdirs = sorted(e.path for e in os.scandir(spool_dir) if e.is_dir(follow_symlinks=False))
    except OSError:
        return out
    for d in subdirs:
        check(Path(d), "others can enter it")
    try:
        calls = sorted(os.scandir(spool_dir / "calls"), key=lambda e: e.name)[:sample]
    except OSError:
        calls = []
    for c in calls:
        for f in sorted(Path(c.path).glob("*")):
            check(f, "others can read it")
    return out

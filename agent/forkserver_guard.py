"""Imported by the recorder's forkserver as it starts (``set_forkserver_preload``): the
forkserver then dies with the process that started it, and so, in turn, do its workers."""

import os

from agent.lifecycle import PARENT_ENV, die_with_parent

_ppid = os.environ.get(PARENT_ENV, "")
die_with_parent(int(_ppid) if _ppid.isdigit() else None)

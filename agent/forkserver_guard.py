"""Imported by the recorder's forkserver as it starts (``set_forkserver_preload``): the
forkserver then dies with the process that started it, and so, in turn, do its workers.
It also leaves its own pid in its environment, which every worker it forks inherits: a worker
checks it against its parent when it arms its own death signal (``agent.recorder``), with no
need to read the pid out of multiprocessing's private state."""

import os

from agent.lifecycle import FORKSERVER_ENV, PARENT_ENV, die_with_parent, env_pid

die_with_parent(env_pid(PARENT_ENV))
os.environ[FORKSERVER_ENV] = str(os.getpid())

"""CPU time of a command's whole process tree, for benchmarks.

``/usr/bin/time`` and ``getrusage(RUSAGE_CHILDREN)`` count only the children a process waits
for, and their own waited-for children. The recorder's workers are children of a
multiprocessing forkserver, which is not waited for by the command: when the command exits,
they are re-parented to init and their CPU is lost. So the command runs under a small
wrapper process that makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``):
every orphaned descendant is re-parented to the wrapper, which waits for all of them before
it reads ``RUSAGE_CHILDREN``. A fresh wrapper per command keeps ``ru_maxrss`` (the largest
single process of the tree) that command's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["TreeUsage", "run_tree", "machine_load"]

# Runs in the wrapper: become a subreaper, run the command, reap every descendant (the
# orphaned forkserver and workers included), report the tree's usage as JSON on the file descriptor named first.
_WRAPPER = r"""
import ctypes, json, os, resource, subprocess, sys, time
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
out = os.fdopen(int(sys.argv[1]), "w")
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
err = proc.communicate()[1]
deadline = time.monotonic() + 60
while True:
    try:
        pid, _status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > deadline:
            sys.exit("descendants still running 60 s after the command ended")
        time.sleep(0.02)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"rc": proc.returncode, "cpu_s": r.ru_utime + r.ru_stime, "user_s": r.ru_utime,
           "sys_s": r.ru_stime, "maxrss_kib": r.ru_maxrss, "stderr": err}, out)
"""


@dataclass(slots=True)
class TreeUsage:
    wall_s: float
    cpu_s: float              # user + system of every process of the tree
    peak_rss_mib: int         # the largest single process
    stderr: str


def run_tree(cmd: list[str]) -> TreeUsage:
    """Run ``cmd`` (stdout discarded) and return the CPU of its whole process tree."""
    import os

    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(write_fd), *cmd], pass_fds=(write_fd,),
                            stdin=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        report = fh.read()
    proc.wait()
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not report:
        raise SystemExit(f"failed to measure: {' '.join(cmd)}")
    usage = json.loads(report)
    if usage["rc"] != 0:
        raise SystemExit(f"failed ({usage['rc']}): {' '.join(cmd)}\n{usage['stderr']}")
    return TreeUsage(wall, usage["cpu_s"], usage["maxrss_kib"] // 1024, usage["stderr"])


def machine_load() -> str:
    """The 1-minute load average and core count, to print beside shared-machine figures."""
    import os

    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
